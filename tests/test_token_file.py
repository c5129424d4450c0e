"""LM data from token files: windows of the file, errors that name the file, training on real text."""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raytrain_llm.core.errors import ConfigError, UsageError
from raytrain_llm.data.token_file import TokenFileDataset, write_tokens
from rt_testing import REPO, cli_env, make_config, read_jsonl, train, write_token_files_with_a_bad_id


def _dataset(path, **kw):
    args = dict(dtype="uint16", seq_len=4, vocab_size=100, key="data.train_tokens")
    args.update(kw)
    return TokenFileDataset(str(path), **args)


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_sample_i_is_the_window_at_i_times_seq_len(tmp_path, suffix):
    tokens = np.arange(23) * 3 % 100
    path = tmp_path / f"t{suffix}"
    if suffix == ".npy":
        np.save(path, tokens.astype(np.int32))
    else:
        write_tokens(str(path), tokens)
    ds = _dataset(path)
    assert len(ds) == (23 - 1) // 4 == 5
    rows = ds.rows(np.array([4, 0]))
    assert rows["input_ids"].tolist() == [tokens[16:20].tolist(), tokens[0:4].tolist()]
    assert rows["targets"].tolist() == [tokens[17:21].tolist(), tokens[1:5].tolist()]
    assert rows["input_ids"].dtype == np.int64
    # A dataset travels to DataLoader/Ray Data workers as its path, not as the file's contents.
    write_tokens(str(tmp_path / "big.bin"), np.zeros(1_000_000, np.int64))
    big = _dataset(tmp_path / "big.bin")
    big.rows(np.array([0]))
    assert len(pickle.dumps(big)) < 2000
    assert pickle.loads(pickle.dumps(big)).rows(np.array([1]))["targets"].tolist() == [[0, 0, 0, 0]]


def test_unusable_token_files_are_usage_errors_naming_the_file(tmp_path):
    with pytest.raises(UsageError, match=r"^data.train_tokens: no token file at .*missing.bin$"):
        _dataset(tmp_path / "missing.bin")
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(UsageError, match=r"size \(3 bytes\) is not a multiple of uint16's 2 bytes"):
        _dataset(tmp_path / "odd.bin")
    write_tokens(str(tmp_path / "short.bin"), np.arange(4))
    with pytest.raises(UsageError, match=r"holds 4 tokens, fewer than one sample of model.seq_len \+ 1 = 5"):
        _dataset(tmp_path / "short.bin")
    write_tokens(str(tmp_path / "big_ids.bin"), np.array([1, 2, 3, 4, 5, 6, 7, 8, 150, 1]))
    ds = _dataset(tmp_path / "big_ids.bin")
    ds.rows(np.array([0]))
    with pytest.raises(UsageError, match=r"token id 150 in .*big_ids.bin is outside model.vocab_size \(100\)"):
        ds.rows(np.array([1]))  # an embedding lookup would fail far less clearly (on CUDA: a device assert)
    np.save(tmp_path / "floats.npy", np.zeros(10, np.float32))
    with pytest.raises(UsageError, match="must hold a 1-D array of integer token ids"):
        _dataset(tmp_path / "floats.npy")
    (tmp_path / "raw.npy").write_bytes(np.arange(20, dtype=np.uint16).tobytes())  # raw ids, a .npy name
    with pytest.raises(UsageError, match=r"cannot read .*raw.npy: it is not a .npy file \(no NumPy header\)"):
        _dataset(tmp_path / "raw.npy")


def test_token_file_settings_are_checked_together(tmp_path):
    with pytest.raises(ConfigError, match="data.val_tokens: a validation token file is needed"):
        make_config(tmp_path, "lm", **{"data.train_tokens": "t.bin"})
    with pytest.raises(ConfigError, match="data.val_tokens: needs data.train_tokens"):
        make_config(tmp_path, "lm", **{"data.val_tokens": "v.bin"})
    with pytest.raises(ConfigError, match="data.token_dtype: must be one of"):
        make_config(tmp_path, "lm", **{"data.token_dtype": "float32"})


