"""The one place a sharded checkpoint's DCP folder is opened for reading."""
from __future__ import annotations

from torch.distributed.checkpoint import FileSystemReader


def storage_reader(path: str) -> FileSystemReader:
    """A reader of the DCP folder `path` (its `.metadata` and `*.distcp` shard files)."""
    return FileSystemReader(path)
