"""One input file -> its documents' token ids, by split: the unit of parallel work.

`encode_file` runs in a local worker process or a Ray Data task alike. Its result is plain bytes
and integers (a `FileResult`): a local worker sends it to the driver, which appends it to the
shards; a Ray task appends it to its block's part files (parts.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raytrain_llm.data.tokenizer import TextTokenizer
from raytrain_llm.prepare.documents import is_validation, parse_documents

SPLITS = ("train", "val")


@dataclass
class EncodeSettings:
    """What every worker needs besides the file: picklable, small but for the tokenizer JSON."""

    fmt: str
    text_field: str
    seed: int
    val_fraction: float
    dtype: str
    tokenizer_json: str
    eod_token: str


@dataclass
class FileResult:
    index: int  # position of the file in the expanded inputs
    tokens: dict[str, bytes] = field(default_factory=dict)  # split -> token ids (dtype), documents back to back
    doc_lengths: dict[str, bytes] = field(default_factory=dict)  # split -> int64 tokens per document (with EOD)
    bad: dict[str, int] = field(default_factory=dict)
    documents: int = 0
    text_bytes: int = 0  # UTF-8 bytes of the good documents


_TOKENIZERS: dict[str, TextTokenizer] = {}


def tokenizer_for(settings: EncodeSettings) -> TextTokenizer:
    """Built once per process from the JSON (workers never read a file the driver wrote)."""
    key = settings.tokenizer_json
    if key not in _TOKENIZERS:
        from tokenizers import Tokenizer

        _TOKENIZERS.clear()
        _TOKENIZERS[key] = TextTokenizer(Tokenizer.from_str(key), settings.eod_token)
    return _TOKENIZERS[key]


def encode_file(index: int, path: str, key: str, data: bytes, settings: EncodeSettings) -> FileResult:
    """`key`: the file's name in the split hash (Source.key)."""
    docs, bad = parse_documents(data, settings.fmt, settings.text_field, path)
    tokenizer = tokenizer_for(settings)
    encoded = tokenizer.encode_documents([text for _, text in docs]) if docs else []
    result = FileResult(index, bad=dict(sorted(bad.items())), documents=len(docs),
                        text_bytes=sum(len(text.encode("utf-8")) for _, text in docs))
    for split in SPLITS:
        want_val = split == "val"
        chosen = [ids for (record, _), ids in zip(docs, encoded)
                  if is_validation(settings.seed, key, record, settings.val_fraction) == want_val]
        flat = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
        result.tokens[split] = flat.astype(settings.dtype).tobytes()
        result.doc_lengths[split] = np.array([len(c) for c in chosen], dtype=np.int64).tobytes()
    return result

