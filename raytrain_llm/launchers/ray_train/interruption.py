"""Stop signals and preemption notices on Ray Train workers.

A Train worker runs the training function in a thread; Python runs signal handlers on the
main thread only, so the handlers are installed there, through a call on each worker actor
(`StopSignalsOnWorkers`, a worker-group callback), replacing Ray's own SIGTERM handler (which
exits at once). A worker that receives SIGTERM (its pod or VM being reclaimed) then finishes
the step with the other ranks, saves and reports a checkpoint, and fails on purpose
(`WorkerInterrupted`): with `distributed.max_failures` Ray restarts the group, which resumes
from that checkpoint with no step lost. A second SIGTERM ends the worker at once.

Ray's preemption notice (a node drained with reason PREEMPTION) is read from the worker's
train context at each step boundary, where the engine's ranks agree on it in the same
all_reduce as the stop signal (core/step_agreement): one just-in-time checkpoint, then
training goes on until the node goes; the restart resumes from that checkpoint.
"""
from __future__ import annotations

import signal

from raytrain_llm.core import interruption
from raytrain_llm.core.errors import TrainingError


class WorkerInterrupted(TrainingError):
    """A Ray Train worker stopped on SIGTERM after saving: a failure Ray may retry from the save."""


def install_worker_handlers() -> bool:
    """On a worker's main thread: SIGTERM is a stop request (Ctrl-C reaches the driver, not here)."""
    return interruption.install(signals=(signal.SIGTERM,))


def stop_signals_on_workers():
    """The worker-group callback for `RunConfig(callbacks=...)` (a class built on first use: the
    Ray import stays out of module import)."""
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class StopSignalsOnWorkers(WorkerGroupCallback):
        # Train passes RunConfig callbacks that are not UserCallbacks through to its controller
        # as they are (data_parallel_trainer: "allows custom workarounds built on internal callbacks").
        def after_worker_group_start(self, worker_group) -> None:
            worker_group.execute(install_worker_handlers)

    return StopSignalsOnWorkers()


def preemption_notice() -> bool:
    """Whether Ray told this worker that a node of its group is being preempted. The worker's
    own copy, without `ray.train.get_preemption_info()`'s barrier through Ray (the ranks agree
    on it in the engine's step-boundary all_reduce instead)."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        return get_train_context().preemption_context.preemption_info is not None
    except (ImportError, AttributeError, RuntimeError):
        return False


def watch_for_preemption() -> None:
    interruption.watch_notice(preemption_notice)


def raise_if_interrupted(driver_stop=None) -> None:
    """After the engine returned on a worker: a run stopped by a worker's SIGTERM fails, so that
    Ray restarts it from the checkpoint it just reported (or, retries spent, the driver names it).
    A stop the driver asked for (`driver_signals`) ends the run instead."""
    from raytrain_llm.launchers.ray_train.driver_signals import stopped_by_driver

    signum = interruption.agreed()
    if signum and not stopped_by_driver(driver_stop):
        raise WorkerInterrupted(f"a worker received {interruption.signal_name(signum)}: the run stopped after a "
                                "whole step and reported a checkpoint there")
