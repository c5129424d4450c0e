"""Training on prepared text: sharded token data read as one stream, the vocabulary from the
manifest, the tokenizer carried into the run and its checkpoints, learning beyond unigram
statistics, and a resume across shard boundaries that is bit-identical."""
from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from prep_testing import prepare_args, split_tokens, stdlib_corpus
from raytrain_llm.core.errors import UsageError
from raytrain_llm.data.token_file import TokenFileDataset, write_tokens
from raytrain_llm.data.token_shards import ShardedTokenDataset, resolve_source
from raytrain_llm.prepare.__main__ import main
from rt_testing import checkpoints, ckpt_step, final_state, load_state, make_config, read_jsonl, train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    corpus = stdlib_corpus(root / "src")
    out = root / "data"
    assert main(prepare_args([corpus[0].parent / "*.py"], out, "--tokenizer", "train:512", "--val-fraction", "0.1",
                             "--shard-tokens", "20000")) == 0
    return out, json.loads((out / "manifest.json").read_text())


LM = {"model.vocab_size": 0, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4, "model.seq_len": 64,
      "training.batch_size": 16, "training.lr": 3e-3, "training.epochs": 10, "logging.log_every_n_steps": 10}


def test_shards_read_as_the_one_file_holding_their_tokens(tmp_path):
    tokens = (np.arange(1000) * 7 % 97).astype(np.int64)
    cuts = [0, 130, 131, 400, 1000]  # a 1-token shard: windows span three shards
    for k in range(4):
        write_tokens(str(tmp_path / f"s-{k}.bin"), tokens[cuts[k]:cuts[k + 1]])
    write_tokens(str(tmp_path / "all.bin"), tokens)
    whole = TokenFileDataset(str(tmp_path / "all.bin"), "uint16", 16, 100, "data.train_tokens")
    ids = np.arange(len(whole))[::-1].copy()
    for spec in (str(tmp_path / "s-*.bin"), ",".join(str(tmp_path / f"s-{k}.bin") for k in range(4))):
        source = resolve_source(spec, "data.train_tokens", "uint16")
        sharded = ShardedTokenDataset(source, 16, 100, "data.train_tokens")
        assert len(sharded) == len(whole) == 62
        for col in ("input_ids", "targets"):
            assert np.array_equal(sharded.rows(ids)[col], whole.rows(ids)[col])
        copy = pickle.loads(pickle.dumps(sharded))  # travels as paths, maps its files again
        assert len(pickle.dumps(sharded)) < 3000 and np.array_equal(copy.rows(ids)["targets"], whole.rows(ids)["targets"])
    with pytest.raises(UsageError, match=r"data.train_tokens: no token file matches .*nothing-\*.bin"):
        resolve_source(str(tmp_path / "nothing-*.bin"), "data.train_tokens", "uint16")
    write_tokens(str(tmp_path / "s-9.bin"), np.array([5, 120, 7]))
    bad = ShardedTokenDataset(resolve_source(str(tmp_path / "s-*.bin"), "data.train_tokens", "uint16"), 16, 100,
                              "data.train_tokens")
    with pytest.raises(UsageError, match=r"token id 120 at position 1 of .*s-9.bin is outside model.vocab_size \(100\)"):
        bad.check_ids()


def test_vocab_size_comes_from_the_manifest_or_must_match_it(prepared, tmp_path):
    out, manifest = prepared
    from raytrain_llm.tasks.lm_task import LanguageModelingTask

    cfg = make_config(tmp_path, "lm", **{**LM, "data.train_tokens": str(out)})
    LanguageModelingTask(cfg)
    assert cfg.model.vocab_size == manifest["vocab_size"] == 512
    cfg = make_config(tmp_path, "lm", **{**LM, "model.vocab_size": 500, "data.train_tokens": str(out)})
    with pytest.raises(UsageError, match=r"model.vocab_size: 500 differs from the tokenizer's vocabulary size 512"):
        LanguageModelingTask(cfg)
    # The lm task's own rule (core names no task): vocab_size 0 needs a prepared directory.
    with pytest.raises(UsageError, match=r"model.vocab_size: 0 \(take it from the data\) needs data.train_tokens"):
        LanguageModelingTask(make_config(tmp_path, "lm", **LM))
    other = tmp_path / "other"  # the same shards, as if made with another tokenizer
    other.mkdir()
    changed = dict(manifest, tokenizer_sha256="0" * 64)
    (other / "manifest.json").write_text(json.dumps(changed))
    cfg = make_config(tmp_path, "lm", **{**LM, "data.train_tokens": str(out), "data.val_tokens": str(other)})
    with pytest.raises(UsageError, match=r"data.val_tokens: .*other was tokenized with another tokenizer"):
        LanguageModelingTask(cfg)


