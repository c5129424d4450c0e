"""Resuming: a checkpoint in the engine's format, written before the engine was split into parts,
resumes; `Resumer` (finding the checkpoint, restoring the state, re-planning for a changed
config) tested on its own."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from raytrain_llm.core.callbacks import Callback
from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.errors import UsageError
from raytrain_llm.core.logger import Logger
from raytrain_llm.core.progress import Progress, planned_total_steps
from raytrain_llm.core.resume import Resumer, Schedule
from raytrain_llm.core.rng_state import seed_everything
from raytrain_llm.launchers.task_resolution import resolve_task
from raytrain_llm.launchers.worker import train_worker
from rt_testing import checkpoints, final_state, make_config, read_jsonl

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

    class Restored(Callback):
        def on_train_start(self, engine):
            seen.append((engine.global_step, engine.epoch, engine.batch_in_epoch, engine.skipped_steps,
                         dict(engine.last_val_metrics)))

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


# ----------------------------------------------------------------------------- Resumer, directly
def _parts(tmp_path, **overrides):
    """What the engine hands a Resumer, built as the engine builds it, for OLD_RUN + overrides."""
    cfg = make_config(tmp_path, "rt_helpers:NaNAtStepTask", **{**OLD_RUN, **overrides})
    task = resolve_task(cfg.task)(cfg)
    seed_everything(cfg.training.seed)
    model = task.build_model()
    optimizer = task.build_optimizer(model)
    num_batches = task.build_data_module().num_train_batches(cfg.training.batch_size, 1)
    progress = Progress()
    total = planned_total_steps(cfg, progress, num_batches)
    logger = Logger(level="INFO", log_dir=str(tmp_path), rank=0)
    return dict(cfg=cfg, task=task, dist=DistributedManager(), logger=logger, model=model, optimizer=optimizer,
                progress=progress, num_batches=num_batches,
                schedule=Schedule(task.build_scheduler(optimizer, total), total))


def _restore(p, state):
    resumer = Resumer(p["cfg"], p["task"], p["dist"], p["logger"])
    schedule = resumer.restore(state, progress=p["progress"], model=p["model"], optimizer=p["optimizer"],
                               schedule=p["schedule"], num_batches=p["num_batches"])
    resumer.warn_about_run_length(p["progress"], schedule)
    p["logger"].close()
    return schedule


def _warnings(tmp_path) -> list[str]:
    return [line for line in (tmp_path / "logs" / "rank0.log").read_text().splitlines() if "WARNING" in line]


def _old_state():
    return torch.load(OLD / "step-00000005" / "state.pt", weights_only=True)


def test_restore_brings_back_progress_weights_optimizer_and_schedule(tmp_path):
    state = _old_state()
    p = _parts(tmp_path)
    before = {k: v.clone() for k, v in p["model"].state_dict().items()}
    schedule = _restore(p, state)
    progress = p["progress"]
    assert (progress.global_step, progress.epoch, progress.batch_in_epoch, progress.skipped_steps,
            progress.val_step) == (5, 0, 5, 1, 5)
    assert progress.val_metrics == state["progress"]["val_metrics"] and progress.skips_in_a_row == 0
    assert not progress.should_stop and progress.stop_reason == ""
    model = p["model"].state_dict()
    assert all(torch.equal(model[k], v) for k, v in state["model"].items())
    assert any(not torch.equal(before[k], model[k]) for k in model)  # not vacuous: the weights changed
    opt = p["optimizer"].state_dict()["state"]
    assert all(torch.equal(opt[i]["exp_avg"], s["exp_avg"]) for i, s in state["optimizer"]["state"].items())
    # Same config: the checkpoint's schedule, at its position (4 applied steps: 5 minus the skipped one).
    assert schedule.total_steps == 16 and schedule.scheduler is p["schedule"].scheduler
    assert schedule.scheduler.last_epoch == 4
    assert [g["lr"] for g in p["optimizer"].param_groups] == state["scheduler"]["_last_lr"]
    # Saved again, the progress entry is the checkpoint's, key for key.
    assert progress.state_dict(world_size=1, total_steps=schedule.total_steps) == state["progress"]
    assert _warnings(tmp_path) == []


def test_restore_with_another_global_batch_converts_the_position_and_replans(tmp_path):
    # 5 batches of 8 trained = 40 samples = 10 batches of 4; 16 batches an epoch now: 6 + 16 steps left.
    p = _parts(tmp_path, **{"training.batch_size": 4})
    schedule = _restore(p, _old_state())
    assert (p["progress"].epoch, p["progress"].batch_in_epoch) == (0, 10)
    assert schedule.total_steps == 5 + 6 + 16
    assert [fn.decay_steps for fn in schedule.scheduler.lr_lambdas] == [27 - 2] * 2
    warned = "\n".join(_warnings(tmp_path))
    assert "global batch (workers x training.batch_size) changed from 8 to 4" in warned
    assert "epoch 1 goes on after sample 40 of its order" in warned


def test_restore_with_more_epochs_plans_the_schedule_for_the_new_length(tmp_path):
    p = _parts(tmp_path, **{"training.epochs": 3})
    schedule = _restore(p, _old_state())
    assert schedule.total_steps == 24
    assert [fn.decay_steps for fn in schedule.scheduler.lr_lambdas] == [22, 22]
    fn = schedule.scheduler.lr_lambdas[0]
    assert p["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3 * fn(4))
    assert "decay over 22 steps (the checkpoint's run: 14)" in "\n".join(_warnings(tmp_path))


def test_restore_with_another_lr_and_weight_decay_follows_the_config(tmp_path):
    p = _parts(tmp_path, **{"training.lr": 2e-3, "training.weight_decay": 0.05})
    schedule = _restore(p, _old_state())
    groups = p["optimizer"].param_groups
    assert [float(b) for b in schedule.scheduler.base_lrs] == [2e-3, 2e-3]
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0  # biases: none
    assert groups[0]["lr"] == pytest.approx(2e-3 * schedule.scheduler.lr_lambdas[0](4))
    assert "weight_decay, lr changed" in "\n".join(_warnings(tmp_path))


def test_restore_into_another_model_is_a_usage_error_naming_the_key(tmp_path):
    p = _parts(tmp_path, **{"model.hidden_dim": 16})
    with pytest.raises(UsageError, match=r"^checkpoint does not match .*model.hidden_dim is 16 here, 8 in"):
        _restore(p, _old_state())
    assert p["progress"].global_step == 0  # nothing restored


def test_restore_of_a_finished_run_warns_there_is_nothing_to_train(tmp_path):
    state = _old_state()
    p = _parts(tmp_path, **{"training.max_steps": 5})
    _restore(p, state)
    assert "nothing to train: resumed at step 5 (epoch 1)" in "\n".join(_warnings(tmp_path))


def test_find_follows_checkpoint_resume(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)

    def resumer(mode, resume_from=None):
        p = _parts(tmp_path / "run", **{"checkpoint.resume": mode})
        return Resumer(p["cfg"], p["task"], p["dist"], p["logger"], CheckpointManager(str(folder)), resume_from)

    assert resumer("auto").find() == (None, None)  # nothing here yet: a fresh run
    assert resumer("none").find() == (None, None)
    with pytest.raises(UsageError, match="no checkpoint at"):
        resumer(str(tmp_path / "missing")).find()
    # Another run's checkpoint, named by the user: resumed, and marked as from elsewhere.
    other = resumer(str(OLD / "step-00000005"))
    path, state = other.find()
    assert path == str(OLD / "step-00000005") and state["progress"]["global_step"] == 5
    assert other.resumed_from_elsewhere
    # The launcher's restore point is not "elsewhere"; a folder with checkpoints refuses a fresh run.
    launcher = resumer("none", resume_from=str(OLD / "step-00000005"))
    assert launcher.find()[1] is not None and not launcher.resumed_from_elsewhere
    shutil.copytree(OLD / "step-00000005", folder / "step-00000005")
    path, state = resumer("auto").find()
    assert path.endswith("step-00000005") and state["progress"]["epoch"] == 0
    with pytest.raises(UsageError, match="already holds checkpoints of an earlier run"):
        resumer("none").find()
