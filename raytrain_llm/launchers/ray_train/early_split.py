"""The training dataset's split made in the driver, so that Ray Data starts with the worker group.

Train makes each dataset's `streaming_split` when rank 0 first asks for its shard, in the
training function: only then does Ray start the split coordinator (an actor: a process that
imports Ray Data, ~3 s of CPU) and, at the first read, the generating tasks. Made by the driver
when it builds the trainer, the coordinator starts while Train starts its controller and
workers, and the first batch is ready seconds sooner.

The split is the one Train makes (`DataConfig.configure`: a copy of the dataset with the
trainer's execution options, `streaming_split(world_size, equal=True)`), without locality
hints (Train gives the workers' node ids; they are not known yet, and without hints the
assignment of blocks to shards is the plain rule data_shards relies on). It serves the first
worker group only: a restarted group gets a new split from Train, as without this module
(a coordinator whose consumers died may hold a half-passed epoch barrier). Which group is first
is decided once per run in Ray's internal key-value store, visible from every node.
"""
from __future__ import annotations

import uuid
from typing import Any

from ray.train import DataConfig

KV_NAMESPACE = "raytrain_early_split"


class EarlySplitDataConfig(DataConfig):
    """A DataConfig whose datasets named in `early` were split in the driver (see the module)."""

    def __init__(self, early: dict[str, Any], world_size: int, **kwargs):
        super().__init__(**kwargs)
        self._early, self._world_size, self._claim = {}, world_size, uuid.uuid4().hex
        for name, ds in early.items():
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            self._early[name] = ds.streaming_split(world_size, equal=True)

    def configure(self, datasets: dict[str, Any], world_size: int, worker_handles, worker_node_ids,
                  **kwargs) -> list[dict[str, Any]]:
        early = {name: self._early[name] for name in datasets if name in self._early}
        if not early or world_size != self._world_size or not self._first_use(early):
            return super().configure(datasets, world_size, worker_handles, worker_node_ids, **kwargs)
        rest = {name: ds for name, ds in datasets.items() if name not in early}
        output = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs) if rest \
            else [{} for _ in range(world_size)]
        for name, splits in early.items():
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output

    def _first_use(self, early: dict[str, Any]) -> bool:
        """True for the first configure of these datasets in this run (the first worker group)."""
        from ray.experimental.internal_kv import _internal_kv_put

        key = f"{self._claim}:{','.join(sorted(early))}"
        return not _internal_kv_put(key, b"1", overwrite=False, namespace=KV_NAMESPACE)
