"""`SyntheticDataModule`: a regression problem y = f(x) + noise with a known noise floor.

f is a fixed random two-layer network drawn from the data seed, so the optimum MSE is
exactly noise_std² and a run can be checked to have really learned.
"""
from __future__ import annotations

import numpy as np

from raytrain_llm.data.base import DataModule, IndexedDataset


class RegressionDataset(IndexedDataset):
    def __init__(self, num_samples: int, seed: int, offset: int, input_dim: int, noise_std: float):
        super().__init__(num_samples, seed)
        self.offset, self.input_dim, self.noise_std = offset, input_dim, noise_std
        teacher = np.random.default_rng(seed)
        hidden = 2 * input_dim
        self.w1 = teacher.normal(0, 1 / np.sqrt(input_dim), (input_dim, hidden)).astype(np.float32)
        self.w2 = teacher.normal(0, 1 / np.sqrt(hidden), (hidden, 1)).astype(np.float32)

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        x = np.empty((len(ids), self.input_dim), np.float32)
        noise = np.empty((len(ids), 1), np.float32)
        for j, i in enumerate(ids):
            # One generator per row: a row's values depend only on (seed, row id).
            g = np.random.default_rng((self.seed, self.offset + int(i)))
            x[j] = g.standard_normal(self.input_dim, dtype=np.float32)
            noise[j] = g.standard_normal(1, dtype=np.float32)
        y = np.tanh(x @ self.w1) @ self.w2 + self.noise_std * noise
        return {"x": x, "y": y.astype(np.float32)}


class SyntheticDataModule(DataModule):
    def build_train_dataset(self) -> RegressionDataset:
        d, m = self.config.data, self.config.model
        return RegressionDataset(d.num_train_samples, d.seed, 0, m.input_dim, d.noise_std)

    def build_val_dataset(self) -> RegressionDataset:
        d, m = self.config.data, self.config.model
        # Validation rows come from ids past the training set: disjoint samples, same teacher.
        return RegressionDataset(d.num_val_samples, d.seed, 10**9, m.input_dim, d.noise_std)

    @property
    def noise_floor(self) -> float:
        return self.config.data.noise_std ** 2


