"""`Validator`: one pass over the validation split, each metric averaged over the samples of the
batches (on every rank) that reported it, checked against what the task declares.
"""
from __future__ import annotations

from typing import Any, ContextManager, Mapping, Optional

import torch

from raytrain_llm.core.config import Config
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.precision import Precision, to_device
from raytrain_llm.core.step_checks import (
    check_declared_validation,
    check_metric_names,
    check_metric_values,
    check_monitor,
    metric_float,
)
from raytrain_llm.core.task import TrainingTask, as_step_output, declared_validation_metrics, samples_in_batch


def preserved_rng(device: torch.device) -> ContextManager:
    """torch's random streams (CPU, and `device`'s if CUDA) as they were when the block began."""
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices, device_type=device.type)


class Validator:
    """`run(model)` -> {"val/<name>": float}. Collective: every rank calls it at the same step.

    It leaves the caller's random streams as they were (validating more or less often, or at a
    resume point, must not change the training run) and the model in the mode it found it in.
    The first run also checks the metrics against the task's declaration and checkpoint.monitor.
    """

    def __init__(self, config: Config, task: TrainingTask, data_module, dist: DistributedManager,
                 precision: Precision, device: torch.device, criterion: Optional[torch.nn.Module] = None):
        self.config, self.task, self.data_module, self.dist = config, task, data_module, dist
        self.precision, self.device, self.criterion = precision, device, criterion
        self.non_blocking = device.type == "cuda"
        self._checked_names: set[tuple] = set()  # metric name sets validation_step reported, checked once
        self._first = True

    def run(self, model: torch.nn.Module, train_record: Optional[Mapping[str, Any]] = None) -> dict[str, float]:
        """`train_record`: the train record of the step validated (names checkpoint.monitor may
        take besides validation metrics; checked at the first run)."""
        with preserved_rng(self.device):
            metrics = self._evaluate(model)
        if self._first:
            self._first = False
            check_declared_validation(metrics, declared_validation_metrics(type(self.task), self.config),
                                      type(self.task).__name__)
            check_monitor(self.config.checkpoint.monitor, metrics, dict(train_record or {}))
        return metrics

    @torch.no_grad()
    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        limit = self.config.training.limit_val_batches
        loader = self.data_module.val_batches(batch_size=self.config.training.batch_size, rank=self.dist.rank,
                                              world_size=self.dist.world_size, pin_memory=self.non_blocking)
        modes = [(module, module.training) for module in model.modules()]  # restored as found, per module
        model.eval()
        for i, batch in enumerate(loader):
            if limit and i >= limit:
                break
            batch = to_device(batch, self.device, self.non_blocking)
            with self.precision.autocast():
                out = as_step_output(self.task.validation_step(model, batch, self.criterion), "validation_step")
            if tuple(out.metrics) not in self._checked_names:
                check_metric_names(out.metrics, "validation_step", training=False)
                self._checked_names.add(tuple(out.metrics))
            check_metric_values({"loss": out.loss, **out.metrics}, "validation_step")
            n = out.num_samples or samples_in_batch(batch)
            for k, v in {"loss": out.loss, **out.metrics}.items():
                v = torch.as_tensor(v, device=self.device).detach().float()
                sums[k] = sums.get(k, 0.0) + v * n
                counts[k] = counts.get(k, 0) + n
        for module, training in modes:
            module.training = training
        return self._reduce(sums, counts)

    def _reduce(self, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
        names = list(sums)
        if self.dist.enabled:  # every rank must reduce the same vector, also one without batches
            names = list(dict.fromkeys(k for rank_names in self.dist.gather_objects(names) for k in rank_names))
        zero = torch.zeros((), device=self.device)
        totals = self.dist.reduce_sum(torch.stack(
            [sums.get(k, zero) for k in names] + [zero + counts.get(k, 0) for k in names]))
        # Each metric averaged over the samples of the batches that reported it.
        values = (totals[:len(names)] / totals[len(names):].clamp_min(1)).tolist()
        return {k: metric_float(k, v, "finalize_validation") for k, v in
                self.task.finalize_validation({f"val/{k}": v for k, v in zip(names, values)}).items()}
