"""The one place a sharded checkpoint's DCP folder is opened for reading."""
from __future__ import annotations

from raytrain_llm.core.sharded.safe_reader import SafeFileSystemReader


def storage_reader(path: str) -> SafeFileSystemReader:
    """A reader of the DCP folder `path` (its `.metadata` and `*.distcp` shard files) that runs no
    code from them: only DCP's metadata classes are unpickled, byte items are loaded weights-only."""
    return SafeFileSystemReader(path)
