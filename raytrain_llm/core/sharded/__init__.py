"""Sharded checkpoints written by torch.distributed.checkpoint (DCP), read without running code
from them.

A sharded checkpoint folder `step-NNNNNNNN/` holds meta.json, state.pt (the usual checkpoint
dict with "model" and "optimizer" set to None and "format": "sharded") and the DCP folder
`sharded/`, saved from {"model": model_sd, "optimizer": optim_sd}: its keys read
`model.<parameter name>` and `optimizer.state...`/`optimizer.param_groups...`.

- `safe_reader.SafeFileSystemReader`: the DCP storage reader to load any of it with.
- `safe_reader.load_sharded`: `dcp.load` through that reader, failures as one CheckpointError.
- `consolidate.consolidate`: one top-level key's full tensors on one process.
"""
from __future__ import annotations

SHARDED_DIR = "sharded"  # the DCP folder inside a checkpoint folder
SHARDED_FORMAT = "sharded"  # state.pt's "format" for a checkpoint whose tensors are in SHARDED_DIR


def is_sharded(state: dict) -> bool:
    """Whether a loaded state.pt dict keeps its model and optimizer in SHARDED_DIR."""
    return state.get("format") == SHARDED_FORMAT
