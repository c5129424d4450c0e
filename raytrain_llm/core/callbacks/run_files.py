"""`CopyRunFiles`: files a run carries next to its logs and inside every checkpoint.

E.g. the tokenizer of prepared text data: sampling and export read `tokenizer.json` from the
checkpoint folder, so a checkpoint decodes with exactly the tokenizer its model was trained with.
The copy into a checkpoint happens inside the checkpoint writer's temporary folder, before the
rename that publishes it (`CheckpointManager.extra_files`): a checkpoint never appears without them,
and Ray's report of the folder already includes them.
"""
from __future__ import annotations

import os
import shutil

from raytrain_llm.core.atomic_io import fsync_dir
from raytrain_llm.core.callbacks.base import Callback


def copy_file_atomically(src: str, dst: str) -> None:
    tmp = f"{dst}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CopyRunFiles(Callback):
    """`files`: name in the run folder -> source path. Rank 0 copies them into logging.dir when
    training starts and hands them to the checkpoint writer for every checkpoint."""

    def __init__(self, files: dict[str, str]):
        self.files = {name: os.path.abspath(src) for name, src in files.items()}

    def on_train_start(self, engine) -> None:
        if engine.checkpoint_manager is not None:
            engine.checkpoint_manager.extra_files.update(self.files)
        if not engine.dist.is_main:
            return
        log_dir = engine.config.logging.dir
        os.makedirs(log_dir, exist_ok=True)
        for name, src in self.files.items():
            copy_file_atomically(src, os.path.join(log_dir, name))
        fsync_dir(log_dir)
