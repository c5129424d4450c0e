"""`RegressionTask`: the smallest complete task; a template for writing your own."""
from __future__ import annotations

import dataclasses

from torch import nn

from raytrain_llm.core.config import DataConfig, ModelConfig
from raytrain_llm.core.task import StepOutput, TrainingTask, schedule_inactive_keys
from raytrain_llm.data.synthetic import SyntheticDataModule

# Every other model. and data. key belongs to other tasks (the transformer's, token files').
USED_KEYS = frozenset({"model.input_dim", "model.hidden_dim", "model.dropout", "data.num_train_samples",
                       "data.num_val_samples", "data.noise_std", "data.seed", "data.num_workers", "data.pin_memory"})


class RegressionTask(TrainingTask):
    @classmethod
    def validation_metrics(cls, config) -> frozenset:
        return frozenset({"val/loss", "val/mae"})  # validation_step's loss and mae

    @classmethod
    def inactive_keys(cls, config) -> dict[str, str]:
        unused = f"task {config.task} does not use it"
        keys = [f"{section}.{f.name}" for section, fields in (("model", ModelConfig), ("data", DataConfig))
                for f in dataclasses.fields(fields)]
        return {**{k: unused for k in keys if k not in USED_KEYS}, **schedule_inactive_keys(config)}

    def build_model(self) -> nn.Module:
        m = self.config.model
        return nn.Sequential(
            nn.Linear(m.input_dim, m.hidden_dim), nn.GELU(), nn.Dropout(m.dropout),
            nn.Linear(m.hidden_dim, m.hidden_dim), nn.GELU(), nn.Linear(m.hidden_dim, 1))

    def build_criterion(self) -> nn.Module:
        return nn.MSELoss()

    def build_data_module(self) -> SyntheticDataModule:
        return SyntheticDataModule(self.config)

    def train_step(self, model, batch, criterion) -> StepOutput:
        pred = model(batch["x"])
        loss = criterion(pred.float(), batch["y"])
        return StepOutput(loss=loss, metrics={"mae": (pred.float() - batch["y"]).abs().mean().detach()})

    def validation_step(self, model, batch, criterion) -> StepOutput:
        pred = model(batch["x"]).float()
        return StepOutput(loss=criterion(pred, batch["y"]),
                          metrics={"mae": (pred - batch["y"]).abs().mean()})
