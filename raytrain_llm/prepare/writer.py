"""Token shards of whole documents, and the manifest that describes them.

A split's documents go to `<split>-NNNNN.bin` (raw token ids of the manifest's dtype) in input
order; a shard is closed before a document that would take it past `shard_tokens` (a document
longer than that gets a shard of its own), so every shard holds whole documents, each followed
by the end-of-document id.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from raytrain_llm.core.atomic_io import fsync_dir


def opens_shard(open_tokens: Optional[int], n: int, shard_tokens: int) -> bool:
    """Whether a document of `n` tokens starts a new shard, after one holding `open_tokens`
    (None: no shard open yet). The one rule of the layout, shared by every writer."""
    return open_tokens is None or open_tokens + n > shard_tokens


def split_summary(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """A split's manifest entry: its shards ({file, tokens, documents} each) and their totals."""
    return {"shards": shards, "tokens": sum(s["tokens"] for s in shards),
            "documents": sum(s["documents"] for s in shards)}


class ShardWriter:
    def __init__(self, folder: str, split: str, shard_tokens: int, itemsize: int):
        self.folder, self.split, self.shard_tokens, self.itemsize = folder, split, shard_tokens, itemsize
        self.shards: list[dict[str, Any]] = []
        self._fh = None
        self._tokens = self._documents = 0
        self.closed_shards = 0  # shards closed so far (the driver saves progress when it grows)

    def state(self) -> dict[str, Any]:
        """Flushed to disk: what a rerun restores (see progress.py)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        done = self.shards if self._fh is None else self.shards[:-1]
        return {"shards": [dict(s) for s in done], "open": self._fh is not None, "tokens": self._tokens,
                "documents": self._documents}

    def restore(self, state: dict[str, Any]) -> None:
        """Back to `state`: an open shard cut to its recorded length and reopened for appending."""
        self.shards = [dict(s) for s in state["shards"]]
        if state["open"]:
            name = f"{self.split}-{len(self.shards):05d}.bin"
            path = os.path.join(self.folder, name)
            with open(path, "r+b") as fh:
                fh.truncate(state["tokens"] * self.itemsize)
            self.shards.append({"file": name, "tokens": 0, "documents": 0})
            self._fh = open(path, "ab")  # noqa: SIM115 (closed by _close)
            self._tokens, self._documents = state["tokens"], state["documents"]
        keep = {s["file"] for s in self.shards}
        for name in os.listdir(self.folder):  # shards begun after the saved state
            if name.startswith(f"{self.split}-") and name.endswith(".bin") and name not in keep:
                os.unlink(os.path.join(self.folder, name))

    def add(self, tokens: bytes, lengths: np.ndarray) -> None:
        """Documents of one file: `tokens` back to back, `lengths[i]` tokens each."""
        at = 0
        for n in lengths.tolist():
            if opens_shard(self._tokens if self._fh is not None else None, n, self.shard_tokens):
                if self._fh is not None:
                    self._close()
                self._open()
            self._fh.write(tokens[at * self.itemsize:(at + n) * self.itemsize])
            self._tokens += n
            self._documents += 1
            at += n

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "tokens": 0, "documents": 0})
        self._fh = open(os.path.join(self.folder, name), "wb")
        self._tokens = self._documents = 0

    def _close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        self.closed_shards += 1
        self.shards[-1].update(tokens=self._tokens, documents=self._documents)

    def finish(self) -> dict[str, Any]:
        if self._fh is not None:
            self._close()
        fsync_dir(self.folder)
        return split_summary(self.shards)