def _unigram_entropy(tokens: np.ndarray) -> float:
    p = np.bincount(tokens) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_a_small_lm_learns_the_prepared_corpus_beyond_unigram_statistics(prepared, tmp_path):
    out, manifest = prepared
    run = tmp_path / "run"
    result, cfg = train(run, "lm", **{**LM, "data.train_tokens": str(out), "training.max_steps": 150,
                                      "training.val_every_n_steps": 75, "checkpoint.every_n_steps": 75})
    entropy = _unigram_entropy(split_tokens(out, "train", manifest))
    val = [r["val/loss"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "val"]
    # Measured 4.63 nats against a unigram entropy of 5.35 (vocabulary 512, stdlib sources).
    assert result["step"] == 150 and val[-1] < entropy - 0.5, (val, entropy)
    # The tokenizer travels with the run and with every checkpoint; the checkpoint's config holds
    # the vocabulary size the model was built with, not 0.
    want = manifest["tokenizer_sha256"]
    assert hashlib.sha256((run / "tokenizer.json").read_bytes()).hexdigest() == want
    assert [ckpt_step(c) for c in checkpoints(run)] == [75, 150]
    for ckpt in checkpoints(run):
        assert hashlib.sha256((ckpt / "tokenizer.json").read_bytes()).hexdigest() == want
        assert "vocab_size: 512" in (ckpt / "config.yaml").read_text()


def test_resume_across_shard_boundaries_is_bit_identical(prepared, tmp_path):
    out, manifest = prepared
    assert len(manifest["splits"]["train"]["shards"]) >= 5
    common = {**LM, "data.train_tokens": str(out), "training.lr_schedule": "constant", "training.max_steps": 40,
              "model.seq_len": 32, "training.batch_size": 8, "training.val_every_n_steps": 20,
              "training.limit_val_batches": 2}
    train(tmp_path / "ref", **common, task="lm")
    run = tmp_path / "split"
    train(run, "lm", **{**common, "training.max_steps": 23})
    assert ckpt_step(checkpoints(run)[-1]) == 23
    r2, _ = train(run, "lm", **{**common, "checkpoint.resume": "auto"})
    assert r2["step"] == 40
    ref, got = final_state(tmp_path / "ref")["model"], final_state(run)["model"]
    assert ref.keys() == got.keys() and all(np.array_equal(ref[k].numpy(), got[k].numpy()) for k in ref)
    assert load_state(checkpoints(run)[-1])["progress"]["epoch"] == 0


def test_two_ranks_at_batch_b_read_what_one_rank_reads_at_2b(prepared, tmp_path):
    out, _ = prepared
    from raytrain_llm.data.token_shards import ShardedTokenDataModule

    cfg = make_config(tmp_path, "lm", **{**LM, "data.train_tokens": str(out), "model.vocab_size": 512})
    module = ShardedTokenDataModule(cfg)
    one = list(module.train_batches(epoch=1, start_batch=2, batch_size=8, rank=0, world_size=1))
    ranks = [list(module.train_batches(epoch=1, start_batch=2, batch_size=4, rank=r, world_size=2)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) > 10
    for i in (0, 5, len(one) - 1):
        both = np.concatenate([ranks[0][i]["input_ids"].numpy(), ranks[1][i]["input_ids"].numpy()])
        assert np.array_equal(one[i]["input_ids"].numpy(), both)