@pytest.mark.timeout(200)
def test_the_lm_task_learns_real_text_from_token_files(tmp_path):
    out = tmp_path / "bytes"
    # English text that does not change with this repo's docs: CPython's licence and its docs'
    # topic texts (the standard library of the running Python).
    stdlib = Path(os.__file__).parent
    sources = [stdlib / "LICENSE.txt", stdlib / "pydoc_data" / "topics.py"]
    p = subprocess.run([sys.executable, "examples/prepare_bytes.py", *map(str, sources), "--out", str(out)],
                       cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    missing = subprocess.run([sys.executable, "examples/prepare_bytes.py", "no-such.txt", "--out", str(out)],
                             cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert (missing.returncode, missing.stderr) == (2, "error: cannot read no-such.txt: No such file or directory\n")
    train_tokens = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert bytes(train_tokens[:20].astype(np.uint8)) == sources[0].read_bytes()[:20]
    result, _ = train(tmp_path / "run", "lm", **{
        "model.vocab_size": 256, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4, "model.seq_len": 64,
        "data.train_tokens": str(out / "train.bin"), "data.val_tokens": str(out / "val.bin"),
        "training.batch_size": 16, "training.lr": 3e-3, "training.max_steps": 150, "training.epochs": 10,
        "training.val_every_n_steps": 50, "training.limit_val_batches": 8, "logging.log_every_n_steps": 10})
    val = [r["val/loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    # Uniform over bytes is ln 256 = 5.55 nats; a model that learns only byte frequencies reaches the
    # unigram entropy of the validation bytes. Half a nat below it, the model uses context.
    val_tokens = np.fromfile(out / "val.bin", dtype=np.uint16)
    freq = np.bincount(val_tokens, minlength=256) / len(val_tokens)
    unigram = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    assert result["step"] == 150 and math.isfinite(val[-1]) and val[-1] < unigram - 0.5 and val[-1] < val[0], \
        (val, unigram)


def test_ray_gets_token_file_paths_made_absolute(tmp_path, monkeypatch):
    from raytrain_llm.launchers.ray_train.trainer import resolve_paths  # Ray workers run in another folder

    monkeypatch.chdir(tmp_path)
    cfg = make_config(tmp_path, "lm", **{"data.train_tokens": "d/train.bin", "data.val_tokens": "d/val.bin"})
    resolved = resolve_paths(cfg)
    assert resolved.data.train_tokens == str(tmp_path / "d" / "train.bin")
    assert resolved.data.val_tokens == str(tmp_path / "d" / "val.bin")


def test_token_ids_are_checked_before_training_starts(tmp_path):
    write_token_files_with_a_bad_id(tmp_path)
    ds = _dataset(tmp_path / "train.bin", vocab_size=64)
    with pytest.raises(UsageError, match=r"token id 77 at position 1500 of .*train.bin is outside model.vocab_size"):
        ds.check_ids(chunk=256)
    _dataset(tmp_path / "train.bin", vocab_size=100).check_ids(chunk=256)  # all inside: fine
    with pytest.raises(UsageError, match=r"^data.train_tokens: token id 77 at position 1500"):
        train(tmp_path / "run", "lm", **{
            "model.vocab_size": 64, "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2,
            "model.seq_len": 16, "training.batch_size": 4, "data.train_tokens": str(tmp_path / "train.bin"),
            "data.val_tokens": str(tmp_path / "val.bin")})
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    from raytrain_llm.data.token_file import TokenFileDataModule

    unchecked = make_config(tmp_path, "lm", **{"model.vocab_size": 64, "data.check_token_ids": False,
                                               "data.train_tokens": str(tmp_path / "train.bin"),
                                               "data.val_tokens": str(tmp_path / "val.bin")})
    TokenFileDataModule(unchecked).check_data()  # skipped on request: no pass over the files



@pytest.mark.timeout(120)
def test_token_ids_are_checked_by_the_launcher_before_workers_start(tmp_path):
    # Spawn checks in the parent (its ranks would otherwise wait on rank 0's pass in a collective
    # with a timeout), and the workers then skip it; the in-process engine checks itself.
    from raytrain_llm.core.engine import TrainingEngine
    from raytrain_llm.launchers.local.spawn import run_spawn
    from raytrain_llm.tasks.lm_task import LanguageModelingTask

    write_token_files_with_a_bad_id(tmp_path)
    settings = {"model.vocab_size": 64, "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2,
                "model.seq_len": 16, "training.batch_size": 4, "training.max_steps": 1,
                "data.train_tokens": str(tmp_path / "train.bin"), "data.val_tokens": str(tmp_path / "val.bin")}
    cfg = make_config(tmp_path / "spawn", "lm", **settings, **{"distributed.launcher": "spawn",
                                                              "distributed.num_workers": 2})
    with pytest.raises(UsageError, match=r"^data.train_tokens: token id 77 at position 1500"):
        run_spawn(cfg)
    assert not (tmp_path / "spawn" / "logs").exists()  # no worker ever started

    class Counting(LanguageModelingTask):
        checks = 0

        def build_data_module(self):
            module = super().build_data_module()
            check = module.check_data

            def counted():
                Counting.checks += 1
                check()
            module.check_data = counted
            return module

    cfg = make_config(tmp_path / "one", "lm", **settings)
    TrainingEngine(cfg, Counting(cfg), check_data=False)
    assert Counting.checks == 0
    with pytest.raises(UsageError, match="token id 77"):
        TrainingEngine(cfg, Counting(cfg))
    assert Counting.checks == 1
