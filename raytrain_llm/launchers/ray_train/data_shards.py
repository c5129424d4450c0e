"""Ray Data for training: lazily generated "slot" datasets and the worker-side data module.

A slot is one rank's micro-batch: B samples of one global batch, holding exactly the rows that
`ResumableBatchSampler` gives that rank (data/base.py), so W workers at batch B see the global
batches of 1 worker at W*B. A row of the dataset is a whole slot, made by the datasets' map
function (slot_generator.SlotGenerator).

Why blocks of G slots of one rank: with `preserve_order=True` and equal-sized blocks, Ray's
`streaming_split(W, equal=True)` hands block j to shard j mod W (it feeds the shard with the fewest
rows, ties to the lowest index). So block j holds G consecutive global batches of rank j mod W, and
each shard streams exactly its rank's slots, in order. G > 1 cuts the number of Ray Data tasks (one
per block), of the split coordinator's hand-overs and of the worker's reads (read_slots: a block
per read) G-fold: each costs Ray a fixed few milliseconds of CPU on the cores that train. Every slot also carries its (epoch, batch,
rank), and the worker checks them: if Ray ever changes how it splits, the run fails loudly instead
of silently training on a different order.

The train dataset spans every epoch the run needs; the epoch's permutation is derived in the map
function from (data seed, epoch), so shuffling is deterministic and no driver state is needed.
A DataIterator cannot start mid-stream, so after a restart the worker skips the slots it already
trained on (cheap: rows are generated, never read from storage).
"""
from __future__ import annotations

import math
import threading
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch

from raytrain_llm.core.config import Config
from raytrain_llm.core.errors import TrainingError
from raytrain_llm.launchers.ray_train.slot_generator import (
    _META,
    SLOTS_PER_BLOCK,
    SlotGenerator,
    config_key,
    load_task_dataset,
)


def train_batches_needed(config: Config, batches_per_epoch: int, every_epoch: bool = False) -> int:
    """Global micro-batches the engine will consume: every epoch, cut short by max_steps unless
    `every_epoch`. The cut counts from the run's start, so a resumed or restored run gets every
    epoch (rows are generated lazily, so the rest costs nothing): with another global batch its
    data position moves (engine_state._resume_position) and max_steps no longer bounds what it reads."""
    t = config.training
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum_steps)
    total, steps_left = 0, (None if every_epoch else t.max_steps or None)
    for _ in range(t.epochs):
        if steps_left is not None and steps_left < steps_per_epoch:
            return total + min(batches_per_epoch, steps_left * t.grad_accum_steps)
        total += batches_per_epoch
        if steps_left is not None:
            steps_left -= steps_per_epoch
    return total


