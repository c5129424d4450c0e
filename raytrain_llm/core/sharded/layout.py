"""The layout of a sharded checkpoint folder, and the check that all of it is there.

`step-NNNNNNNN/` holds what a full checkpoint holds (`meta.json`, `config.yaml`, `state.pt`),
except that `state.pt` has `"model": None, "optimizer": None, "format": "sharded"`, and the model
and optimizer state live in `sharded/`: one `torch.distributed.checkpoint` folder written by all
ranks together (`__<rank>_0.distcp` per rank, `.metadata` from rank 0), keyed `model.<fqn>` and
`optimizer.state.<fqn>.<name>` / `optimizer.param_groups`, FQNs without `_orig_mod.`/`module.`.
"""
from __future__ import annotations

import os

from raytrain_llm.core.sharded import SHARDED_DIR, SHARDED_FORMAT, is_sharded
from raytrain_llm.core.sharded.io import storage_reader

__all__ = ["FORMAT_KEY", "PATH_KEY", "SHARDED_DIR", "SHARDED_FORMAT", "is_sharded", "shard_problem"]

FORMAT_KEY = "format"  # state.pt's key saying SHARDED_FORMAT
PATH_KEY = "sharded_path"  # set by CheckpointManager.load on a sharded state: its DCP folder, not saved


def shard_problem(folder: str) -> str:
    """Why the DCP folder `folder` cannot be loaded ("" if it looks whole): its metadata unreadable,
    or a shard file it names missing or shorter than the data it points into."""
    try:
        metadata = storage_reader(folder).read_metadata()
    except Exception as exc:  # a missing, truncated or refused .metadata
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"its shard metadata cannot be read ({first[:200]})"
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"shard file {name} is missing"
        if os.path.getsize(path) < end:
            return f"shard file {name} is truncated"
    return ""
