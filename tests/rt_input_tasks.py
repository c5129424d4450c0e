"""Test-only tasks that a user could get wrong, used as `--task rt_input_tasks:Name` by the
bad-input tables (tests/ is on PYTHONPATH in the CLI subprocesses)."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from raytrain_llm.core.task import TrainingTask
from raytrain_llm.data.synthetic import SyntheticDataModule
from raytrain_llm.tasks.regression_task import RegressionTask


class HalfTask(TrainingTask):
    """Forgets train_step (and build_data_module)."""

    def build_model(self):
        return torch.nn.Linear(2, 1)


class PlainDataModule(SyntheticDataModule):
    """Returns a plain torch Dataset, which the loaders would batch as lists of tuples."""

    def build_train_dataset(self):
        return TensorDataset(torch.zeros(64, self.config.model.input_dim), torch.zeros(64, 1))


class PlainDatasetTask(RegressionTask):
    def build_data_module(self):
        return PlainDataModule(self.config)
