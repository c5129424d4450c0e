"""Resuming: a checkpoint in the engine's format, written before the engine was split into parts,
resumes; `Resumer` (finding the checkpoint, restoring the state, re-planning for a changed
config) tested on its own."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rt_testing import checkpoints, final_state, read_jsonl, train

OLD = Path(__file__).resolve().parent / "data" / "old_layout_checkpoint"
# The settings the fixture's run used (see tests/data/old_layout_checkpoint/README.md).
OLD_RUN = {"training.epochs": 2, "data.num_train_samples": 64, "data.num_val_samples": 16,
           "training.batch_size": 8, "model.input_dim": 4, "model.hidden_dim": 8, "model.dropout": 0.1,
           "training.lr_schedule": "cosine", "training.warmup_steps": 2, "training.nan_policy": "skip",
           "training.val_every_n_steps": 5, "checkpoint.every_n_steps": 5, "checkpoint.keep_last": 10,
           "logging.tensorboard": False}


@pytest.mark.timeout(120)
def test_checkpoint_in_the_old_layout_resumes_and_trains_on(tmp_path, monkeypatch):
    monkeypatch.delenv("RT_NAN_AT_CALLS", raising=False)
    (tmp_path / "checkpoints").mkdir()
    shutil.copytree(OLD / "step-00000005", tmp_path / "checkpoints" / "step-00000005")
    seen = []

    from raytrain_llm.core.callbacks import Callback

    class Restored(Callback):
        def on_train_start(self, engine):
            seen.append((engine.global_step, engine.epoch, engine.batch_in_epoch, engine.skipped_steps,
                         dict(engine.last_val_metrics)))

    from raytrain_llm.core.worker import train_worker
    from rt_testing import make_config

    cfg = make_config(tmp_path, "rt_helpers:NaNAtStepTask", **OLD_RUN, **{"checkpoint.resume": "auto"})
    old = torch.load(OLD / "step-00000005" / "state.pt", weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run that wrote the fixture (rt_testing.train)
    try:
        result = train_worker(cfg, extra_callbacks=[Restored()])
    finally:
        torch.set_num_threads(threads)
    assert seen == [(5, 0, 5, 1, old["progress"]["val_metrics"])]
    assert old["progress"]["val_metrics"]["val/loss"] > 0
    # Trained on to the run's end, exactly as the uninterrupted run that wrote the fixture.
    expected = torch.load(OLD / "expected_step16.pt", weights_only=True)
    assert result["step"] == 16
    state = final_state(tmp_path)
    assert state["progress"] == expected["progress"]
    assert state["model"].keys() == expected["model"].keys()
    for key, value in expected["model"].items():
        torch.testing.assert_close(state["model"][key], value, atol=1e-6, rtol=0, msg=key)
    # Not vacuous: the weights moved after the resume point.
    assert max((old["model"][k] - v).abs().max() for k, v in expected["model"].items()) > 1e-4
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(6, 17))
    assert [c.name for c in checkpoints(tmp_path)][-1] == "step-00000016"
