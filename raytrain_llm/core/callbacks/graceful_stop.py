"""`GracefulStop`: ends the loop at an optimizer-step boundary once a stop signal arrived.

The signal handler (core/interruption) only sets a flag; after each optimizer step the ranks
agree whether any of them received one (in the engine's one per-step collective,
core/step_agreement) and here every rank acts on that, so all stop after the same step. The
engine's end-of-run path then saves a checkpoint (the run resumes from exactly this step) and the
metrics logger writes summary.json, marked interrupted. No validation runs at the stop: the
time before a preempted machine is killed is short, and a resumed run must validate where an
uninterrupted one would.

A launcher may also give notice that a node will soon be taken away (Ray's preemption notice,
`interruption.watch_notice`): then a checkpoint is saved at the next step boundary, once, and
training goes on; the restarted run resumes from it.
"""
from __future__ import annotations

from raytrain_llm.core import interruption
from raytrain_llm.core.callbacks.base import Callback


class GracefulStop(Callback):
    def __init__(self):
        self.signum = 0  # the agreed stop signal (0: none), for the summary and the launcher
        self.noticed_at = 0  # the step a preemption notice was acted on (0: none yet)
        self.saved_at = -1  # the step of the run's last save

    def on_train_start(self, engine) -> None:
        self.signum, self.noticed_at, self.saved_at = 0, 0, -1
        interruption.forget_agreement()

    def on_save_checkpoint(self, engine, path, metrics) -> None:
        self.saved_at = engine.global_step

    def on_step_agreed(self, engine, step: int, agreed) -> None:
        signum, notice = agreed.signum, agreed.notice
        if notice and not self.noticed_at and not signum and engine.checkpoint_manager is not None:
            self.noticed_at = step
            if engine.dist.is_main:
                engine.logger.warning(f"preemption notice: saving a checkpoint at step {step} and training on")
            if self.saved_at != step:  # not saved by this step's periodic save already
                engine.save_checkpoint()
        if signum and not self.signum:
            self.signum = signum
            engine.request_stop(f"interrupted by {interruption.signal_name(signum)}", validate=False)
            if engine.dist.is_main:
                engine.logger.warning(f"{interruption.signal_name(signum)}: stopping after step {step}; "
                                      "saving a checkpoint (checkpoint.resume=auto continues from it)")
