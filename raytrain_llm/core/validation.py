"""Validation for the engine: one pass over the validation split, metrics averaged over batches
and ranks, without touching the training run's randomness.
"""
from __future__ import annotations

import torch

from raytrain_llm.core.precision import to_device
from raytrain_llm.core.step_checks import (check_declared_validation, check_metric_names, check_metric_values,
                                           check_monitor, metric_float)
from raytrain_llm.core.task import as_step_output, declared_validation_metrics, samples_in_batch


class ValidationMixin:
    """`_validate_if_needed` / `_run_validation_epoch` of TrainingEngine (the state they use is
    the engine's: config, task, model, data module, callbacks, dist, precision, progress)."""

    def _validate_if_needed(self) -> None:
        if not self.config.training.validate or self._val_step == self.global_step or self.global_step == 0:
            return
        # Validation must not consume training randomness, or validating more or less often
        # (or at a resume point) would change the training run itself.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            self._run_validation_epoch()

    @torch.no_grad()
    def _run_validation_epoch(self) -> dict[str, float]:
        self._val_step = self.global_step
        self.callbacks.on_validation_start(self)
        self.raw_model.eval()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        limit = self.config.training.limit_val_batches
        loader = self.data_module.val_batches(batch_size=self.config.training.batch_size, rank=self.dist.rank,
                                              world_size=self.dist.world_size, pin_memory=self.non_blocking)
        for i, batch in enumerate(loader):
            if limit and i >= limit:
                break
            batch = to_device(batch, self.device, self.non_blocking)
            with self.precision.autocast():
                out = as_step_output(self.task.validation_step(self.eval_model, batch, self.criterion),
                                     "validation_step")
            if ("val", *out.metrics) not in self._checked_names:
                check_metric_names(out.metrics, "validation_step", training=False)
                self._checked_names.add(("val", *out.metrics))
            check_metric_values({"loss": out.loss, **out.metrics}, "validation_step")
            n = out.num_samples or samples_in_batch(batch)
            for k, v in {"loss": out.loss, **out.metrics}.items():
                v = torch.as_tensor(v, device=self.device).detach().float()
                sums[k] = sums.get(k, 0.0) + v * n
                counts[k] = counts.get(k, 0) + n
        self.raw_model.train()
        names = list(sums)
        if self.dist.enabled:  # every rank must reduce the same vector, also one without batches
            names = list(dict.fromkeys(k for rank_names in self.dist.gather_objects(names) for k in rank_names))
        zero = torch.zeros((), device=self.device)
        totals = self.dist.reduce_sum(torch.stack(
            [sums.get(k, zero) for k in names] + [zero + counts.get(k, 0) for k in names]))
        # Each metric averaged over the samples of the batches that reported it.
        values = (totals[:len(names)] / totals[len(names):].clamp_min(1)).tolist()
        metrics = {k: metric_float(k, v, "finalize_validation") for k, v in
                   self.task.finalize_validation({f"val/{k}": v for k, v in zip(names, values)}).items()}
        self.last_val_metrics = metrics
        if not self._monitor_checked:
            self._monitor_checked = True
            check_declared_validation(metrics, declared_validation_metrics(type(self.task), self.config),
                                      type(self.task).__name__)
            check_monitor(self.config.checkpoint.monitor, metrics, self.last_train_record)
        self.callbacks.on_validation_end(self, metrics)
        # The epoch the validated weights trained in, as train records count it: an epoch-end
        # validation runs after the counter moved on to the next epoch.
        epoch = self.epoch - 1 if self.batch_in_epoch == 0 and self.epoch > 0 else self.epoch
        self.callbacks.on_log(self, {"split": "val", "step": self.global_step, "epoch": epoch, **metrics})
        return metrics
