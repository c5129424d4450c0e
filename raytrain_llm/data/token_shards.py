"""Token data in several files: a prepared directory (`manifest.json` + shards) or a list/glob of shards.

`data.train_tokens` / `data.val_tokens` name one of:
- a prepared directory (`python -m raytrain_llm.prepare`): its manifest gives the shards of the
  split (`train` for data.train_tokens, `val` for data.val_tokens), their dtype and the vocabulary;
- a glob (`data/shards/train-*.bin`) or a comma-separated list of token files, read in the order
  given (a glob's matches sorted by name), each of data.token_dtype (or a .npy);
- one token file, as before (token_file.py).

A split's shards are read as one stream, their concatenation in order: sample i is the window of
seq_len + 1 tokens at i * seq_len of that stream, crossing shard boundaries where it falls, so a
split behaves exactly as the single file holding the same tokens would (same samples, same order
from the seed, same resume position). Each shard is opened lazily and read with pread (token_file.py);
the dataset pickles as its paths.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from raytrain_llm.core.errors import UsageError
from raytrain_llm.data.base import IndexedDataset
from raytrain_llm.data.token_file import TokenFileDataModule, check_ids_in_vocab, open_tokens
from raytrain_llm.data.tokenizer import TOKENIZER_FILE

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
SPLIT_OF_KEY = {"data.train_tokens": "train", "data.val_tokens": "val"}


def is_prepared_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_FILE))


def read_manifest(folder: str, key: str = "data") -> dict[str, Any]:
    path = os.path.join(folder, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{key}: cannot read {path}: {exc}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise UsageError(f"{key}: {path} has format_version {version!r}; this version reads {FORMAT_VERSION}")
    return manifest


@dataclass
class TokenSource:
    """What a data.*_tokens value names: shard paths in stream order, their dtype, and the
    manifest (None for plain files)."""

    paths: list[str]
    dtype: str
    manifest: Optional[dict[str, Any]] = None
    folder: str = ""
    token_counts: list[int] = field(default_factory=list)  # from the manifest; empty for plain files

    @property
    def tokenizer_path(self) -> Optional[str]:
        path = os.path.join(self.folder, TOKENIZER_FILE) if self.manifest is not None else ""
        return path if path and os.path.isfile(path) else None

    @property
    def vocab_size(self) -> Optional[int]:
        return int(self.manifest["vocab_size"]) if self.manifest is not None else None


def resolve_source(spec: str, key: str, dtype: str) -> TokenSource:
    """The shards `spec` names (see the module docstring); a UsageError naming `key` when none."""
    spec = spec.strip()
    if os.path.isdir(spec):
        if not is_prepared_dir(spec):
            raise UsageError(f"{key}: {spec} is a folder without {MANIFEST_FILE} (not made by "
                             "python -m raytrain_llm.prepare); name its token files with a glob instead")
        manifest = read_manifest(spec, key)
        split = SPLIT_OF_KEY.get(key, "train")
        shards = manifest.get("splits", {}).get(split, {}).get("shards", [])
        if not shards:
            raise UsageError(f"{key}: the prepared data in {spec} has no {split} shards"
                             + (f" (val_fraction {manifest.get('val_fraction')} of {manifest.get('documents')} "
                                "documents chose none: prepare again with a larger --val-fraction, or set "
                                "training.validate=false)" if split == "val" else ""))
        return TokenSource([os.path.join(spec, s["file"]) for s in shards], manifest["dtype"], manifest,
                           folder=spec, token_counts=[int(s["tokens"]) for s in shards])
    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if glob.has_magic(part):
            matches = sorted(glob.glob(part))
            if not matches:
                raise UsageError(f"{key}: no token file matches {part}")
            paths += matches
        else:
            paths.append(part)
    if not paths:
        raise UsageError(f"{key}: names no token file")
    return TokenSource(paths, dtype)


class ShardedTokenDataset(IndexedDataset):
    """The token stream of several shards; sample i is its window [i*T, i*T + T + 1)."""

    def __init__(self, source: TokenSource, seq_len: int, vocab_size: int, key: str, *, empty: bool = False):
        self.paths, self.dtype, self.seq_len, self.vocab_size, self.key = source.paths, source.dtype, seq_len, \
            vocab_size, key
        self._maps: Optional[list[np.ndarray]] = None
        lengths = [len(m) for m in self.maps]
        for path, have, want in zip(self.paths, lengths, source.token_counts):
            if have != want:
                raise UsageError(f"{key}: {path} holds {have} tokens but the manifest says {want} "
                                 "(a shard changed after preparation)")
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # shard k is [starts[k], starts[k+1])
        num_tokens = int(self.starts[-1])
        if num_tokens < seq_len + 1:
            raise UsageError(f"{key}: {len(self.paths)} token files hold {num_tokens} tokens, fewer than one "
                             f"sample of model.seq_len + 1 = {seq_len + 1}")
        super().__init__(0 if empty else (num_tokens - 1) // seq_len, seed=0)

    @property
    def maps(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [open_tokens(p, self.dtype, self.key) for p in self.paths]
        return self._maps

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}  # each process opens the shards by their paths

    def span(self, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of the stream, gathered across shards (int64)."""
        out = np.empty(hi - lo, dtype=np.int64)
        k = int(np.searchsorted(self.starts, lo, side="right")) - 1
        at = lo
        while at < hi:
            end = min(hi, int(self.starts[k + 1]))
            out[at - lo:end - lo] = self.maps[k][at - int(self.starts[k]):end - int(self.starts[k])]
            at, k = end, k + 1
        return out

    def check_ids(self, chunk: int = 1 << 24) -> None:
        """Every token id of every shard is inside the vocabulary."""
        if self.num_samples:
            for path, tokens in zip(self.paths, self.maps):
                check_ids_in_vocab(tokens, self.vocab_size, self.key, path, chunk)

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        T = self.seq_len
        windows = np.stack([self.span(int(i) * T, int(i) * T + T + 1) for i in ids]) if len(ids) else \
            np.zeros((0, T + 1), np.int64)  # [B, T + 1]
        if windows.size and (int(windows.max()) >= self.vocab_size or int(windows.min()) < 0):
            bad = int(windows.max()) if int(windows.max()) >= self.vocab_size else int(windows.min())
            raise UsageError(f"{self.key}: token id {bad} in {', '.join(self.paths[:3])} is outside "
                             f"model.vocab_size ({self.vocab_size})")
        return {"input_ids": np.ascontiguousarray(windows[:, :-1]), "targets": np.ascontiguousarray(windows[:, 1:])}


