"""Runs for the inference tests: a tiny lm trained in-process on text through a BPE tokenizer
(trained here with `tokenizers`, saved as tokenizer.json in the run folder and every checkpoint
folder, as prepared-data runs have it), and a tiny MoE run on synthetic data."""
from __future__ import annotations

import glob
import shutil
from pathlib import Path

import numpy as np

from rt_testing import checkpoints, train

EOD = "<|endoftext|>"


def corpus_documents(limit_bytes: int = 60_000) -> list[str]:
    """Text that is on every machine: the Python standard library's own sources."""
    import json as json_module

    docs, size = [], 0
    for path in sorted(glob.glob(str(Path(json_module.__file__).parent / "*.py"))):
        text = Path(path).read_text(encoding="utf-8")
        docs.append(text)
        size += len(text)
        if size > limit_bytes:
            break
    return docs


def train_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_documents(), trainer)
    return tok


def text_run(folder: Path, **overrides) -> tuple[Path, object, dict]:
    """A run on BPE-tokenized text; returns (run folder, tokenizer, result)."""
    from raytrain_llm.data.token_file import write_tokens

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    eod = tok.token_to_id(EOD)
    ids = np.concatenate([np.array(tok.encode(d).ids + [eod]) for d in corpus_documents()])
    split = int(len(ids) * 0.9)
    write_tokens(str(folder / "train.bin"), ids[:split])
    write_tokens(str(folder / "val.bin"), ids[split:])
    run = folder / "run"
    settings = {"model.vocab_size": tok.get_vocab_size(), "model.seq_len": 32, "model.d_model": 32,
                "model.n_layers": 2, "model.n_heads": 4, "data.train_tokens": folder / "train.bin",
                "data.val_tokens": folder / "val.bin", "training.max_steps": 30, "training.val_every_n_steps": 15,
                "training.batch_size": 8, "training.lr": 3e-3, "checkpoint.every_n_steps": 15, **overrides}
    result, _ = train(run, task="lm", **settings)
    tok.save(str(run / "tokenizer.json"))
    for ckpt in checkpoints(run):
        shutil.copy(run / "tokenizer.json", ckpt / "tokenizer.json")
    return run, tok, result


def synthetic_moe_run(folder: Path, **overrides) -> tuple[Path, dict]:
    settings = {"model.vocab_size": 48, "model.seq_len": 32, "model.d_model": 32, "model.n_layers": 2,
                "model.n_heads": 4, "model.use_moe": True, "model.mlp_type": "swiglu", "training.max_steps": 8,
                "training.batch_size": 8, **overrides}
    result, _ = train(folder, task="lm", **settings)
    return folder, result
