"""`RayReportCallback`: the engine's checkpoints and validations, reported to Ray Train.

`ray.train.report` is a barrier: every rank must call it the same number of times. The engine
calls `on_save_checkpoint` on every rank after each save (path only on rank 0), so reporting from
there keeps the ranks in step by construction.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Optional

from raytrain_llm.core.callbacks import Callback
from raytrain_llm.launchers.ray_train.checkpoint_pointer import report_arguments


def float_metrics(metrics: dict[str, Any], engine) -> dict[str, float]:
    """Ray rejects tensors; keep finite-or-not plain numbers, plus the data position."""
    out = {k: float(v) for k, v in metrics.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update(step=float(engine.global_step), epoch=float(engine.progress.epoch_number()))
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

    def __init__(self, monitor: str, checkpoints_enabled: bool, mode: str = "min", in_place: bool = False):
        self.monitor, self.mode = monitor, mode
        self.checkpoints_enabled = checkpoints_enabled
        self.in_place = in_place  # checkpoint_pointer.stores_in_place: Ray gets a pointer, not a copy

    def _report(self, engine, metrics: dict[str, Any], path: Optional[str]) -> None:
        import ray.train

        values = float_metrics(metrics, engine)
        values[SCORE_KEY] = checkpoint_score(values, self.monitor, self.mode)
        ray.train.report(values, **report_arguments(path, self.in_place))

    def on_save_checkpoint(self, engine, path: Optional[str], metrics: dict[str, float]) -> None:
        self._report(engine, metrics, path if engine.dist.is_main else None)

    def on_validation_end(self, engine, metrics: dict[str, float]) -> None:
        if not self.checkpoints_enabled:
            self._report(engine, {**engine.last_train_record, **metrics}, None)

