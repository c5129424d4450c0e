"""`RegressionTask`: the smallest complete task; a template for writing your own."""
from __future__ import annotations

from torch import nn

from raytrain_llm.data.synthetic import SyntheticDataModule
from raytrain_llm.core.task import StepOutput, TrainingTask


class RegressionTask(TrainingTask):
    @classmethod
    def validation_metrics(cls, config) -> frozenset:
        return frozenset({"val/loss", "val/mae"})  # validation_step's loss and mae

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
