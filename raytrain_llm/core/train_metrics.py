"""`TrainMetrics`: the train metrics of the steps since the last log, kept on the device (no host
sync per step) and averaged over micro-batches and ranks when a record is made.
"""
from __future__ import annotations

from typing import Any

import torch

from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.step_checks import check_metric_names, check_metric_values, metric_float
from raytrain_llm.core.task import StepOutput, TrainingTask

Sums = dict  # (names...) -> [observations, summed fp32 values, one per name]


def accumulate(sums: Sums, keys: tuple, values: torch.Tensor, n: int = 1) -> None:
    """sums[keys] = [count, summed values] plus `values`, the sum of n observations of `keys`.
    One entry per distinct set of names: a task may report some metrics only on some steps."""
    entry = sums.get(keys)
    if entry is None:
        sums[keys] = [n, values]
    else:
        entry[0] += n
        entry[1] = entry[1] + values


class TrainMetrics:
    """`values(out)` turns a train_step's output into names and one vector; `add_step` takes a
    step's sums; `record(...)` (collective) averages everything since the last record."""

    def __init__(self, task: TrainingTask, dist: DistributedManager, device: torch.device):
        self.task, self.dist, self.device = task, dist, device
        self._window: Sums = {}
        self._checked_names: set[tuple] = set()  # name sets train_step reported, checked once each

    @torch.no_grad()
    def values(self, out: StepOutput) -> tuple[tuple, torch.Tensor]:
        """("loss", *metric names) and their values as one fp32 vector: one op per micro-batch
        for the bookkeeping, however many metrics the task reports."""
        names = ("loss", *out.metrics)
        if names not in self._checked_names:
            check_metric_names(out.metrics, "train_step", training=True)
            self._checked_names.add(names)
        try:
            values = [v.float().reshape(()) if torch.is_tensor(v)
                      else torch.tensor(float(v), device=self.device) for v in (out.loss, *out.metrics.values())]
        except (RuntimeError, TypeError, ValueError):
            check_metric_values(out.metrics, "train_step")  # names the metric that is not one number
            raise
        return names, torch.stack(values)

    def add_step(self, sums: Sums, grad_norm: torch.Tensor) -> None:
        """An applied step's micro-batch sums and its gradient norm (a skipped step's NaN must not
        poison the window's averages: it is not added)."""
        for keys, (n, values) in sums.items():
            accumulate(self._window, keys, values, n)
        accumulate(self._window, ("grad_norm",), grad_norm.detach().float().reshape(1))

    @property
    def pending(self) -> bool:
        """Steps were added since the last record."""
        return bool(self._window)

    def record(self, **fields: Any) -> dict[str, Any]:
        """{"split": "train", **fields, <metric means>}, the window emptied. Collective: every
        rank calls it at the same step. Each value is averaged over the micro-batches
        (grad_norm: the steps) that reported it, then over ranks."""
        window, self._window = self._window, {}
        names: list[str] = []
        for keys in window:
            names += [k for k in keys if k not in names]
        index = {k: i for i, k in enumerate(names)}
        totals = torch.zeros(len(names), device=self.device)
        counts = torch.zeros(len(names), device=self.device)
        for keys, (n, values) in window.items():
            rows = torch.tensor([index[k] for k in keys], device=self.device)
            totals.index_add_(0, rows, values)
            counts[rows] += n
        means = (self.dist.reduce_mean(totals) / counts).tolist()
        metrics = {k: metric_float(k, v, "finalize_train_metrics") for k, v in
                   self.task.finalize_train_metrics(dict(zip(names, means))).items()}
        return {"split": "train", **fields, **metrics}
