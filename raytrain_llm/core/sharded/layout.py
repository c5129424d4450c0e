"""The layout of a sharded checkpoint folder, and the check that all of it is there.

`step-NNNNNNNN/` holds what a full checkpoint holds (`meta.json`, `config.yaml`, `state.pt`),
except that `state.pt` has `"model": None, "optimizer": None, "format": "sharded"`, and the model
and optimizer state live in `sharded/`: one `torch.distributed.checkpoint` folder written by all
ranks together (`__<rank>_0.distcp` per rank, `.metadata` from rank 0), keyed `model.<fqn>` and
`optimizer.state.<fqn>.<name>` / `optimizer.param_groups`, FQNs without `_orig_mod.`/`module.`.
"""
from __future__ import annotations

import os

from raytrain_llm.core.errors import CheckpointError
from raytrain_llm.core.sharded import SHARDED_DIR, SHARDED_FORMAT, is_sharded
from raytrain_llm.core.sharded.io import storage_reader

__all__ = ["FORMAT_KEY", "PATH_KEY", "SHARDED_DIR", "SHARDED_FORMAT", "check_shards", "is_sharded"]

FORMAT_KEY = "format"  # state.pt's key saying SHARDED_FORMAT
PATH_KEY = "sharded_path"  # set by CheckpointManager.load on a sharded state: its DCP folder, not saved


def check_shards(folder: str) -> None:
    """CheckpointError (one line) when the DCP folder `folder` cannot be loaded: its metadata
    missing, unreadable or refused (the safe reader's own message), or a shard file it names
    missing or shorter than the data it points into."""
    metadata = storage_reader(folder).read_metadata()
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or os.path.getsize(path) < end:
            what = "missing" if not os.path.isfile(path) else "truncated"
            raise CheckpointError(f"checkpoint {os.path.dirname(folder)} is corrupt or unreadable: "
                                  f"its shard file {name} is {what}")
