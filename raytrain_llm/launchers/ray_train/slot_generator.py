"""The map function of the slot datasets (data_shards.py): slot index -> a rank's micro-batch.

Kept apart from data_shards, and importing no torch, because Ray unpickles the datasets' plan,
this function with it, in processes that never generate a slot: Train's dataset manager and
Ray Data's split coordinator (actors). Each would otherwise import torch (~1.3 CPU-s) on the
cores the run starts on. In Ray tasks, where slots are generated, torch is imported as the
function is unpickled (as when it lived in data_shards), not in its first call: imported there,
a reused worker process was seen left with a half-imported torch (an import broken off, most
likely by the cancellation Ray Data sends to tasks still running when a stream ends), and no
later task there could run. The task's own module is still imported at the first call, as
before; the warm-up task (`load_task_dataset`) imports both while it runs, and nothing cancels it.
"""
from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import Any

import numpy as np

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping

_META = ("_epoch", "_batch", "_rank", "_count")
SLOTS_PER_BLOCK = 32  # G in data_shards.py's docstring


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    from raytrain_llm.data.base import epoch_permutation  # torch: only where slots are generated

    return epoch_permutation(n, seed, epoch).numpy()


def _runs_ray_tasks() -> bool:
    """Whether this process is a Ray worker outside any actor, where slots are made (or the
    driver, which has torch already)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    return ray.get_runtime_context().get_actor_id() is None


_MODULES: dict[str, Any] = {}  # config_key -> the task's data module, built in this process


def config_key(config: Config) -> str:
    """What a SlotGenerator carries of its config, and the key of the data module it loads."""
    return json.dumps(config.to_dict())


def _task_dataset(config_json: str, split: str):
    """The task's dataset, its data module built once per Ray Data worker process from the config."""
    if config_json not in _MODULES:
        from raytrain_llm.launchers.task_resolution import resolve_task

        config = config_from_mapping(json.loads(config_json))
        module = resolve_task(config.task)(config).build_data_module()
        _MODULES.clear()  # one run per process at a time; do not pile up generator tables
        _MODULES[config_json] = module
    module = _MODULES[config_json]
    return module.train_dataset if split == "train" else module.val_dataset


def load_task_dataset(config_json: str) -> bool:
    """Warm-up task: this process builds the training dataset that a generating task of the same
    config (`config_key`) would, and keeps it. True if it did; a warm-up never fails a run (its
    generating tasks would build the dataset, and meet any problem, themselves)."""
    try:
        _task_dataset(config_json, "train")
    except Exception:
        return False
    return True


class SlotGenerator:
    """Map function: slot index -> one row holding a rank's whole micro-batch.

    It carries the config, not the dataset: generator tables (e.g. a large Markov chain) are
    rebuilt once per Ray Data worker instead of being pickled into every task.
    """

    def __init__(self, config: Config, split: str, num_samples: int, *, batch_size: int, world_size: int,
                 batches_per_epoch: int, total_batches: int, seed: int, shuffle: bool,
                 group: int = SLOTS_PER_BLOCK):
        self.config_json, self.split, self.n = config_key(config), split, num_samples
        self.b, self.w, self.nb, self.g = batch_size, world_size, batches_per_epoch, group
        self.total = max(total_batches, 1)  # global batches the run reads (across epochs)
        self.seed, self.shuffle = seed, shuffle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _runs_ray_tasks():
            import raytrain_llm.data.base  # noqa: F401 - torch, now (see the module docstring)

    @property
    def dataset(self):
        return _task_dataset(self.config_json, self.split)

    @property
    def num_rows(self) -> int:
        """Rows covering all global batches, padded to whole blocks for every rank."""
        return -(-self.total // self.g) * self.g * self.w

    def slot_ids(self, row: int) -> tuple[int, int, int, np.ndarray]:
        """(epoch, batch in epoch, rank, sample ids) of a dataset row."""
        block, within = divmod(row, self.g)
        chunk, rank = divmod(block, self.w)
        nth = chunk * self.g + within  # the rank's n-th global batch overall
        epoch, batch = divmod(nth, self.nb)
        if nth >= self.total:  # padding of the last block: no samples
            return epoch, batch, rank, np.zeros(0, np.int64)
        order = _permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)
        lo = (batch * self.w + rank) * self.b
        return epoch, batch, rank, order[lo:lo + self.b].astype(np.int64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {}
        for slot in batch["id"]:
            epoch, b, rank, ids = self.slot_ids(int(slot))
            cols = self.dataset.columns(ids) if len(ids) else {}
            if not cols:  # an empty tail slot of a validation set: shapes from one real row
                cols = {k: v[:0] for k, v in self.dataset.columns(np.zeros(1, np.int64)).items()}
            for k, v in cols.items():
                pad = np.zeros((self.b - len(v),) + v.shape[1:], v.dtype)  # val tail: pad, keep count
                out.setdefault(k, []).append(np.concatenate([v, pad]) if len(pad) else v)
            for k, v in zip(_META, (epoch, b, rank, len(ids))):
                out.setdefault(k, []).append(v)
        return {k: np.stack(v) if k not in _META else np.asarray(v, np.int64) for k, v in out.items()}
