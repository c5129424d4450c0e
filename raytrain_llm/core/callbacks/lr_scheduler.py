"""`LRSchedulerCallback`: drives metric-based schedulers and records every LR change.

Step-based schedulers are stepped by the engine after each optimizer step. A
`ReduceLROnPlateau` needs the monitored metric (checkpoint.monitor), so this callback steps
it after each validation; it also keeps the LR history per param group (the last HISTORY_KEPT changes)
and logs every change.
"""
from __future__ import annotations

import torch

from raytrain_llm.core.callbacks.base import Callback

HISTORY_KEPT = 1000


class LRSchedulerCallback(Callback):
    def __init__(self, monitor: str = "val/loss", logger=None):
        self.monitor = monitor
        self.logger = logger
        self.history: list[tuple[int, list[float]]] = []

    def _lrs(self, engine) -> list[float]:
        return [float(g["lr"]) for g in engine.optimizer.param_groups]

    def on_train_start(self, engine) -> None:
        if not self.history:
            self.history.append((engine.global_step, self._lrs(engine)))

    def on_batch_start(self, engine, batch_idx) -> None:
        # Recorded before the step that uses it: (step, lrs) means "from this step on".
        lrs = self._lrs(engine)
        if not self.history or lrs != self.history[-1][1]:
            self.history.append((engine.global_step + 1, lrs))
            if len(self.history) > HISTORY_KEPT:  # a decaying schedule changes the LR every step
                del self.history[0]

    def on_validation_end(self, engine, metrics) -> None:
        scheduler = engine.scheduler
        # The monitor may be a train metric (checkpoint.monitor=loss): this step's train record's
        # (the engine logs one at every validation step; an older one would repeat a value).
        record = engine.last_train_record
        value = metrics.get(self.monitor, record.get(self.monitor) if record.get("step") == engine.global_step else None)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and value is not None:
            before = self._lrs(engine)
            scheduler.step(value)
            after = self._lrs(engine)
            if after != before and self.logger:
                self.logger.info(f"lr reduced on plateau at step {engine.global_step}: {before} -> {after}")

    def state_dict(self):
        return {"history": [[s, lrs] for s, lrs in self.history]}

    def load_state_dict(self, state) -> None:
        self.history = [(int(s), list(lrs)) for s, lrs in state.get("history", [])]
