"""`GracefulStop`: ends the loop at an optimizer-step boundary once a stop signal arrived.

The signal handler (core/interruption) only sets a flag; here, after each optimizer step, the
ranks agree whether any of them received one, so all stop after the same step. The engine's
end-of-run path then saves a checkpoint (the run resumes from exactly this step) and the
metrics logger writes summary.json, marked interrupted. No validation runs at the stop: the
time before a preempted machine is killed is short, and a resumed run must validate where an
uninterrupted one would.
"""
from __future__ import annotations

from raytrain_llm.core import interruption
from raytrain_llm.core.callbacks.base import Callback


class GracefulStop(Callback):
    def __init__(self):
        self.signum = 0  # the agreed stop signal (0: none), for the summary and the launcher

    def on_train_start(self, engine) -> None:
        self.signum = 0
        interruption.forget_agreement()

    def on_batch_end(self, engine, step: int, outputs) -> None:
        signum = interruption.agreed_signal(engine.dist, engine.device)
        if signum and not self.signum:
            self.signum = signum
            engine.request_stop(f"interrupted by {interruption.signal_name(signum)}", validate=False)
            if engine.dist.is_main:
                engine.logger.warning(f"{interruption.signal_name(signum)}: stopping after step {step}; "
                                      "saving a checkpoint (checkpoint.resume=auto continues from it)")
