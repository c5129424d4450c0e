"""Weights & Biases in offline mode (no network): the offline run folder holds the config, the
tags and the metric history equal to metrics.jsonl (read back from the .wandb file with W&B's own
protobuf records), and a resumed run continues the same W&B run with each step once."""
from __future__ import annotations

import json

import pytest

from rt_testing import train
from rt_trackers import jsonl_series, wandb_config, wandb_history, wandb_records

pytest.importorskip("wandb")

RUN = {"logging.trackers": "wandb", "logging.wandb_mode": "offline", "training.val_every_n_steps": 4,
       "training.epochs": 2, "checkpoint.every_n_steps": 8, "logging.experiment": "offline-test"}


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    # Nothing outside tmp_path, nothing online.
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def run_files(log_dir, timeout_s: float = 60.0):
    """The .wandb file of each offline run segment, once each is complete: W&B's service process
    writes the file, and may still be writing when `finish()` has returned (seen here)."""
    import time

    folders = sorted((log_dir / "wandb").glob("offline-run-*"))
    paths = [next(f.glob("*.wandb")) for f in folders]
    deadline = time.monotonic() + timeout_s
    while not all(any(r.WhichOneof("record_type") == "exit" for r in wandb_records(p)) for p in paths):
        assert time.monotonic() < deadline, "a .wandb file has no exit record"
        time.sleep(0.2)
    return paths


def header_run(path):
    return next(r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run")


@pytest.mark.timeout(240)
def test_offline_run_holds_config_tags_and_history_of_metrics_jsonl(tmp_path):
    log_dir = tmp_path / "run"
    _, cfg = train(log_dir, **RUN)
    (path,) = run_files(log_dir)
    run = header_run(path)
    assert run.project == "offline-test" and run.display_name == "run"
    assert run.run_id == json.loads((log_dir / "tracker-wandb.json").read_text())["run_id"]
    assert {"task:regression", "launcher:local", "strategy:single"} <= set(run.tags)
    config = wandb_config(path)
    assert config["training.val_every_n_steps"] == 4 and config["training.lr"] == cfg.training.lr
    assert config["logging.trackers"] == '["wandb"]' and config["task"] == "regression"
    expected = jsonl_series(log_dir)
    assert wandb_history(path) == expected
    assert [s for s, _ in expected["val/loss"]] == [4, 8, 12, 16, 20, 24, 28, 32]
    files = path.parent / "files"
    assert json.loads((files / "summary.json").read_text())["global_step"] == 32
    assert (files / "metrics.jsonl").exists()


@pytest.mark.timeout(240)
def test_a_resumed_run_continues_the_wandb_run_with_each_step_once(tmp_path):
    log_dir = tmp_path / "run"
    train(log_dir, **{**RUN, "training.max_steps": 12})
    # Steps 9-12 were sent; resuming from the step-8 checkpoint trains them again.
    import shutil

    shutil.rmtree(log_dir / "checkpoints" / "step-00000012")
    train(log_dir, **{**RUN, "checkpoint.resume": "auto"})
    paths = run_files(log_dir)
    assert len(paths) == 2 and len({header_run(p).run_id for p in paths}) == 1  # one W&B run, two segments
    merged: dict = {}
    for p in paths:
        for key, points in wandb_history(p).items():
            merged.setdefault(key, []).extend(points)
    expected = jsonl_series(log_dir)
    assert [s for s, _ in merged["loss"]] == list(range(1, 33))  # each step once
    assert {k: [s for s, _ in v] for k, v in merged.items()} == {k: [s for s, _ in v] for k, v in expected.items()}
