"""Language-modelling data from token files: a flat array of token ids per split.

The layout nanoGPT's prepare scripts write (`train.bin`/`val.bin`: raw uint16), or a 1-D `.npy`.
Sample i is the window of seq_len + 1 tokens starting at i * seq_len (inputs and next-token
targets overlap by one), a pure function of i like every `IndexedDataset`: exact resume and
deterministic sharding hold as for the synthetic data. Files are read with positioned reads of
the windows a batch needs, never whole, and a dataset pickles as its path (Ray Data and
DataLoader workers open the file themselves). Not memory-mapped: a mapped file cut short while a
run reads it ends the process with SIGBUS and no message; a short read here is an error naming
the file. A file replaced by a rename is read on from the version that was opened.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from raytrain_llm.core.errors import TrainingError, UsageError
from raytrain_llm.data.base import DataModule, IndexedDataset


class TokenFile:
    """A token file's ids, read with pread: `tokens[a:b]` is a fresh array, `len(tokens)` the
    count when it was opened. The descriptor stays open, so a file replaced by a rename is read on
    from the opened version; one cut short is a TrainingError naming it (exit 1)."""

    def __init__(self, path: str, dtype: np.dtype, offset: int, length: int):
        self.path, self.dtype, self.offset, self.length = path, np.dtype(dtype), offset, length
        self.ndim = 1
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, span: slice) -> np.ndarray:
        start, stop, step = span.indices(self.length)
        if step != 1:
            raise ValueError("token files are read in contiguous spans")
        count = max(0, stop - start)
        nbytes = count * self.dtype.itemsize
        data = os.pread(self._fd, nbytes, self.offset + start * self.dtype.itemsize) if nbytes else b""
        if len(data) != nbytes:
            now = os.fstat(self._fd).st_size
            raise TrainingError(f"token file {self.path} changed while the run reads it: it is now {now} bytes, "
                                f"{self.offset + self.length * self.dtype.itemsize} when the run opened it (a "
                                "token file must not be rewritten in place during a run; write a new file and "
                                "rename it over the old one)")
        return np.frombuffer(data, dtype=self.dtype)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def _npy_layout(path: str) -> tuple[np.dtype, int, tuple]:
    """(dtype, data offset, shape) from a .npy header."""
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":  # else numpy blames pickled data and allow_pickle
            raise ValueError("it is not a .npy file (no NumPy header); raw token ids need a name "
                             "other than .npy, read as data.token_dtype")
    mapped = np.load(path, mmap_mode="r")  # for its header only: no page of the data is touched
    try:
        return mapped.dtype, int(getattr(mapped, "offset", 0)), mapped.shape
    finally:
        del mapped



def check_ids_in_vocab(tokens: Any, vocab_size: int, key: str, path: str, chunk: int = 1 << 24) -> None:
    """Every id of `tokens` (a 1-D array or TokenFile) is in [0, vocab_size): a UsageError naming
    `key`, `path` and the first position that is not. Read in chunks (a file may be larger than
    memory); skipped when the dtype cannot hold an id outside the vocabulary."""
    info = np.iinfo(tokens.dtype)
    if info.min >= 0 and info.max < vocab_size:
        return
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start:start + chunk])
        bad = np.flatnonzero((part >= vocab_size) | (part < 0))
        if len(bad):
            raise UsageError(f"{key}: token id {int(part[bad[0]])} at position {start + int(bad[0])} of "
                             f"{path} is outside model.vocab_size ({vocab_size})")

def open_tokens(path: str, dtype: str, key: str) -> TokenFile:
    """The file's token ids (read on demand); a UsageError naming `key` if unusable."""
    if not os.path.isfile(path):
        raise UsageError(f"{key}: no token file at {path}")
    try:
        if path.endswith(".npy"):
            file_dtype, offset, shape = _npy_layout(path)
        else:
            size, itemsize = os.path.getsize(path), np.dtype(dtype).itemsize
            if size % itemsize:
                raise ValueError(f"its size ({size} bytes) is not a multiple of {dtype}'s {itemsize} bytes "
                                 "(data.token_dtype)")
            file_dtype, offset, shape = np.dtype(dtype), 0, (size // itemsize,)
        if len(shape) == 1 and os.path.getsize(path) < offset + shape[0] * file_dtype.itemsize:
            raise ValueError(f"it is cut short: {os.path.getsize(path)} bytes, its header promises "
                             f"{offset + shape[0] * file_dtype.itemsize}")
    except (ValueError, OSError) as exc:
        raise UsageError(f"{key}: cannot read {path}: {exc}") from None
    if len(shape) != 1 or file_dtype.kind not in "iu":
        raise UsageError(f"{key}: {path} must hold a 1-D array of integer token ids "
                         f"(got {file_dtype} of shape {shape})")
    return TokenFile(path, file_dtype, offset, shape[0])


class TokenFileDataset(IndexedDataset):
    def __init__(self, path: str, dtype: str, seq_len: int, vocab_size: int, key: str, *, empty: bool = False):
        self.path, self.dtype, self.seq_len, self.vocab_size, self.key = path, dtype, seq_len, vocab_size, key
        self._tokens: Optional[TokenFile] = None
        num_tokens = len(self.tokens)
        if num_tokens < seq_len + 1:
            raise UsageError(f"{key}: {path} holds {num_tokens} tokens, fewer than one sample of "
                             f"model.seq_len + 1 = {seq_len + 1}")
        super().__init__(0 if empty else (num_tokens - 1) // seq_len, seed=0)

    @property
    def tokens(self) -> TokenFile:
        if self._tokens is None:
            self._tokens = open_tokens(self.path, self.dtype, self.key)
        return self._tokens

    def __getstate__(self) -> dict:
        # The reader holds a descriptor of this process: a copy opens the file by its path.
        return {**self.__dict__, "_tokens": None}

    def check_ids(self, chunk: int = 1 << 24) -> None:
        """Every token id of the file is inside the vocabulary (`check_ids_in_vocab`)."""
        if self.num_samples:  # (an empty split is the training file itself: checked as that)
            check_ids_in_vocab(self.tokens, self.vocab_size, self.key, self.path, chunk)

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        T = self.seq_len
        windows = np.stack([self.tokens[i * T:i * T + T + 1] for i in ids]) if len(ids) else \
            np.zeros((0, T + 1), np.int64)
        windows = windows.astype(np.int64)  # [B, T + 1]
        low, high = (int(windows.min()), int(windows.max())) if windows.size else (0, 0)
        if high >= self.vocab_size or low < 0:  # a safety net for data.check_token_ids=false
            bad = high if high >= self.vocab_size else low
            raise UsageError(f"{self.key}: token id {bad} in {self.path} is outside model.vocab_size "
                             f"({self.vocab_size})")
        return {"input_ids": np.ascontiguousarray(windows[:, :-1]), "targets": np.ascontiguousarray(windows[:, 1:])}


class TokenFileDataModule(DataModule):
    """`data.train_tokens` / `data.val_tokens`; the synthetic sample counts do not apply."""

    shuffle_train = True

    def _dataset(self, key: str, path: str, empty: bool = False) -> TokenFileDataset:
        d, m = self.config.data, self.config.model
        return TokenFileDataset(path, d.token_dtype, m.seq_len, m.vocab_size, key, empty=empty)

    def build_train_dataset(self) -> IndexedDataset:
        return self._dataset("data.train_tokens", self.config.data.train_tokens)

    def build_val_dataset(self) -> IndexedDataset:
        d = self.config.data
        if not d.val_tokens:  # validation is off (the config insists): an empty split, train's row shapes
            return self._dataset("data.train_tokens", d.train_tokens, empty=True)
        return self._dataset("data.val_tokens", d.val_tokens)

    def check_data(self) -> None:
        # Up front: found only when a batch reaches it, a bad id would end a run hours in (and
        # under Ray inside a Ray Data task, as a worker failure rather than a usage error).
        if not self.config.data.check_token_ids:
            return
        self.train_dataset.check_ids()
        self.val_dataset.check_ids()


def write_tokens(path: str, tokens: np.ndarray, dtype: str = "uint16") -> None:
    """A raw token file in the layout `TokenFileDataset` reads (tokens must fit `dtype`)."""
    tokens = np.asarray(tokens)
    info = np.iinfo(dtype)
    if tokens.size and (tokens.min() < info.min or tokens.max() > info.max):
        raise ValueError(f"token ids {tokens.min()}..{tokens.max()} do not fit {dtype}")
    tokens.astype(dtype).tofile(path)

