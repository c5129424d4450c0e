"""SIGTERM / Ctrl-C to the driver of a Ray run: the workers finish the step, save, report, end.

The driver (`python train.py ... launcher=ray`) holds no model. Its signal handlers
(core/interruption) pass the signal on to a small actor, `DriverStop`, on which a thread in
every worker waits; the thread makes it the worker's stop request (`interruption.request`). At
the next step boundary the ranks agree on it as on a signal of their own, save, report the
checkpoint and return: the run ends as a finished fit whose summary.json is marked interrupted,
and the driver exits 143 / 130. A worker's own SIGTERM (its node reclaimed) fails the run on
purpose so that Ray restarts it; a stop the driver asked for is not retried.

Train's `fit()` installs its own SIGINT handler when called on the main thread (it aborts the
run without a save), so the driver runs `fit()` on another thread and keeps the main thread,
where Python runs signal handlers, for ours. A second signal ends the driver at once
(core/interruption); what the workers saved was written atomically, and a private Ray's
processes end with the driver.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

from raytrain_llm.core import interruption


class DriverStop:
    """An actor (async, no CPU): the stop signal the driver received, 0 until then."""

    def __init__(self):
        self._signum = 0
        self._event = asyncio.Event()

    async def set(self, signum: int) -> None:
        if not self._signum:
            self._signum = int(signum)
            self._event.set()

    async def wait(self) -> int:
        """Returns once the driver received a stop signal: that signal."""
        await self._event.wait()
        return self._signum

    async def signum(self) -> int:
        return self._signum


def start_driver_stop():
    """The run's `DriverStop` actor (needs `ray.init`); `ray.kill` it after the run."""
    import ray

    return ray.remote(num_cpus=0)(DriverStop).remote()


def fit_with_driver_signals(fit: Callable[[], Any], stop) -> Any:
    """`fit()` on a thread while this (the main) thread passes SIGTERM / SIGINT to `stop`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as exc:  # noqa: BLE001 - raised again on the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    with interruption.handling(forward=lambda signum: stop.set.remote(signum)):
        thread.start()
        while thread.is_alive():
            thread.join(0.2)  # wakes up for the handlers, which run on this thread
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def follow_driver_stop(stop) -> None:
    """On a worker: a thread that waits for the driver's stop signal and makes it this worker's
    stop request. Nothing to do without a `DriverStop` (a Tune trial)."""
    if stop is None:
        return

    def wait() -> None:
        import ray

        try:
            signum = ray.get(stop.wait.remote())
        except Exception:  # noqa: BLE001 - the actor is gone: the run is over
            return
        interruption.request(signum)

    threading.Thread(target=wait, name="raytrain-driver-stop", daemon=True).start()


def stopped_by_driver(stop: Optional[Any]) -> bool:
    """Whether the driver asked this run to stop (the same answer on every rank)."""
    if stop is None:
        return False
    import ray

    return bool(ray.get(stop.signum.remote()))
