"""Text <-> token ids with what the model was trained on.

A run on prepared data has `tokenizer.json` (Hugging Face `tokenizers`) in each checkpoint folder
and in its logging.dir; the prepared directory's manifest.json names the end-of-document token
(`eod_token`, `eod_id`). Without a tokenizer: byte-level token files (vocab 256, as
examples/prepare_bytes.py writes) are UTF-8 bytes; anything else (synthetic data) is token ids
written as whitespace-separated integers.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from raytrain_llm.core.config import Config
from raytrain_llm.core.errors import UsageError

TOKENIZER_FILE = "tokenizer.json"
EOD_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>")


class TokenIdCodec:
    kind = "token ids"

    def __init__(self, vocab_size: int):
        self.vocab_size, self.eod_id = vocab_size, None

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(t) for t in text.split()]
        except ValueError:
            raise UsageError("this model has no tokenizer (synthetic data): a prompt is token ids separated "
                             f"by spaces, e.g. '1 2 3' (got {text[:40]!r})") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UsageError(f"prompt token id {bad[0]} is outside the model's vocabulary (0..{self.vocab_size - 1})")
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


class ByteCodec:
    kind = "bytes"
    eod_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    @staticmethod
    def as_tokenizer():
        """The same encoding as a `tokenizers` Tokenizer (for export): byte-level BPE with the 256
        single bytes as its vocabulary, id = byte value, and no merges."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        # ByteLevel maps each byte to a printable stand-in (GPT-2's table); the vocabulary maps it back.
        tok = Tokenizer(models.BPE(vocab={_BYTE_TO_UNICODE[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which the ByteLevel pre-tokenizer applies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_UNICODE = _bytes_to_unicode()


class TokenizerCodec:
    """A Hugging Face `tokenizers` tokenizer; a prompt it cannot represent is refused by name
    (an unknown-token id, or characters that no token covers), never silently changed."""

    kind = "tokenizer"

    def __init__(self, path: str, eod_id: Optional[int]):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # noqa: BLE001 - the Rust library raises its own exception type
            raise UsageError(f"{path} is not a tokenizers JSON file ({str(exc).splitlines()[0][:200]})") from None
        self.path = path
        self.eod_id = eod_id if eod_id is not None else self._eod_from_vocab()
        unk = json.loads(self.tokenizer.to_str()).get("model", {}).get("unk_token")
        self.unk_id = self.tokenizer.token_to_id(unk) if isinstance(unk, str) else None

    def _eod_from_vocab(self) -> Optional[int]:
        for name in EOD_NAMES:
            i = self.tokenizer.token_to_id(name)
            if i is not None:
                return i
        return None

    def encode(self, text: str) -> list[int]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        unk = self.unk_id
        covered = [False] * len(text)
        for i, (start, end) in zip(enc.ids, enc.offsets):
            if unk is not None and i == unk:
                raise UsageError(f"the prompt's {text[start:end]!r} (character {start}) is not in the model's "
                                 "tokenizer vocabulary (it has no byte fallback)")
            covered[start:end] = [True] * (end - start)
        missing = next((j for j, c in enumerate(text) if not covered[j] and not c.isspace()), None)
        if missing is not None:
            raise UsageError(f"the prompt's character {text[missing]!r} (position {missing}) cannot be encoded by "
                             "the model's tokenizer (it has no byte fallback)")
        return enc.ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def find_tokenizer(checkpoint_dir: str, run_dir: Optional[str]) -> Optional[str]:
    """tokenizer.json next to the checkpoint, else in its run folder."""
    for folder in (checkpoint_dir, run_dir):
        if folder and os.path.isfile(os.path.join(folder, TOKENIZER_FILE)):
            return os.path.join(folder, TOKENIZER_FILE)
    return None


def manifest_eod_id(config: Config) -> Optional[int]:
    """`eod_id` from the prepared directory the run trained on, when it is still there."""
    for path in (config.data.train_tokens, config.data.val_tokens):
        try:
            with open(os.path.join(path, "manifest.json"), encoding="utf-8") as fh:
                value = json.load(fh).get("eod_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int):
            return value
    return None


def codec_for(config: Config, checkpoint_dir: str, run_dir: Optional[str]):
    """The model's codec: its tokenizer, else bytes for byte-level token files, else token ids."""
    path = find_tokenizer(checkpoint_dir, run_dir)
    if path is not None:
        return TokenizerCodec(path, manifest_eod_id(config))
    if config.model.vocab_size == 256 and config.data.train_tokens:
        return ByteCodec()
    return TokenIdCodec(config.model.vocab_size)
