"""`consolidate`: the full tensors of one top-level key of a DCP checkpoint, on one process.

The target dict is built from the metadata (every saved key under `<prefix>.`, full size and
saved dtype) and filled by `load_sharded(no_dist=True)`, which reads each saved shard into its
slice: no process group and no model are needed, and the world size of the save does not matter.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from raytrain_llm.core.errors import CheckpointError
from raytrain_llm.core.sharded.safe_reader import load_sharded, read_dcp_metadata


def consolidate(sharded_dir: str, prefix: str = "model") -> dict[str, Any]:
    """{name: full CPU tensor} for every key `<prefix>.<name>` of the DCP folder `sharded_dir`,
    in the dtype it was saved in; a non-tensor value saved under the prefix (a module's extra
    state) is loaded weights-only alongside. Reads only through SafeFileSystemReader.
    CheckpointError when the folder is unreadable, holds nothing under the prefix, or its
    shards do not cover a tensor."""
    sharded_dir = os.fspath(sharded_dir)
    metadata = read_dcp_metadata(sharded_dir)
    lead = prefix + "."
    target: dict[str, Any] = {}
    for key, item in metadata.state_dict_metadata.items():
        if not key.startswith(lead):
            continue
        if isinstance(item, TensorStorageMetadata):
            _check_covered(key, item, sharded_dir)
            target[key[len(lead):]] = torch.empty(item.size, dtype=item.properties.dtype)
        else:
            target[key[len(lead):]] = None  # a byte item: the load replaces it
    if not target:
        raise CheckpointError(f"checkpoint {sharded_dir} holds nothing under {prefix!r}")
    loaded = {prefix: target}
    load_sharded(loaded, sharded_dir, no_dist=True)
    return loaded[prefix]


def _check_covered(key: str, item: TensorStorageMetadata, where: str) -> None:
    """DCP writes each element once (replicas are deduplicated), so the saved chunks of a
    complete tensor add up to all of it; fewer elements would leave torch.empty's garbage."""
    saved = sum(math.prod(chunk.sizes) for chunk in item.chunks)
    if saved < math.prod(item.size):
        raise CheckpointError(f"checkpoint {where}: {key} has {saved} of its {math.prod(item.size)} elements "
                              "saved: its shards do not cover it")
