"""`EarlyStopping`: stop when a validation metric stops improving (patience counted in checks)."""
from __future__ import annotations

import math
from typing import Optional

from raytrain_llm.core.callbacks.base import Callback
from raytrain_llm.core.callbacks.metrics_logger import is_better
from raytrain_llm.core.errors import UsageError, raised_on_every_rank


class EarlyStopping(Callback):
    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int = 3,
                 min_delta: float = 0.0, stop_on_non_finite: bool = True, setting: str = "EarlyStopping.monitor"):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.setting = setting  # where the monitor was chosen, for the error that names it
        self.stop_on_non_finite = stop_on_non_finite
        self.best: Optional[float] = None
        self.wait = 0
        self.checks = 0
        self.stopped_at_check: Optional[int] = None

    def on_train_start(self, engine) -> None:
        # A resumed run that had stopped stays stopped (under this run's patience: raise it to
        # train on), as a finished run stays finished.
        if self.wait >= self.patience:
            self._stop(engine, f"{self.monitor} had not improved on {self.best:.6g} for {self.wait} checks "
                               "when the checkpoint was written")

    def on_validation_end(self, engine, metrics) -> None:
        if self.monitor not in metrics:
            # A typo would otherwise leave early stopping silently off for the whole run.
            # Every rank holds the same reduced metrics, so every rank stops here alike.
            raise raised_on_every_rank(UsageError(
                f"{self.setting}: {self.monitor!r} is not among the validation metrics "
                f"({', '.join(sorted(metrics)) or 'none'})"))
        value = float(metrics[self.monitor])
        self.checks += 1
        if not math.isfinite(value):
            if self.stop_on_non_finite:
                self._stop(engine, f"{self.monitor} is {value}")
            return
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self._stop(engine, f"{self.monitor} did not improve on {self.best:.6g} for {self.wait} checks")

    def _stop(self, engine, reason: str) -> None:
        self.stopped_at_check = self.checks
        engine.request_stop(f"early stopping: {reason}")

    def state_dict(self):
        return {"best": self.best, "wait": self.wait, "checks": self.checks}

    def load_state_dict(self, state) -> None:
        self.best, self.wait, self.checks = state["best"], state["wait"], state["checks"]
