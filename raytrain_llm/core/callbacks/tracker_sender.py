"""`BackgroundSender`: runs a tracker's network calls on one background thread, in order.

The training loop only enqueues (microseconds); a slow or unreachable server delays the thread,
never a step. The queue is bounded: when it is full (the server is far slower than the loop)
an item is dropped and counted rather than blocking. After the first failed call the tracker
is considered gone: later items are not attempted (each would wait out the client's retries)
but counted, so the warning at the end can say what was not logged.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Optional

MAX_QUEUED = 10_000  # items (one per logged record, plus a few at start and end)
_STOP = object()


class NotLogged:
    """What a tracker did not log: record steps per split, and other named items."""

    def __init__(self):
        self.steps: dict[str, list[int]] = {}
        self.items: list[str] = []

    def add(self, what: str, split: Optional[str] = None, step: Optional[int] = None) -> None:
        if split is not None and step is not None:
            self.steps.setdefault(split, []).append(step)
        else:
            self.items.append(what)

    def __bool__(self) -> bool:
        return bool(self.steps or self.items)

    def describe(self) -> str:
        parts = [f"{split} records of {len(steps)} step(s) {_span(steps)}" for split, steps in sorted(self.steps.items())]
        return ", ".join(parts + self.items)


def _span(steps: list[int]) -> str:
    return f"(step {steps[0]})" if len(steps) == 1 else f"(steps {min(steps)}-{max(steps)})"


class BackgroundSender:
    """Calls enqueued functions in order on a daemon thread; `close` waits a bounded time."""

    def __init__(self, name: str, on_failure: Callable[[str, BaseException], None]):
        self.name = name
        self.not_logged = NotLogged()
        self.error: Optional[BaseException] = None
        self._on_failure = on_failure
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)
        self._lock = threading.Lock()  # guards not_logged (the loop and the thread both add)
        self._thread = threading.Thread(target=self._run, name=f"raytrain-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None], what: str, split: Optional[str] = None,
               step: Optional[int] = None) -> None:
        """Queue `fn`; `what` (with split and step for a record) names it in the warning if it is not sent."""
        if self.error is not None:
            self._skip(what, split, step)
            return
        try:
            self._queue.put_nowait((fn, what, split, step))
        except queue.Full:
            self._skip(what, split, step)

    def close(self, timeout_s: float) -> bool:
        """Sends what is queued, waiting at most `timeout_s`; False if the thread is still busy
        (its remaining items are then reported as not logged; the daemon thread dies with the process)."""
        try:
            self._queue.put((_STOP, "", None, None), timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            return True
        with self._lock:
            while True:
                try:
                    fn, what, split, step = self._queue.get_nowait()
                except queue.Empty:
                    break
                if fn is not _STOP:
                    self.not_logged.add(what, split, step)
        return False

    def _skip(self, what: str, split: Optional[str], step: Optional[int]) -> None:
        with self._lock:
            self.not_logged.add(what, split, step)

    def _run(self) -> None:
        while True:
            fn, what, split, step = self._queue.get()
            if fn is _STOP:
                return
            if self.error is not None:
                self._skip(what, split, step)
                continue
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - any client error means the tracker is gone
                self.error = exc
                self._skip(what, split, step)
                self._on_failure(what, exc)