def build_ray_datasets(config: Config, data_module, world_size: int, every_epoch: bool = False) -> dict[str, Any]:
    """{"train", "val"} Ray Datasets of slots, generated lazily by Ray Data tasks (the training
    stream over every epoch when `every_epoch`, see train_batches_needed)."""
    import ray.data

    b = config.training.batch_size
    nb = data_module.num_train_batches(b, world_size)
    gen = SlotGenerator(config, "train", len(data_module.train_dataset), batch_size=b, world_size=world_size,
                        batches_per_epoch=nb, total_batches=train_batches_needed(config, nb, every_epoch),
                        seed=config.data.seed, shuffle=data_module.shuffle_train)
    n_val = len(data_module.val_dataset)
    nb_val = -(-n_val // (b * world_size))  # validation keeps its partial last batch
    val_gen = SlotGenerator(config, "val", n_val, batch_size=b, world_size=world_size,
                            batches_per_epoch=nb_val, total_batches=nb_val, seed=0, shuffle=False)

    def slots(fn: SlotGenerator):
        # Equal blocks of G rows (see the module docstring); batch_size=None maps one block per task.
        return ray.data.range(fn.num_rows, override_num_blocks=fn.num_rows // fn.g).map_batches(
            fn, batch_size=None, batch_format="numpy")

    return {"train": slots(gen), "val": slots(val_gen)}


def warm_slot_process(config: Config) -> None:
    """Start, now, a Ray worker process that holds the task's training dataset (see the rule in
    slot_generator): left idle, it runs the first generating task, which then neither starts a
    process nor imports torch nor builds the dataset when the first read starts the pipeline.
    For a private cluster (one node); `config` is the one the datasets were built from."""
    import ray

    ray.remote(num_cpus=0, max_retries=0)(load_task_dataset).remote(config_key(config))


def read_slots(shard, prefetch: int) -> Iterator[tuple[dict[str, torch.Tensor], tuple[int, int, int, int]]]:
    """(micro-batch, (epoch, batch, rank, count)) for each slot of `shard`, in order.

    Read a block (SLOTS_PER_BLOCK slots) per transfer as numpy and made tensors here: Ray Data's
    per-batch work (batching, format conversion, collation, its stats) is paid once per block
    rather than once per micro-batch, and `prefetch` blocks are fetched by Ray's background thread.
    The batch sizes need not match the blocks for correctness (every slot carries its own ids);
    they match so that no slot is copied twice. One copy per block: Ray's arrays may be read-only
    views of the object store, and a task may write into its batch.
    """
    for block in shard.iter_batches(batch_size=SLOTS_PER_BLOCK, prefetch_batches=prefetch,
                                    batch_format="numpy", drop_last=False):
        metas = np.stack([np.asarray(block[k]).reshape(-1) for k in _META], 1).tolist()  # (G, 4)
        tensors = {k: torch.tensor(v) for k, v in block.items() if k not in _META}  # (G, B, ...) each
        for i, meta in enumerate(metas):
            count = meta[3]
            yield {k: v[i, :count] for k, v in tensors.items()}, tuple(meta)


class StartedStream:
    """An iterator whose first item is pulled at once, in a background thread.

    Ray Data starts its pipeline (the split coordinator's executor, the first generating tasks and
    their worker processes) only when a shard is first read. Pulling the first slot while the
    worker builds its model and engine overlaps those seconds with that work instead of adding
    them before the first step. The thread ends with the first item; after that every item is
    pulled by the caller, so the underlying iterator is never used by two threads at once.
    """

    def __init__(self, iterator: Iterator):
        self._iterator, self._first, self._error = iterator, [], None
        self._thread: Optional[threading.Thread] = threading.Thread(
            target=self._pull_first, name="ray-data-first-slot", daemon=True)
        self._thread.start()

    def _pull_first(self) -> None:
        try:
            self._first.append(next(self._iterator))
        except StopIteration:
            pass
        except BaseException as exc:  # raised in the caller's thread, at its first next()
            self._error = exc

    def __iter__(self) -> "StartedStream":
        return self

    def __next__(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._first:
                return self._first.pop()
        return next(self._iterator)


PREFETCH_BLOCKS = 2


def start_reading(train_shard, prefetch: int = PREFETCH_BLOCKS) -> StartedStream:
    """The training stream of `train_shard`, its first slot already being pulled (StartedStream)."""
    return StartedStream(read_slots(train_shard, prefetch))


class RayShardDataModule:
    """Worker side: the task's data module, with batches read from this rank's Ray Data shards.

    Everything but `train_batches`/`val_batches` (datasets, sizes, task-specific helpers such as
    a noise floor) is delegated to the wrapped module, so the engine and task see no difference.
    `stream`: the training stream, when the worker started it earlier (`start_reading`);
    `val_shard` may be a function returning the shard, called at the first validation (Ray's
    `get_dataset_shard` starts the dataset's split coordinator: not needed before then).
    """

    def __init__(self, inner, train_shard, val_shard, *, rank: int, world_size: int,
                 prefetch: int = PREFETCH_BLOCKS, stream: Optional[StartedStream] = None):
        self.inner, self.train_shard, self._val_shard = inner, train_shard, val_shard
        self.rank, self.world_size, self.prefetch = rank, world_size, prefetch
        self._stream: Optional[Iterator] = stream or self._open_stream()  # started now: see StartedStream
        self._position = (0, 0)  # (epoch, batch) of the next slot the stream yields

    def __getattr__(self, name: str):
        return getattr(self.__dict__["inner"], name)

    @property
    def val_shard(self):
        if callable(self._val_shard):
            self._val_shard = self._val_shard()
        return self._val_shard

    def _open_stream(self) -> Iterator:
        self._position = (0, 0)
        return start_reading(self.train_shard, self.prefetch)

    def train_batches(self, *, epoch: int, start_batch: int, batch_size: int, rank: int, world_size: int,
                      pin_memory: bool = False) -> Iterable[Any]:
        if (rank, world_size) != (self.rank, self.world_size):
            raise RuntimeError(f"Ray shard is for rank {self.rank}/{self.world_size}, asked for {rank}/{world_size}")
        if self._stream is None or (epoch, start_batch) < self._position:
            self._stream = self._open_stream()
        return self._epoch(epoch, start_batch)

    def _epoch(self, epoch: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        # The stream spans all epochs: skip to (epoch, start_batch), e.g. after a restart.
        nb = self.inner.num_train_batches(self.inner.config.training.batch_size, self.world_size)
        for data, (e, b, r, count) in self._stream:
            self._position = (e, b + 1) if b + 1 < nb else (e + 1, 0)
            if (e, b) < (epoch, start_batch):
                continue
            if (e, r) != (epoch, self.rank) or b < start_batch:
                raise RuntimeError(f"Ray Data shard out of order: rank {self.rank} expected epoch {epoch} "
                                   f"batch >= {start_batch}, got epoch {e} batch {b} of rank {r}")
            if not count:  # the padding after the last batch the stream was sized for
                break
            yield data
            if b + 1 >= nb:
                return
        # Past the end mid-epoch: an empty batch would train on NaN, a finished stream would pass
        # for the epoch's end.
        raise TrainingError(
            f"Ray Data's training stream ran out before epoch {epoch}'s end (rank {self.rank}, from batch "
            f"{start_batch}): it was sized from the run's start (epochs, cut by training.max_steps), as for a "
            f"new run, but this one goes on from a checkpoint at another global batch (workers x batch_size); "
            f"use checkpoint.resume=auto (which sizes it for every epoch) or the earlier batch size")

    def val_batches(self, *, batch_size: int, rank: int, world_size: int,
                    pin_memory: bool = False) -> Iterable[Any]:
        for data, (_, _, r, count) in read_slots(self.val_shard, self.prefetch):
            if r != self.rank:
                raise RuntimeError(f"Ray Data val shard out of order: rank {self.rank} got a slot of rank {r}")
            if count:  # empty tail slots carry no samples
                yield data
