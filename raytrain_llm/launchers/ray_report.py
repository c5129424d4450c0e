"""Callbacks that connect the engine to Ray Train: checkpoint reports, and test-only fault injection.

`ray.train.report` is a barrier: every rank must call it the same number of times. The engine
calls `on_save_checkpoint` on every rank after each save (path only on rank 0), so reporting from
there keeps the ranks in step by construction.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from typing import Any, Optional

from raytrain_llm.core.callbacks import Callback

FAULT_ENV = "RAYTRAIN_FAULT_INJECT"


def float_metrics(metrics: dict[str, Any], engine) -> dict[str, float]:
    """Ray rejects tensors; keep finite-or-not plain numbers, plus the data position."""
    out = {k: float(v) for k, v in metrics.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update(step=float(engine.global_step), epoch=float(engine.epoch))
    return out


SCORE_KEY = "checkpoint_score"  # what Ray's checkpoint retention ranks by (CheckpointConfig)


def checkpoint_score(metrics: dict[str, float], monitor: str, mode: str) -> float:
    """The monitored metric, or for a save without a (finite) one the worst finite value, so it
    ranks below every scored checkpoint. Not NaN: Ray's run snapshot stores NaN as null, and a
    run resumed by its name then fails sorting its checkpoints (float * None)."""
    value = metrics.get(monitor)
    if isinstance(value, float) and math.isfinite(value):
        return value
    return sys.float_info.max if mode == "min" else -sys.float_info.max


class RayReportCallback(Callback):
    """Each engine checkpoint becomes one `ray.train.report`; without checkpoints, each validation does.
    A save without a validation reports no monitored metric (Tune then skips it) but a score."""

    def __init__(self, monitor: str, checkpoints_enabled: bool, mode: str = "min"):
        self.monitor, self.mode = monitor, mode
        self.checkpoints_enabled = checkpoints_enabled

    def _report(self, engine, metrics: dict[str, Any], path: Optional[str]) -> None:
        import ray.train

        values = float_metrics(metrics, engine)
        values[SCORE_KEY] = checkpoint_score(values, self.monitor, self.mode)
        checkpoint = ray.train.Checkpoint.from_directory(path) if path else None
        ray.train.report(values, checkpoint=checkpoint)

    def on_save_checkpoint(self, engine, path: Optional[str], metrics: dict[str, float]) -> None:
        self._report(engine, metrics, path if engine.dist.is_main else None)

    def on_validation_end(self, engine, metrics: dict[str, float]) -> None:
        if not self.checkpoints_enabled:
            self._report(engine, {**engine.last_train_record, **metrics}, None)


class KillAtStep(Callback):
    """Test-only: SIGKILL this worker at a chosen step, as a crashed machine would die.

    Spec `rank=1,step=6,marker=/abs/file[,times=1][,signal=TERM]`: rank `rank` kills itself right
    after optimizer step `step` while the marker file records fewer than `times` kills (so a
    restarted run that reaches the step again goes on, or keeps dying when `times` exceeds the
    retries). With `signal=TERM` it sends itself SIGTERM instead, as a reclaimed node's worker gets
    it, and waits for the handler on the worker's main thread to see it.
    """

    def __init__(self, spec: str):
        fields = dict(part.split("=", 1) for part in spec.split(",") if part)
        self.rank, self.step = int(fields["rank"]), int(fields["step"])
        self.marker, self.times = fields["marker"], int(fields.get("times", 1))
        self.signal = fields.get("signal", "KILL")

    @classmethod
    def from_spec(cls, spec: Optional[str]) -> list[Callback]:
        return [cls(spec)] if spec else []

    def on_batch_end(self, engine, step: int, outputs) -> None:
        if engine.dist.rank != self.rank or step != self.step:
            return
        kills = 0
        if os.path.exists(self.marker):
            with open(self.marker, encoding="utf-8") as fh:
                kills = len(fh.read().split())
        if kills >= self.times:
            return
        with open(self.marker, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.signal == "KILL":
            os.kill(os.getpid(), signal.SIGKILL)
        from raytrain_llm.core import interruption

        os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))
        deadline = time.monotonic() + 30  # the main thread runs the handler when it next runs Python
        while not interruption.received() and time.monotonic() < deadline:
            time.sleep(0.01)
