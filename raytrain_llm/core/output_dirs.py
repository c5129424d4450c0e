"""The folders a run writes (`logging.dir`, `checkpoint.dir`), checked before the first step.

Found only at the first save, an unwritable folder ends a run after an epoch of training with a
PermissionError. Checked by doing what the run will do: create the folder and a file in it
(permission bits alone say nothing for root, a read-only mount or a path under a file).
"""
from __future__ import annotations

import os
import tempfile
import uuid

from raytrain_llm.core.errors import UsageError


def check_writable(path: str, key: str) -> None:
    """Create `path` if needed and write and remove a file in it; a UsageError naming `key` if not."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=f".write-check-{uuid.uuid4().hex[:8]}-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) else path
        raise UsageError(f"{key}: cannot write to {path} ({exc.strerror or exc}"
                         + (f": {where}" if where != path else "") + ")") from None


def check_output_dirs(config, *, writes_checkpoints: bool = True) -> None:
    """logging.dir, and checkpoint.dir when checkpoints are on and this process writes them."""
    check_writable(config.logging.dir, "logging.dir")
    if writes_checkpoints and config.checkpoint.enabled:
        check_writable(config.checkpoint_dir, "checkpoint.dir" if config.checkpoint.dir else "logging.dir")
