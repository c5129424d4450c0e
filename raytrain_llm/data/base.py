"""Data modules: deterministic, index-addressed datasets and a resumable batch order.

Every sample is a pure function of (data seed, sample index). That makes the data
position in a checkpoint just (epoch, batch index): a resumed run — in-process, spawned
or on Ray — rebuilds exactly the batch it would have seen next without replaying the
epoch. The same `rows(ids)` feeds torch's DataLoader here and Ray Data in the Ray layer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from raytrain_llm.core.config import Config
from raytrain_llm.core.errors import UsageError


class IndexedDataset(Dataset):
    """A dataset whose rows are generated from their indices, a batch at a time.

    A subclass calls `super().__init__(num_samples, seed)` and implements `rows`. The loaders
    (torch's DataLoader here, Ray Data in the Ray layer) call `columns(ids)` once per batch, in
    worker processes too: the dataset must be picklable and hold no open handles it cannot
    reopen. A batch reaches `TrainingTask.train_step` as a dict of tensors, one row per id.
    """

    def __init__(self, num_samples: int, seed: int):
        """`num_samples`: rows 0..num_samples-1 exist; `seed`: what the rows may be drawn from."""
        self.num_samples, self.seed = num_samples, seed

    @abstractmethod
    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Columns for the rows `ids`.

        Receives a 1-D int64 array of row indices in [0, num_samples), in batch order (not
        sorted; possibly a single id). Returns a dict of column name -> numeric array (or CPU
        tensor) with one row per id, in the order of `ids`; the same ids always give the same
        values (a resume rebuilds a batch from its ids alone). May raise `UsageError` for data
        that cannot be read; returning anything else is a UsageError naming this method.
        """

    def __len__(self) -> int:
        return self.num_samples

    def columns(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """`rows(ids)`, checked: a dict of numpy arrays with one row per id (CPU tensors are taken
        too and converted). Raises UsageError naming the column that is not one."""
        out = self.rows(ids)
        where = f"{type(self).__name__}.rows"
        if not isinstance(out, dict):
            raise UsageError(f"{where} returned a {type(out).__name__}: return a dict of column name -> array")
        for key, value in out.items():
            if torch.is_tensor(value):
                out[key] = value = value.detach().cpu().numpy()
            if not isinstance(value, np.ndarray) or value.dtype == object:
                raise UsageError(f"{where}: column {key!r} is a {type(value).__name__}"
                                 f"{' of objects' if isinstance(value, np.ndarray) else ''}: return numeric numpy arrays")
            if value.ndim == 0 or len(value) != len(ids):
                raise UsageError(f"{where}: column {key!r} has shape {list(value.shape)} for {len(ids)} ids: "
                                 "it must hold one row per id")
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v[0]) for k, v in self.columns(np.array([i], dtype=np.int64)).items()}

    def __getitems__(self, ids: list[int]) -> dict[str, torch.Tensor]:
        # DataLoader calls this with a whole batch of indices: one vectorised call per batch.
        return {k: torch.from_numpy(v) for k, v in self.columns(np.asarray(ids, dtype=np.int64)).items()}


