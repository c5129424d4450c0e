"""The one place a sharded checkpoint's DCP folder is opened for reading."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raytrain_llm.core.sharded.safe_reader import SafeFileSystemReader


def storage_reader(path: str) -> SafeFileSystemReader:
    """A reader of the DCP folder `path` (its `.metadata` and `*.distcp` shard files) that runs no
    code from them: only DCP's metadata classes are unpickled, byte items are loaded weights-only."""
    # Imported here: torch.distributed.checkpoint (with DTensor, ~0.7 s of CPU) only where a
    # sharded checkpoint is read, not in every process that imports the engine or checkpointing.
    from raytrain_llm.core.sharded.safe_reader import SafeFileSystemReader

    return SafeFileSystemReader(path)
