"""Checkpoints stored once under Ray: the engine's own folder, reported to Ray Train by a pointer.

With Ray's storage in the run's own folder (the default `<logging.dir>/ray`, a local or shared
file system), Ray gets no copy of a checkpoint: rank 0 writes a pointer folder (one small JSON
file naming the engine's `checkpoints/step-N`) inside Ray's run folder and reports it with
`CheckpointUploadMode.NO_UPLOAD` (Ray accepts only folders inside its run folder without
copying them). Ray keeps and prunes the pointers by `checkpoint_score` as it would the copies;
the engine keeps and prunes the checkpoints themselves (`checkpoint.keep_last/keep_best`). On a
restart `ray.train.get_checkpoint()` returns the latest pointer and the worker loads the
checkpoint it names (`resolve`).

A storage elsewhere (`s3://...`, or a `distributed.storage_path` outside `logging.dir`) is where
every node can read a checkpoint, so there Ray uploads its own copy, as Ray Train does by default.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from raytrain_llm.core.atomic_io import atomic_write_json
from raytrain_llm.core.config import Config

POINTER_FILE = "raytrain_checkpoint.json"


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def stores_in_place(config: Config) -> bool:
    """Whether checkpoints are reported by pointer: Ray's storage and the checkpoints are both
    in the run's folder (paths resolved as `resolve_paths` does)."""
    d = config.distributed
    return ("://" not in d.storage_path and config.checkpoint.enabled
            and _inside(d.storage_path, config.logging.dir) and _inside(config.checkpoint_dir, config.logging.dir))


def report_arguments(path: Optional[str], in_place: bool) -> dict[str, Any]:
    """`ray.train.report`'s checkpoint arguments for the engine checkpoint at `path` (None: this
    rank reports none). In Ray's run folder, so on the Train worker only."""
    import ray.train

    if path is None:
        return {"checkpoint": None}
    if not in_place:
        return {"checkpoint": ray.train.Checkpoint.from_directory(path)}
    run_folder = ray.train.get_context().get_storage().experiment_fs_path
    # A unique name: the same step may be saved (and reported) twice, e.g. at an epoch's end and
    # after its validation; Ray deleting the older pointer must not take the newer one.
    pointer = os.path.join(run_folder, f"checkpoint_{os.path.basename(path)}_{time.time_ns()}")
    os.makedirs(pointer, exist_ok=True)
    atomic_write_json(os.path.join(pointer, POINTER_FILE), {"checkpoint": os.path.abspath(path)})
    return {"checkpoint": ray.train.Checkpoint.from_directory(pointer),
            "checkpoint_upload_mode": ray.train.CheckpointUploadMode.NO_UPLOAD}


def resolve(path: Optional[str]) -> Optional[str]:
    """The engine checkpoint a Ray checkpoint folder stands for: the folder a pointer names, or
    the folder itself (Ray's own copy)."""
    if not path or "://" in path:
        return path
    try:
        with open(os.path.join(path, POINTER_FILE), encoding="utf-8") as fh:
            return json.load(fh)["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return path