class ShardedTokenDataModule(TokenFileDataModule):
    """`data.train_tokens` / `data.val_tokens` as a prepared directory, a glob/list of shards or one
    file (the last read exactly as TokenFileDataModule does). With a prepared directory in
    data.train_tokens and no data.val_tokens, validation reads the directory's val split."""

    def _dataset(self, key: str, path: str, empty: bool = False):
        source = resolve_source(path, key, self.config.data.token_dtype)
        if source.manifest is None and len(source.paths) == 1:
            return super()._dataset(key, source.paths[0], empty=empty)
        m = self.config.model
        return ShardedTokenDataset(source, m.seq_len, m.vocab_size, key, empty=empty)

    def build_val_dataset(self) -> IndexedDataset:
        d = self.config.data
        if not d.val_tokens and d.train_tokens and is_prepared_dir(d.train_tokens.strip()) and \
                self.config.training.validate:
            return self._dataset("data.val_tokens", d.train_tokens)
        return super().build_val_dataset()

    def tokenizer_path(self) -> Optional[str]:
        """The prepared data's tokenizer.json, which a run copies next to its logs and checkpoints."""
        spec = self.config.data.train_tokens
        return resolve_source(spec, "data.train_tokens", "uint16").tokenizer_path if spec else None


def resolve_vocab_size(config) -> None:
    """model.vocab_size against a prepared directory's manifest: 0 takes the manifest's, any other
    value must equal it (a UsageError naming both). Plain token files leave it as set."""
    m, spec = config.model, config.data.train_tokens.strip()
    manifest = read_manifest(spec, "data.train_tokens") if spec and is_prepared_dir(spec) else None
    if manifest is None:
        if m.vocab_size == 0:
            raise UsageError("model.vocab_size: 0 (take it from the data) needs data.train_tokens to be a "
                             "prepared directory (python -m raytrain_llm.prepare)")
        return
    val = config.data.val_tokens.strip()
    if val and is_prepared_dir(val):
        other = read_manifest(val, "data.val_tokens")
        if other.get("tokenizer_sha256") != manifest.get("tokenizer_sha256"):
            raise UsageError(f"data.val_tokens: {val} was tokenized with another tokenizer than data.train_tokens "
                             f"{spec} (tokenizer_sha256 {str(other.get('tokenizer_sha256'))[:12]}… vs "
                             f"{str(manifest.get('tokenizer_sha256'))[:12]}…)")
    have = int(manifest["vocab_size"])
    if m.vocab_size == 0:
        m.vocab_size = have
    elif m.vocab_size != have:
        raise UsageError(f"model.vocab_size: {m.vocab_size} differs from the tokenizer's vocabulary size {have} "
                         f"in {os.path.join(spec, MANIFEST_FILE)} (set it to {have}, or 0 to take it from there)")
