"""`TextTokenizer`: a Hugging Face `tokenizers` tokenizer plus the end-of-document token.

Either a byte-level BPE trained on the corpus itself (GPT-2's byte alphabet: every string
encodes, and decoding gives back exactly the text that was encoded) or an existing
`tokenizer.json`. Nothing is downloaded. The special tokens in a document's text encode as
plain text (`encode_special_tokens`): a document that quotes "<|endoftext|>" cannot forge a
document boundary. The tokenizer's identity is the SHA-256 of its `tokenizer.json` bytes.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Iterator

import numpy as np

from raytrain_llm.core.errors import UsageError

DEFAULT_EOD = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
BYTE_ALPHABET = 256  # a byte-level BPE starts from one token per byte


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`; `eod_id` is appended after every encoded document."""

    def __init__(self, tokenizer, eod_token: str = DEFAULT_EOD, source: str = "the tokenizer"):
        eod_id = tokenizer.token_to_id(eod_token)
        if eod_id is None:
            raise UsageError(f"{source} has no end-of-document token {eod_token!r} (choose one with --eod-token)")
        tokenizer.encode_special_tokens = True
        self.tokenizer, self.eod_token, self.eod_id = tokenizer, eod_token, int(eod_id)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def dtype(self) -> str:
        return "uint16" if self.vocab_size <= 1 << 16 else "uint32"

    # --- construction ---
    @classmethod
    def load(cls, path: str, eod_token: str = DEFAULT_EOD) -> "TextTokenizer":
        """An existing tokenizer.json; a UsageError naming the file if it is not one."""
        from tokenizers import Tokenizer

        if not os.path.isfile(path):
            raise UsageError(f"tokenizer: no file at {path}")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # the Rust side raises a plain Exception for any parse error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"tokenizer: {path} is not a Hugging Face tokenizer.json ({first})") from None
        return cls(tokenizer, eod_token, source=path)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, eod_token: str = DEFAULT_EOD) -> "TextTokenizer":
        """A byte-level BPE of `vocab_size` tokens (256 bytes + merges + the special token)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        check_trainable_vocab(vocab_size)
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eod_token], min_frequency=2,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer, eod_token)

    def save(self, path: str) -> None:
        self.tokenizer.save(path, pretty=False)

    # --- use ---
    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """Each document's token ids followed by `eod_id` (int64 arrays)."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.append(np.asarray(e.ids, dtype=np.int64), self.eod_id) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=False)

    def split_documents(self, tokens: np.ndarray) -> Iterator[np.ndarray]:
        """The documents of a flat token stream (each without its trailing end-of-document id)."""
        ends = np.flatnonzero(np.asarray(tokens) == self.eod_id)
        start = 0
        for end in ends:
            yield tokens[start:end]
            start = end + 1


def check_trainable_vocab(vocab_size: int) -> None:
    if vocab_size < BYTE_ALPHABET + 1:
        raise UsageError(f"tokenizer: a byte-level BPE needs a vocabulary of at least {BYTE_ALPHABET + 1} tokens "
                         f"({BYTE_ALPHABET} bytes + the end-of-document token); got {vocab_size}")
