"""Checkpoints: rotation (keep_last + keep_best), fallback past a corrupt latest checkpoint,
atomic writes, clean state-dict keys, and weights_only loading."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from raytrain_llm.core.checkpointing import CheckpointManager, clean_state_dict
from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping
from raytrain_llm.core.errors import CheckpointError, UsageError
from raytrain_llm.tasks.regression_task import RegressionTask
from rt_testing import (
    ManualClock,
    Tick,
    checkpoints,
    ckpt_step,
    load_state,
    read_json,
    read_jsonl,
    run_cli,
    set_args,
    settings,
    train,
)


def steps(run_dir) -> list[int]:
    return [ckpt_step(c) for c in checkpoints(run_dir)]


def tiny_state(step: int) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "optimizer": {}, "progress": {"global_step": step}}


# ----------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("keep_last,keep_best,mode,values,expected", [
    (2, 1, "min", [5, 1, 3, 4, 6, 7], [2, 5, 6]),  # the best (step 2) is old and survives
    (2, 2, "min", [5, 1, 3, 4, 6, 7], [2, 3, 5, 6]),
    (1, 1, "max", [5, 9, 3, 4, 6, 7], [2, 6]),
    (3, 0, "min", [5, 1, 3, 4, 6, 7], [4, 5, 6]),
    (2, 1, "min", [5, 1, 3, 4, 6, 0.5], [5, 6]),  # the newest is also the best: no extra one
])
def test_rotation_unit(tmp_path, keep_last, keep_best, mode, values, expected):
    m = CheckpointManager(str(tmp_path), keep_last=keep_last, keep_best=keep_best, mode=mode)
    for step, v in enumerate(values, 1):
        m.save(tiny_state(step), step=step, epoch=0, metrics={"val/loss": v, "train/loss": 100.0 - step})
        assert len(m.checkpoints()) <= keep_last + keep_best
    assert [c["step"] for c in m.checkpoints()] == expected
    if keep_best:
        best_step = (min if mode == "min" else max)(range(1, len(values) + 1), key=lambda s: values[s - 1])
        assert m.best_path() == str(tmp_path / f"step-{best_step:08d}")


def test_rotation_end_to_end_keeps_old_best(tmp_path, monkeypatch):
    # Checks every 2 steps; the 2nd check (step 4) is the best and stays the best.
    monkeypatch.setenv("RT_VAL_LOSSES", "3,1,2,2.5,2.6,2.7,2.8,2.9")
    train(tmp_path, task="rt_helpers:ScriptedValTask",
          **{"data.num_val_samples": 16, "training.val_every_n_steps": 2, "checkpoint.every_n_steps": 2,
             "checkpoint.keep_last": 2, "checkpoint.keep_best": 1})
    assert steps(tmp_path) == [4, 14, 16]
    assert read_json(tmp_path / "summary.json")["best_checkpoint"] == str(tmp_path / "checkpoints" / "step-00000004")
    assert read_json(tmp_path / "checkpoints" / "step-00000004" / "meta.json")["metrics"]["val/loss"] == 1.0


# ----------------------------------------------------------------------------- corruption
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("damage", [_truncate, _garbage, lambda p: p.unlink()], ids=["truncated", "garbage", "missing"])
def test_corrupt_latest_falls_back_to_previous_and_run_matches(tmp_path, damage):
    common = {"training.lr_schedule": "constant", "checkpoint.every_n_steps": 4, "checkpoint.keep_last": 5}
    train(tmp_path / "ref", **common)
    run = tmp_path / "run"
    train(run, **common, **{"training.max_steps": 12})
    assert steps(run) == [4, 8, 12]
    damage(run / "checkpoints" / "step-00000012" / "state.pt")
    with pytest.raises(CheckpointError):
        CheckpointManager.load(str(run / "checkpoints" / "step-00000012"))

    result, _ = train(run, **common, **{"checkpoint.resume": "auto"})
    assert result["step"] == 16
    log = (run / "logs" / "rank0.log").read_text()
    assert "step-00000012" in log and "falling back to an older checkpoint" in log and "WARNING" in log
    assert "resumed from" in log and "at step 8 (epoch 1, batch 8)" in log
    ref, got = load_state(checkpoints(tmp_path / "ref")[-1]), load_state(checkpoints(run)[-1])
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
    for c in checkpoints(run):  # the damaged step was re-saved properly
        CheckpointManager.load(str(c))
    # ... and the damaged one kept aside, out of rotation.
    assert (run / "checkpoints" / "unloadable-step-00000012").is_dir() and "moved the unloadable" in log


def test_a_skipped_corrupt_checkpoint_is_neither_latest_nor_best_and_costs_no_good_one(tmp_path):
    # Left in place, the unloadable step-12 counted as the newest: rotation (keep_last=2) deleted
    # the good step-8 in its favour, and summary.json named it latest (and could name it best).
    common = {"training.lr_schedule": "constant", "checkpoint.every_n_steps": 4, "checkpoint.keep_last": 2,
              "checkpoint.keep_best": 1, "training.val_every_n_steps": 4}
    train(tmp_path, **common, **{"training.max_steps": 12})
    damaged = tmp_path / "checkpoints" / "step-00000012"
    before = (damaged / "state.pt").read_bytes()[:1000]
    (damaged / "state.pt").write_bytes(before)
    result, _ = train(tmp_path, **common, **{"checkpoint.resume": "auto", "training.max_steps": 11})
    assert result["step"] == 11
    summary = read_json(tmp_path / "summary.json")
    assert ckpt_step(summary["latest_checkpoint"]) == 11 and ckpt_step(summary["best_checkpoint"]) <= 11
    assert 8 in steps(tmp_path) and all(s <= 11 for s in steps(tmp_path))
    for c in checkpoints(tmp_path):
        CheckpointManager.load(str(c))
    assert (tmp_path / "checkpoints" / "unloadable-step-00000012" / "state.pt").read_bytes() == before  # kept


def test_corrupt_checkpoint_error_is_one_plain_line(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        CheckpointManager.load(str(tmp_path))
    msg = str(err.value)
    assert "corrupt or unreadable" in msg and "\n" not in msg
    assert "weights_only` set to `False`" not in msg  # no advice to unpickle untrusted garbage


def test_all_corrupt_is_an_error_that_keeps_them(tmp_path):
    # Starting afresh would overwrite them; unreadable after a torch upgrade or a storage hiccup
    # is not necessarily lost.
    train(tmp_path, **{"checkpoint.every_n_steps": 8})
    for c in checkpoints(tmp_path):
        _truncate(c / "state.pt")
    before = {c.name: (c / "state.pt").read_bytes() for c in checkpoints(tmp_path)}
    # A usage error (exit 2), as a corrupt checkpoint named by checkpoint.resume=<path> is.
    with pytest.raises(UsageError, match=r"^checkpoint.resume=auto: none of the 2 checkpoints in .* can be loaded "
                                         r".*move them aside"):
        train(tmp_path, **{"checkpoint.resume": "auto", "checkpoint.every_n_steps": 8, "training.epochs": 2})
    assert {c.name: (c / "state.pt").read_bytes() for c in checkpoints(tmp_path)} == before
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert log.count("falling back to an older checkpoint") == 1 and log.count("no older checkpoint") == 1
    assert "resumed from" not in log and "moved the unloadable" not in log


class _NotAllowed:
    pass


def test_unreadable_checkpoints_get_a_short_cause(tmp_path):
    causes = {}
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    (tmp_path / "text.pt").write_text("hello world\n")
    torch.save({"x": _NotAllowed()}, tmp_path / "object.pt")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "cut.pt")
    _truncate(tmp_path / "cut.pt")
    for name in ("garbage", "text", "object", "cut"):
        with pytest.raises(CheckpointError) as info:
            CheckpointManager.load(str(tmp_path / f"{name}.pt"))
        causes[name] = str(info.value).partition("corrupt or unreadable: ")[2]
    assert causes["garbage"] == "not a valid weights-only checkpoint (Unsupported operand 103)"
    assert causes["text"] == "not a torch checkpoint (KeyError 101)"
    assert causes["object"].startswith("not a valid weights-only checkpoint (Unsupported global: GLOBAL ")
    assert causes["cut"] == "PytorchStreamReader failed reading zip archive: failed finding central directory"
    assert not any("weights_only" in c or "\n" in c for c in causes.values())  # no unsafe advice, one line


def test_resume_from_a_run_folder_points_at_its_newest_checkpoint(tmp_path):
    train(tmp_path / "run", **{"checkpoint.every_n_steps": 8})
    with pytest.raises(UsageError, match=r"checkpoint not found: .*state.pt \(a run folder: its newest "
                                         r"checkpoint is .*step-00000016\)"):
        train(tmp_path / "next", **{"checkpoint.resume": str(tmp_path / "run")})


# ----------------------------------------------------------------------------- atomicity
def test_tmp_folders_are_never_checkpoints(tmp_path):
    train(tmp_path, **{"training.lr_schedule": "constant", "training.max_steps": 8, "checkpoint.every_n_steps": 4})
    ckdir = tmp_path / "checkpoints"
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A save killed before its rename: a complete-looking folder under the temporary name, newer step.
    fake = ckdir / f".tmp-step-00000099-{dead.pid}"
    shutil.copytree(ckdir / "step-00000008", fake)
    state = torch.load(fake / "state.pt", weights_only=True)
    state["progress"]["global_step"] = 99
    torch.save(state, fake / "state.pt")
    shutil.copytree(ckdir / "step-00000004", ckdir / f"step-00000004.old-{dead.pid}")
    m = CheckpointManager(str(ckdir), is_main=False)
    assert [c["step"] for c in m.checkpoints()] == [4, 8]
    path, loaded = m.load_latest_valid()
    assert path.endswith("step-00000008") and loaded["progress"]["global_step"] == 8
    result, _ = train(tmp_path, **{"training.lr_schedule": "constant", "checkpoint.every_n_steps": 4,
                                   "checkpoint.resume": "auto"})
    assert result["step"] == 16
    assert "at step 8 " in (tmp_path / "logs" / "rank0.log").read_text()
    # Never loaded or rotated as a checkpoint, and removed when the run started in the folder.
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-00000012", "step-00000016"]


def test_crash_during_save_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    m = CheckpointManager(str(tmp_path), keep_last=2, keep_best=0)
    m.save(tiny_state(1), step=1, epoch=0, metrics={})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.flush()
        f.truncate(10)  # half-written file, then an exception (a kill leaves the folder: see above)
        raise KeyboardInterrupt

    monkeypatch.setattr("raytrain_llm.core.checkpointing.torch.save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        m.save(tiny_state(2), step=2, epoch=0, metrics={})
    monkeypatch.undo()
    assert [c["step"] for c in m.checkpoints()] == [1]
    path, state = m.load_latest_valid()
    assert path.endswith("step-00000001") and state["progress"]["global_step"] == 1
    assert not any(n.startswith(".tmp-step-00000002") for n in os.listdir(tmp_path))  # removed on the way out


def test_refuses_to_save_non_finite_weights(tmp_path):
    m = CheckpointManager(str(tmp_path))
    state = tiny_state(3)
    state["model"]["w"][0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        m.save(state, step=3, epoch=0, metrics={})
    assert m.checkpoints() == [] and os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- contents
def test_clean_state_dict_strips_wrapper_prefixes_only():
    raw = {"module._orig_mod.net.0.weight": 1, "_orig_mod.module.head.bias": 2, "module.x": 3,
           "enc.submodule.weight": 4, "my_module.w": 5, "blk._orig_mod.w": 6, "module": 7}
    assert clean_state_dict(raw) == {"net.0.weight": 1, "head.bias": 2, "x": 3, "enc.submodule.weight": 4,
                                     "my_module.w": 5, "blk.w": 6, "module": 7}


def test_epoch_end_checkpoint_has_val_metrics_when_every_n_steps_lands_on_it(tmp_path):
    # every_n_steps=8 saves step 16 before the epoch-end validation; the epoch-end save must
    # replace it, or no checkpoint carries val/loss and keep_best/best_checkpoint silently fail.
    train(tmp_path, **{"checkpoint.every_n_steps": 8, "training.epochs": 2, "checkpoint.keep_last": 5})
    metas = {ckpt_step(c): read_json(c / "meta.json") for c in checkpoints(tmp_path)}
    assert set(metas) == {8, 16, 24, 32} and "val/loss" not in metas[24]["metrics"]
    assert metas[32]["epoch"] == 2 and "val/loss" in metas[32]["metrics"]
    assert metas[16]["epoch"] == 1 and "val/loss" in metas[16]["metrics"]
    scored = {step: meta["metrics"]["val/loss"] for step, meta in metas.items() if "val/loss" in meta["metrics"]}
    best = read_json(tmp_path / "summary.json")["best_checkpoint"]
    assert ckpt_step(best) == min(scored, key=scored.get)  # the lowest val/loss among the saved


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    _, cfg = train(tmp_path, **{"checkpoint.every_n_steps": 8})
    path = checkpoints(tmp_path)[-1] / "state.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code needed
    assert {"model", "optimizer", "scheduler", "scaler", "progress", "rng", "callbacks", "config"} <= set(state)
    fresh = RegressionTask(cfg).build_model().state_dict()
    assert list(state["model"]) == list(fresh)
    assert not any(k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k for k in state["model"])
    progress = dict(state["progress"])
    val = progress.pop("val_metrics")
    assert progress == {"global_step": 16, "epoch": 1, "batch_in_epoch": 0, "skipped_steps": 0,
                        "world_size": 1, "val_step": 16, "total_steps": 16}
    assert set(val) == {"val/loss", "val/mae"}  # the validation at step 16, saved with it
    assert config_from_mapping(state["config"]) == cfg
    assert (checkpoints(tmp_path)[-1] / "config.yaml").exists()
    assert read_json(checkpoints(tmp_path)[-1] / "meta.json")["step"] == 16


def test_resume_accepts_prefixed_keys(tmp_path):
    _, cfg = train(tmp_path / "a", **{"training.max_steps": 8, "training.lr_schedule": "constant"})
    src = checkpoints(tmp_path / "a")[-1]
    state = load_state(src)
    state["model"] = {f"module._orig_mod.{k}": v for k, v in state["model"].items()}
    dst = tmp_path / "prefixed"
    dst.mkdir()
    torch.save(state, dst / "state.pt")
    result, _ = train(tmp_path / "b", **{"training.lr_schedule": "constant", "checkpoint.resume": str(dst)})
    assert result["step"] == 16
    assert "resumed from" in (tmp_path / "b" / "logs" / "rank0.log").read_text()


def test_fresh_run_refuses_a_folder_with_earlier_checkpoints(tmp_path):
    s = settings(tmp_path, **{"training.epochs": 1})
    first = run_cli(["--task", "regression", *set_args(s)], timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    before = sorted(p.name for p in checkpoints(tmp_path))
    assert before and read_json(tmp_path / "summary.json")["global_step"] == 16  # TINY: 16 steps, saved
    again = run_cli(["--task", "regression", *set_args(s)], timeout=120)
    assert again.returncode == 2
    last = again.stderr.strip().splitlines()[-1]
    assert "already holds checkpoints" in last and "checkpoint.resume=auto" in last and "Traceback" not in again.stderr
    assert sorted(p.name for p in checkpoints(tmp_path)) == before  # nothing already saved is lost


@pytest.mark.timeout(180)
def test_resume_with_another_model_names_the_changed_key_and_keeps_the_checkpoints(tmp_path):
    s = settings(tmp_path, **{"training.epochs": 1})
    assert run_cli(["--task", "regression", *set_args(s)], timeout=120).returncode == 0
    before = {p.name: (p / "state.pt").read_bytes() for p in checkpoints(tmp_path)}
    assert before and max(ckpt_step(c) for c in checkpoints(tmp_path)) == 16
    changed = {**s, "model.hidden_dim": "32", "checkpoint.resume": "auto"}
    p = run_cli(["--task", "regression", *set_args(changed)], timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "does not match" in last and "model.hidden_dim is 32 here, 16 in the checkpoint" in last, last
    assert {q.name: (q / "state.pt").read_bytes() for q in checkpoints(tmp_path)} == before


def test_mismatch_without_a_saved_config_quotes_torchs_concrete_reason():
    from raytrain_llm.core.resume import mismatch_cause as _mismatch_cause

    model = RegressionTask(Config()).build_model()
    state = {k: v for k, v in model.state_dict().items()}
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError) as exc:
        model.load_state_dict(state)
    cause = _mismatch_cause({"model": state}, Config().to_dict(), exc.value)
    assert cause.startswith("Missing key(s) in state_dict") and "Error(s)" not in cause


def test_explicit_resume_refuses_a_folder_with_later_checkpoints(tmp_path):
    from raytrain_llm.core.errors import UsageError

    train(tmp_path, **{"checkpoint.every_n_steps": 4, "checkpoint.keep_last": 10})
    before = steps(tmp_path)
    assert before[-1] == 16
    older = checkpoints(tmp_path)[0]  # step 4: resuming it here would rotate away the new run's saves
    with pytest.raises(UsageError, match=r"holds checkpoints past the resume point \(step 4\), up to step-00000016"):
        train(tmp_path, **{"checkpoint.resume": str(older), "checkpoint.every_n_steps": 2})
    assert steps(tmp_path) == before
    # Into a fresh folder it is a branch of the old run, and fine.
    result, _ = train(tmp_path / "branch", **{"checkpoint.resume": str(older)})
    assert result["step"] == 16
    # Into a folder holding another run's checkpoints (even older steps) it is refused, as a fresh
    # run would be: rotation used to delete them silently.
    other = tmp_path / "other"
    train(other, **{"training.max_steps": 3})
    with pytest.raises(UsageError, match=r"already holds checkpoints of an earlier run"):
        train(other, **{"checkpoint.resume": str(older), "checkpoint.keep_last": 1})
    assert steps(other) == [3]


def test_a_misspelt_checkpoint_monitor_stops_the_run_keeping_its_checkpoints(tmp_path):
    # Misspelt, keep_best would keep nothing, summary.json would name no best and a plateau
    # scheduler would never step: a usage error at the first validation, as callbacks.monitor.
    with pytest.raises(UsageError) as info:
        train(tmp_path, **{"checkpoint.monitor": "val_loss", "checkpoint.every_n_steps": 4, "training.epochs": 2})
    assert str(info.value) == ("checkpoint.monitor: 'val_loss' is not a validation or train metric of this run "
                               "(did you mean 'val/loss'?) (validation: val/loss, val/mae)")
    assert steps(tmp_path) == [8, 12]  # saved before the first validation (step 16), and kept
    # A train record's field is a metric too (no warning, no error), and ranks the checkpoints.
    result, _ = train(tmp_path / "by_train_loss", **{"checkpoint.monitor": "loss", "checkpoint.every_n_steps": 4})
    assert result["step"] == 16
    assert read_json(tmp_path / "by_train_loss" / "summary.json")["best"]["monitor"] == "loss"


def test_an_epochs_last_step_is_saved_once(tmp_path):
    # every_n_steps lands on each epoch's last step (16): the epoch-end save follows at once, so
    # the every-N one is skipped (one write, one Ray/Tune report), and the save holds the next
    # epoch's position and the epoch-end validation.
    from raytrain_llm.core.callbacks import Callback
    from raytrain_llm.launchers.worker import train_worker
    from rt_testing import make_config

    class Saves(Callback):
        def __init__(self):
            self.steps = []

        def on_save_checkpoint(self, engine, path, metrics):
            self.steps.append((engine.global_step, engine.epoch, engine.batch_in_epoch, "val/loss" in metrics))

    saves = Saves()
    train_worker(make_config(tmp_path, **{"checkpoint.every_n_steps": 8, "training.epochs": 2}), extra_callbacks=[saves])
    assert saves.steps == [(8, 0, 8, False), (16, 1, 0, True), (24, 1, 8, False), (32, 2, 0, True)]


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    # mkstemp's 0600 made results on shared storage unreadable to everyone else.
    from raytrain_llm.core.atomic_io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "a.txt"), "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_a_checkpoint_between_two_logs_carries_the_train_metrics_of_its_own_step(tmp_path):
    # The train record is logged at the save: a checkpoint ranked by a train metric
    # (checkpoint.monitor=loss) is ranked by the steps up to it, not by an older log window.
    train(tmp_path, **{"logging.log_every_n_steps": 10, "checkpoint.every_n_steps": 5, "checkpoint.monitor": "loss",
                       "checkpoint.keep_last": 0, "training.validate": False})
    logged = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"}
    assert sorted(logged) == [5, 10, 15, 16]  # every 10 steps, at each save, and at the end
    for c in checkpoints(tmp_path):
        assert read_json(c / "meta.json")["metrics"]["loss"] == logged[ckpt_step(c)]


def test_train_records_at_validations_epoch_ends_and_saves_keep_throughput_and_epoch_right(tmp_path):
    # Validations and saves at steps that also log: their time stays out of every window, and the
    # record at an epoch's last step is stamped with that epoch, before its val record. The monitor
    # reads a clock that moves 1 s per micro-batch and 1000 s per validation or save, so a window
    # holding any part of a pause, or an empty one, shows as a step_time other than 1 s.
    clock = ManualClock()
    train(tmp_path, extra_callbacks=[Tick(clock, per_batch=1.0, per_pause=1000.0, monitor=True)],
          **{"training.epochs": 2, "logging.log_every_n_steps": 10, "training.val_every_n_steps": 5,
             "checkpoint.every_n_steps": 5})
    records = read_jsonl(tmp_path / "metrics.jsonl")
    trains = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in trains] == [5, 10, 15, 16, 20, 25, 30, 32]
    assert clock.now == 32 + 1000 * 16  # 32 micro-batches; a validation and a save at each record's step
    for r in trains:  # no window holds a validation or a save, none is empty
        assert (r["step_time"], r["data_wait"], r["samples_per_s"]) == (1.0, 0.0, 16.0), r
    at_16 = [(r["split"], r["epoch"]) for r in records if r["step"] == 16]
    assert at_16 == [("train", 1), ("val", 1)]
