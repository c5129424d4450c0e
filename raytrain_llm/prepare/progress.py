"""What an interrupted preparation had finished: the files already written into its shards.

Saved in the temporary folder (`.progress.json`, atomically) whenever a shard is closed and at
least every SAVE_EVERY_S seconds, after the open shards are flushed to disk. A rerun of the same
command (same fingerprint) cuts the shards back to the recorded sizes and goes on with the next
file: the result is the same bytes as an uninterrupted run, because the shards are a pure
function of the files' results in input order.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from raytrain_llm.core.atomic_io import atomic_write_json

PROGRESS_FILE = ".progress.json"
SAVE_EVERY_S = 60.0


def load_progress(folder: str, fingerprint: str) -> Optional[dict[str, Any]]:
    try:
        with open(os.path.join(folder, PROGRESS_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return None
    return state if state.get("fingerprint") == fingerprint else None


def save_progress(folder: str, state: dict[str, Any]) -> None:
    atomic_write_json(os.path.join(folder, PROGRESS_FILE), state)
