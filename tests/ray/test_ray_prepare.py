"""Preparation with Ray Data (local Ray, 2 CPUs), whose workers write the shards, writes byte for
byte what the local processes write; killed during the workers' tokenizing, its rerun reuses the
blocks they had finished and still writes the same bytes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prep_testing import prepare_args, stdlib_corpus  # tests/ is on sys.path (tests/conftest.py)
from raytrain_llm.prepare.__main__ import main
from rt_testing import REPO, cli_env

ARGS = ("--tokenizer", "train:600", "--val-fraction", "0.2", "--seed", "7", "--shard-tokens", "25000")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.timeout(300)
def test_ray_data_preparation_is_byte_identical_to_the_local_one(ray_local, tmp_path, capsys):
    corpus = stdlib_corpus(tmp_path / "src", count=24)
    out = tmp_path / "data"
    args = prepare_args([corpus[0].parent / "*.py"], out, *ARGS)
    assert main([*args, "--workers", "2"]) == 0
    local = _files(out)
    os.replace(out, tmp_path / "local")  # same --out: the manifest records the command
    assert main([*args, "--launcher", "ray", "--workers", "2"]) == 0
    assert _files(out) == local
    assert len([n for n in local if n.startswith("train-")]) >= 3 and "val-00000.bin" in local
    # A file Ray's task cannot use is the same one-line usage error as locally, and nothing is published.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.parquet").write_bytes(b"PAR1 not parquet PAR1")
    capsys.readouterr()
    assert main(prepare_args([tmp_path / "bad" / "a.parquet"], tmp_path / "bad_out", "--format", "parquet",
                             "--tokenizer", str(out / "tokenizer.json"), "--launcher", "ray")) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: --input: ") and "a.parquet is not a readable Parquet file" in last, last
    assert not (tmp_path / "bad_out").exists() and not (tmp_path / "bad_out.tmp-prepare").exists()


# The driver dies (os._exit, as SIGKILL would leave it) once 3 blocks are reported finished, while
# the other tasks still run: the kill comes from this test, wrapped around the driver's loop over
# phase 1's finished blocks. Its own local Ray dies with it.
DIE_AFTER_3_BLOCKS = """
import os, sys
from raytrain_llm.prepare import ray_runner
from raytrain_llm.prepare.__main__ import main
blocks = ray_runner._encoded_blocks
def dying(*args, **kwargs):
    for i, block in enumerate(blocks(*args, **kwargs)):
        if i == 2:
            os._exit(137)
        yield block
ray_runner._encoded_blocks = dying
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(300)
def test_a_ray_preparation_killed_while_tokenizing_reuses_its_finished_blocks(ray_local, tmp_path, capsys,
                                                                               monkeypatch):
    from raytrain_llm.prepare import ray_runner

    corpus = stdlib_corpus(tmp_path / "src", count=24)
    out = tmp_path / "data"
    args = prepare_args([corpus[0].parent / "*.py"], out, *ARGS, "--workers", "2")
    assert main(args) == 0
    local = _files(out)
    os.replace(out, tmp_path / "local")
    env = {k: v for k, v in cli_env().items() if not k.startswith("RAY_ADDRESS")}
    p = subprocess.run([sys.executable, "-c", DIE_AFTER_3_BLOCKS, *args, "--launcher", "ray"], cwd=REPO,
                       timeout=180, env=env, capture_output=True, text=True)
    parts = tmp_path / "data.tmp-prepare" / "parts"
    assert p.returncode == 137 and not out.exists(), p.stderr[-3000:]
    finished = sorted(n for n in os.listdir(parts) if n.startswith("block-"))
    assert len(finished) >= 3, finished  # (and a few more that finished before the driver died)
    reused = sum(int(n[15:23]) - int(n[6:14]) for n in finished)
    encoded = []
    loop = ray_runner._encoded_blocks

    def counted(*a, **kw):
        for block in loop(*a, **kw):
            encoded.append(block)
            yield block

    monkeypatch.setattr(ray_runner, "_encoded_blocks", counted)
    capsys.readouterr()
    assert main([*args, "--launcher", "ray"]) == 0
    assert f"reusing {len(finished)} blocks ({reused} files)" in capsys.readouterr().err
    # At least 4 blocks per worker (8): work was left, and only the files no block covered were redone.
    assert len(finished) + len(encoded) >= 8 and encoded
    assert sum(last - first for first, last in encoded) == 24 - reused
    assert _files(out) == local and not (tmp_path / "data.tmp-prepare").exists()


@pytest.mark.timeout(300)
def test_ray_train_on_prepared_shards_matches_one_process_at_twice_the_batch(ray_local, tmp_path):
    import hashlib

    import torch

    from ray_testing import final_params, fit, ray_config
    from rt_testing import final_state, train

    corpus = stdlib_corpus(tmp_path / "src", count=12)
    data = tmp_path / "data"
    assert main(prepare_args([corpus[0].parent / "*.py"], data, "--tokenizer", "train:300", "--val-fraction", "0.2",
                             "--seed", "1", "--shard-tokens", "8000")) == 0  # seed 1: 4 of the 12 documents in val
    lm = {"model.vocab_size": 0, "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.seq_len": 32,
          "data.train_tokens": str(data), "training.lr_schedule": "constant", "training.max_steps": 6,
          "training.epochs": 1}
    config = ray_config(tmp_path, "lm", **{k.replace(".", "__"): v for k, v in lm.items()},
                        training__batch_size=4, checkpoint__every_n_steps=3)
    result, resolved = fit(config)
    assert result.error is None
    ray_params = final_params(resolved)
    want = hashlib.sha256((data / "tokenizer.json").read_bytes()).hexdigest()
    run = tmp_path / "run"
    for folder in [run] + sorted((run / "checkpoints").glob("step-*")):
        assert hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest() == want, folder
    assert ray_params["tok_emb.weight"].shape[0] == 300  # model.vocab_size 0: from the manifest
    train(tmp_path / "one", "lm", **lm, **{"training.batch_size": 8, "checkpoint.every_n_steps": 3,
                                           "training.val_every_n_steps": 4, "training.limit_val_batches": 1})
    one = final_state(tmp_path / "one")["model"]
    assert all(torch.allclose(ray_params[k], one[k], atol=1e-5) for k in one)