def keep_batch(batch: Any) -> Any:
    """collate_fn for datasets that already return whole batches (picklable for workers)."""
    return batch


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of indices for one rank, one epoch, starting at `start_batch`.

    Global micro-batch i is the contiguous slice [i*W*B, (i+1)*W*B) of the epoch's
    permutation, and rank r takes its r-th block of B. Hence W workers at batch B see
    exactly the samples one worker sees at batch W*B, so their averaged gradients match.
    """

    def __init__(self, num_samples: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, epoch: int = 0, start_batch: int = 0, shuffle: bool = True,
                 drop_last: bool = True):
        self.n, self.b, self.rank, self.world = num_samples, batch_size, rank, world_size
        self.seed, self.epoch, self.start, self.shuffle, self.drop_last = seed, epoch, start_batch, shuffle, drop_last

    def __len__(self) -> int:
        return max(0, self.total_batches() - self.start)

    def total_batches(self) -> int:
        per_step = self.b * self.world
        return self.n // per_step if self.drop_last else -(-self.n // per_step)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        for i in range(self.start, self.total_batches()):
            lo = (i * self.world + self.rank) * self.b
            block = order[lo:lo + self.b]
            if len(block):
                yield block.tolist()


class DataModule(ABC):
    """Turns a config into train and validation batches for one rank.

    Subclasses call `super().__init__(config)` and provide the two datasets; the loaders below
    are shared. `TrainingTask.build_data_module` returns one, on every rank (and in the
    launcher, which may call `check_data` before any worker starts). The Ray layer wraps it and
    replaces `train_batches`/`val_batches` with Ray Data shards of the same datasets, so
    anything else a task reads from its data module (sizes, vocabularies) stays as defined here.
    """

    shuffle_train = True  # False: every epoch reads the training set in index order

    def __init__(self, config: Config):
        """`config`: the run's whole Config (data.seed, data.num_workers, data.pin_memory are read here)."""
        self.config = config
        self._train: IndexedDataset | None = None
        self._val: IndexedDataset | None = None

    @abstractmethod
    def build_train_dataset(self) -> IndexedDataset:
        """The training set, built on first use of `train_dataset` and kept. Returns an
        IndexedDataset (anything else is a UsageError naming this method); may raise UsageError
        for a missing or unreadable source."""

    @abstractmethod
    def build_val_dataset(self) -> IndexedDataset:
        """The validation set, built on first use of `val_dataset` and kept; returns and raises
        as `build_train_dataset`."""

    @property
    def train_dataset(self) -> IndexedDataset:
        if "_train" not in self.__dict__:
            raise UsageError(f"{type(self).__name__}.__init__ must call super().__init__(config)")
        if self._train is None:
            self._train = self._checked(self.build_train_dataset(), "build_train_dataset")
        return self._train

    @property
    def val_dataset(self) -> IndexedDataset:
        if "_val" not in self.__dict__:
            raise UsageError(f"{type(self).__name__}.__init__ must call super().__init__(config)")
        if self._val is None:
            self._val = self._checked(self.build_val_dataset(), "build_val_dataset")
        return self._val

    def _checked(self, dataset: Any, method: str) -> IndexedDataset:
        # The loaders pass whole index batches to `__getitems__` and keep the result as the
        # batch; a plain Dataset would silently yield lists of samples instead of tensors.
        if not isinstance(dataset, IndexedDataset):
            raise UsageError(f"{type(self).__name__}.{method} returned a {type(dataset).__name__}, not a "
                             "raytrain_llm.data.IndexedDataset (subclass it and implement rows(ids))")
        if "num_samples" not in vars(dataset):
            raise UsageError(f"{type(dataset).__name__}.__init__ must call super().__init__(num_samples, seed)")
        return dataset

    def num_train_batches(self, batch_size: int, world_size: int) -> int:
        """Full micro-batches per epoch for each of `world_size` ranks at `batch_size` per rank
        (the remainder is dropped); the engine plans steps and epochs from it."""
        return len(self.train_dataset) // (batch_size * world_size)

    def check_data(self) -> None:
        """Raises UsageError for data that cannot train this model, found before training starts
        (e.g. token ids outside the vocabulary in a token file); returns None. Called once per
        run: by the launcher before workers start, or else by the engine on rank 0. The default
        checks nothing."""

    def require_a_batch(self, batch_size: int, world_size: int) -> None:
        """A usage error when the training set holds no full batch for `world_size` workers."""
        if self.num_train_batches(batch_size, world_size) == 0:
            raise UsageError(f"training.batch_size: the training set is smaller than one batch: "
                             f"{len(self.train_dataset)} samples, batch {batch_size} x {world_size} workers")

    def _loader(self, dataset: Dataset, sampler: Sampler, pin: bool, seed: int) -> DataLoader:
        workers = self.config.data.num_workers
        # Its own generator: a DataLoader otherwise draws its base seed from the global torch
        # RNG, so a resumed run (which creates the loader mid-epoch) would shift dropout noise.
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=keep_batch, num_workers=workers,
                          pin_memory=pin and self.config.data.pin_memory,
                          generator=torch.Generator().manual_seed(seed),
                          persistent_workers=False, prefetch_factor=4 if workers else None)

    def train_batches(self, *, epoch: int, start_batch: int, batch_size: int, rank: int,
                      world_size: int, pin_memory: bool = False) -> Iterable[Any]:
        """This rank's micro-batches of `epoch` from micro-batch `start_batch` on (a resume starts
        mid-epoch): dicts of tensors of `batch_size` rows, the order a function of (data.seed,
        epoch) only, so every rank and every resume agree (see ResumableBatchSampler)."""
        sampler = ResumableBatchSampler(len(self.train_dataset), batch_size, rank=rank, world_size=world_size,
                                        seed=self.config.data.seed, epoch=epoch, start_batch=start_batch,
                                        shuffle=self.shuffle_train)
        return self._loader(self.train_dataset, sampler, pin_memory, seed=self.config.data.seed + epoch)

    def val_batches(self, *, batch_size: int, rank: int, world_size: int,
                    pin_memory: bool = False) -> Iterable[Any]:
        """This rank's share of the whole validation set in index order, the last batch possibly
        short (or none for some ranks); the engine averages metrics over samples and ranks."""
        sampler = ResumableBatchSampler(len(self.val_dataset), batch_size, rank=rank, world_size=world_size,
                                        shuffle=False, drop_last=False)
        return self._loader(self.val_dataset, sampler, pin_memory, seed=self.config.data.seed)
