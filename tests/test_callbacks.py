"""Callbacks: TensorBoard scalars (read back by TensorBoard itself), metrics.jsonl and summary.json,
EarlyStopping (unit and end-to-end) and LRSchedulerCallback."""
from __future__ import annotations

import io
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from raytrain_llm.core.callbacks import EarlyStopping, LRSchedulerCallback, ProgressBar
from raytrain_llm.core.errors import UsageError
from raytrain_llm.core.task import LRSchedule
from rt_testing import ManualClock, Tick, checkpoints, ckpt_step, final_state, load_state, read_json, read_jsonl, train

TRAIN_FIELDS = {"step", "epoch", "split", "loss", "lr", "grad_norm", "mae", "step_time", "data_wait",
                "data_wait_share", "samples_per_s", "memory_gib"}


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("logged")
    train(d, **{"logging.tensorboard": True, "training.val_every_n_steps": 4, "training.epochs": 2,
                "training.warmup_steps": 3, "training.lr": 0.01, "checkpoint.every_n_steps": 4})
    return d


def test_metrics_jsonl_fields_and_values(logged_run):
    records = read_jsonl(logged_run / "metrics.jsonl")
    train_recs = [r for r in records if r["split"] == "train"]
    val_recs = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train_recs] == list(range(1, 33))  # log_every_n_steps=1, 16 steps/epoch
    assert [r["step"] for r in val_recs] == list(range(4, 33, 4))
    schedule = LRSchedule("cosine", 3, 32 - 3, 0.1)
    for r in train_recs:
        assert set(r) == TRAIN_FIELDS, set(r) ^ TRAIN_FIELDS
        assert r["epoch"] == (r["step"] - 1) // 16 + 1  # counted from 1
        assert r["lr"] == pytest.approx(0.01 * schedule(r["step"] - 1), rel=1e-9)  # the LR step `step` used
        assert math.isfinite(r["loss"]) and r["loss"] > 0 and r["grad_norm"] > 0
        assert r["step_time"] > 0 and 0 <= r["data_wait"] <= r["step_time"] and 0 <= r["data_wait_share"] <= 1
        assert r["samples_per_s"] == pytest.approx(16 / r["step_time"], rel=1e-6)  # one 16-sample step per record
        assert 0.01 < r["memory_gib"] < 64
    for r in val_recs:
        assert set(r) == {"step", "epoch", "split", "val/loss", "val/mae"}
        assert 0 < r["val/loss"] < 10
    assert val_recs[-1]["val/loss"] < val_recs[0]["val/loss"]


def test_summary_json(logged_run):
    s = read_json(logged_run / "summary.json")
    records = read_jsonl(logged_run / "metrics.jsonl")
    val_recs = [r for r in records if r["split"] == "val"]
    assert s["task"] == "regression" and s["global_step"] == 32 and s["epochs_completed"] == 2
    assert s["stopped_early"] is False and s["skipped_steps"] == 0
    assert s["final"]["train"] == [r for r in records if r["split"] == "train"][-1]
    assert s["final"]["val"] == val_recs[-1]
    best = min(val_recs, key=lambda r: r["val/loss"])
    assert s["best"]["monitor"] == "val/loss" and s["best"]["mode"] == "min"
    assert s["best"]["value"] == best["val/loss"] and s["best"]["record"] == best
    assert os.path.isdir(s["best_checkpoint"]) and ckpt_step(s["best_checkpoint"]) == best["step"]
    assert read_json(os.path.join(s["best_checkpoint"], "meta.json"))["metrics"]["val/loss"] == best["val/loss"]
    assert s["latest_checkpoint"] == str(checkpoints(logged_run)[-1]) and ckpt_step(s["latest_checkpoint"]) == 32
    assert s["wall_time_s"] > 0


def test_tensorboard_scalars_match_metrics_jsonl(logged_run):
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in read_jsonl(logged_run / "metrics.jsonl"):
        for k, v in r.items():
            if k in ("step", "epoch", "split"):
                continue
            tag = k if "/" in k else f"{r['split']}/{k}"
            expected.setdefault(tag, []).append((r["step"], v))
    acc = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(expected)
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss"} <= set(expected)
    for tag, points in expected.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in points], tag
        for e, (_, v) in zip(events, points):
            assert e.value == pytest.approx(v, rel=1e-6, abs=1e-12), tag  # stored as float32
    # The config is an HParams session of the same run, its metrics the run's own tags.
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = {tag: HParamsPluginData.FromString(data) for tag, data in acc.PluginTagToContent("hparams").items()}
    start = content["_hparams_/session_start_info"].session_start_info
    assert start.hparams["model.hidden_dim"].number_value == 16 and start.hparams["task"].string_value == "regression"
    metric_tags = {m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos}
    assert {"val/loss", "train/loss"} <= metric_tags <= set(expected)
    assert "_hparams_/session_end_info" in content
    assert [p.name for p in (logged_run / "tensorboard").iterdir() if p.is_dir()] == []  # one run, no hparams/


def test_a_run_without_tensorboardx_says_so_and_trains(tmp_path, monkeypatch):
    # GPU boxes may lack tensorboardX: the run goes on, and says once that TensorBoard is off.
    for name in [m for m in sys.modules if m.split(".")[0] == "tensorboardX"] + ["tensorboardX"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it (or a submodule) raises ImportError
    result, _ = train(tmp_path, **{"logging.tensorboard": True})
    assert result["step"] == 16 and not (tmp_path / "tensorboard").exists()
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert log.count("TensorBoard logging is off: tensorboardX is not installed") == 1


# ----------------------------------------------------------------------------- EarlyStopping
class FakeEngine:
    def __init__(self):
        self.stop_reason = None

    def request_stop(self, reason):
        self.stop_reason = reason


def run_checks(cb, values, key="val/loss"):
    engine = FakeEngine()
    for i, v in enumerate(values, 1):
        cb.on_validation_end(engine, {key: v})
        if engine.stop_reason:
            return i, engine.stop_reason
    return None, None


@pytest.mark.parametrize("values,kwargs,stop_at", [
    ([5, 4, 3, 3.5, 3.2, 3.1, 2], dict(patience=2), 5),  # checks 4 and 5 fail to beat 3
    ([5, 4, 3, 3.5, 2.9, 3.1, 3.0], dict(patience=2), 7),  # an improvement resets the count
    ([5, 4, 3, 3, 3], dict(patience=1), 4),  # equal is not better
    ([1.0, 0.95, 0.92, 0.5], dict(patience=2, min_delta=0.1), 3),  # too small improvements count as bad
    ([1, 2, 3, 2.5, 2.9], dict(patience=2, mode="max"), 5),
    ([1, 2, float("nan")], dict(patience=5), 3),  # non-finite stops at once
    ([5, 4, 3, 2, 1], dict(patience=1), None),
])
def test_early_stopping_unit(values, kwargs, stop_at):
    cb = EarlyStopping(**kwargs)
    at, reason = run_checks(cb, values)
    assert at == stop_at
    if stop_at:
        assert cb.stopped_at_check == stop_at and reason.startswith("early stopping: val/loss")


def test_early_stopping_refuses_a_missing_monitor_and_resumes_state():
    with pytest.raises(UsageError, match=r"^EarlyStopping.monitor: 'val/mae' is not among"):
        run_checks(EarlyStopping(monitor="val/mae"), [1.0])  # a task's own: no config key to blame
    cb = EarlyStopping(patience=2, setting="callbacks.monitor")
    run_checks(cb, [3, 2, 2.5])
    with pytest.raises(UsageError, match=r"callbacks.monitor: 'val/loss' is not among the validation metrics \(val/los\)"):
        run_checks(cb, [9], key="val/los")  # a typo must not leave early stopping silently off
    assert cb.checks == 3
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(cb.state_dict())
    at, _ = run_checks(restored, [2.2])  # third bad check in a row across the "resume"
    assert at == 1 and restored.stopped_at_check == 4


def test_early_stopping_end_to_end(tmp_path, monkeypatch):
    # One validation batch per check (16 samples, batch 16), so check i reports RT_VAL_LOSSES[i].
    monkeypatch.setenv("RT_VAL_LOSSES", "5,4,3,3.5,3.2,3.1,1")
    result, _ = train(tmp_path, task="rt_helpers:ScriptedValTask",
                      **{"data.num_val_samples": 16, "training.val_every_n_steps": 2, "training.epochs": 2,
                         "callbacks.early_stopping": True, "callbacks.early_stopping_patience": 2})
    assert result["step"] == 10  # check 5 happens at step 10
    vals = [r["val/loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "val"]
    assert vals == pytest.approx([5, 4, 3, 3.5, 3.2])  # float32 losses
    s = read_json(tmp_path / "summary.json")
    assert s["stopped_early"] is True and s["global_step"] == 10 and s["best"]["value"] == 3
    # Resumed, it stays stopped, as a finished run stays finished; a larger patience trains on.
    again, _ = train(tmp_path, task="rt_helpers:ScriptedValTask",
                     **{"data.num_val_samples": 16, "training.val_every_n_steps": 2, "training.epochs": 2,
                        "callbacks.early_stopping": True, "callbacks.early_stopping_patience": 2,
                        "checkpoint.resume": "auto"})
    assert again["step"] == 10 and read_json(tmp_path / "summary.json")["stopped_early"] is True
    assert again["val"]["val/loss"] == pytest.approx(3.2)  # the checkpoint's validation, not a new one
    assert max(r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")) == 10
    more, _ = train(tmp_path, task="rt_helpers:ScriptedValTask",
                    **{"data.num_val_samples": 16, "training.val_every_n_steps": 2, "training.epochs": 2,
                       "callbacks.early_stopping": True, "callbacks.early_stopping_patience": 9,
                       "checkpoint.resume": "auto"})
    assert more["step"] > 10 and max(r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")) == more["step"]


# ----------------------------------------------------------------------------- LRSchedulerCallback
def test_lr_scheduler_callback_records_changes():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    engine = SimpleNamespace(optimizer=opt, scheduler=None, global_step=0)
    cb = LRSchedulerCallback()
    cb.on_train_start(engine)
    for step, lr in enumerate([1.0, 1.0, 0.5, 0.5, 0.25], 1):  # the LR each step uses
        opt.param_groups[0]["lr"] = lr
        engine.global_step = step - 1
        cb.on_batch_start(engine, 0)
        cb.on_batch_start(engine, 1)  # a second micro-batch of the same step
    assert cb.history == [(0, [1.0]), (3, [0.5]), (5, [0.25])]
    again = LRSchedulerCallback()
    again.load_state_dict(cb.state_dict())
    assert again.history == cb.history


def test_lr_scheduler_callback_drives_reduce_on_plateau(tmp_path, monkeypatch):
    # ReduceLROnPlateau(patience=1, factor=0.5): halves after the 2nd bad check in a row,
    # i.e. at checks 4 and 7 (steps 8 and 14 with a check every 2 steps).
    monkeypatch.setenv("RT_VAL_LOSSES", "5,4,4.5,4.6,3,3.1,3.2")
    train(tmp_path, task="rt_helpers:PlateauTask",
          **{"data.num_val_samples": 16, "training.val_every_n_steps": 2, "training.lr": 0.01})
    lrs = {r["step"]: r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"}
    assert all(lrs[s] == 0.01 for s in range(1, 9))
    assert all(lrs[s] == 0.005 for s in range(9, 15))
    assert lrs[15] == lrs[16] == 0.0025
    history = load_state(checkpoints(tmp_path)[-1])["callbacks"]["LRSchedulerCallback"]["history"]
    assert history == [[0, [0.01, 0.01]], [9, [0.005, 0.005]], [15, [0.0025, 0.0025]]]


def test_plateau_scheduler_follows_a_train_metric_monitor(tmp_path):
    # checkpoint.monitor may name a train metric; the plateau is judged on the latest train record's.
    # Logs rarer than validations: the engine logs a train record at each validation step, so
    # the plateau sees each check's own value (an older record's would repeat as "no improvement").
    train(tmp_path, task="rt_helpers:TrainMetricPlateauTask",
          **{"checkpoint.monitor": "call", "training.val_every_n_steps": 4, "training.lr": 0.01,
             "logging.log_every_n_steps": 8})
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert lrs[0] == 0.01 and lrs[-1] == 0.005  # `call` grew at checks 2 and 3: halved once


@pytest.mark.parametrize("accum", [1, 2])
def test_logged_metrics_average_over_the_steps_that_reported_them(tmp_path, accum):
    train(tmp_path, task="rt_helpers:SparseMetricTask",
          **{"logging.log_every_n_steps": 4 // accum, "training.grad_accum_steps": accum})
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in records] == [s // accum for s in (4, 8, 12, 16)]
    # train_step calls 1-4 report `call` at 1 and 3 only: their mean, not their sum over 4.
    assert [r["call"] for r in records] == [2.0, 6.0, 10.0, 14.0]
    assert all(r["half"] == 0.5 and r["loss"] > 0 and r["grad_norm"] > 0 for r in records)


# ----------------------------------------------------------------------------- Profiler
def test_profiler_traces_the_chosen_steps_and_a_run_that_ends_inside_them(tmp_path):
    # 256 samples / batch 16 / accumulation 2 = 8 optimizer steps.
    train(tmp_path / "a", **{"training.grad_accum_steps": 2, "callbacks.profile_start_step": 3,
                             "callbacks.profile_steps": 2})
    train(tmp_path / "b", **{"training.grad_accum_steps": 2, "callbacks.profile_start_step": 7,
                             "callbacks.profile_steps": 5})
    for run, steps in (("a", "3-4"), ("b", "7-8")):
        out = tmp_path / run / "profiler"
        assert sorted(p.name for p in out.iterdir()) == [f"rank0_steps{steps}.trace.json", f"rank0_steps{steps}.txt"]
        events = read_json(out / f"rank0_steps{steps}.trace.json")["traceEvents"]
        names = {e.get("name", "") for e in events}
        first, last = (int(s) for s in steps.split("-"))
        # One range per optimizer step, and the model's matmuls in them.
        assert {n for n in names if n.startswith("optimizer step")} == {
            f"optimizer step {s}" for s in range(first, last + 1)}, sorted(names)[:20]
        assert names & {"aten::addmm", "aten::mm", "aten::linear"}
        assert "Self CPU" in (out / f"rank0_steps{steps}.txt").read_text()
        assert f"profiled steps {steps}" in (tmp_path / run / "logs" / "rank0.log").read_text()


# ----------------------------------------------------------------------------- MetricsLogger files
def test_a_cut_off_metrics_line_does_not_block_resume_and_a_fresh_run_starts_its_own_file(tmp_path):
    train(tmp_path, **{"training.max_steps": 8})
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"split": "train", "step": 9, "epo')  # the process died mid-write
    result, _ = train(tmp_path, **{"checkpoint.resume": "auto"})
    assert result["step"] == 16
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 17))
    # Without checkpoints a rerun into the same folder starts over: the old records move aside.
    train(tmp_path / "nockpt", **{"checkpoint.enabled": False, "training.max_steps": 3})
    train(tmp_path / "nockpt", **{"checkpoint.enabled": False, "training.max_steps": 2})
    assert [r["step"] for r in read_jsonl(tmp_path / "nockpt" / "metrics.jsonl") if r["split"] == "train"] == [1, 2]
    aside = [p for p in os.listdir(tmp_path / "nockpt") if p.startswith("metrics-") and p.endswith(".jsonl")]
    assert len(aside) == 1
    assert [r["step"] for r in read_jsonl(tmp_path / "nockpt" / aside[0]) if r["split"] == "train"] == [1, 2, 3]


def test_throughput_leaves_out_validation_and_checkpoint_time():
    from raytrain_llm.core.monitoring import PerformanceMonitor

    clock = ManualClock()
    monitor = PerformanceMonitor(torch.device("cpu"), clock=clock)
    monitor.reset_window()
    monitor.data_start()
    clock.now += 0.02  # waiting for the batch
    monitor.data_end()
    clock.now += 0.08
    monitor.step_done(16, 1024)
    with monitor.paused():
        clock.now += 5.0  # a validation pass between two logged steps
    clock.now += 0.1
    monitor.step_done(16, 1024)
    out = monitor.summary()
    assert out["step_time"] == pytest.approx(0.1) and out["data_wait"] == pytest.approx(0.01)
    assert out["tokens_per_s"] == pytest.approx(2048 / 0.2) and out["samples_per_s"] == pytest.approx(32 / 0.2)
    assert out["data_wait_share"] == pytest.approx(0.02 / 0.2)
    # A window that opens inside a pause (a record logged inside a validation) loses only the
    # rest of that pause, never more than it holds.
    with monitor.paused():
        clock.now += 3.0
        monitor.reset_window()
        clock.now += 2.0
    clock.now += 0.5
    monitor.step_done(16, None)
    out = monitor.summary()
    assert out["step_time"] == pytest.approx(0.5) and "tokens_per_s" not in out


# ----------------------------------------------------------------------------- a task's own callbacks
def test_a_task_adds_its_own_callbacks_and_their_state_survives_a_resume(tmp_path):
    kw = {"checkpoint.every_n_steps": 4, "callbacks.early_stopping": True, "callbacks.early_stopping_patience": 50,
          "training.val_every_n_steps": 8}
    first, _ = train(tmp_path, task="rt_helpers:OwnCallbacksTask", **kw)
    states = final_state(tmp_path)["callbacks"]
    assert states["StepCounter"] == {"steps": 16} and first["step"] == 16
    # The config's EarlyStopping and the task's each keep their own slot.
    val = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "val"]
    assert states["EarlyStopping"]["best"] == pytest.approx(min(r["val/loss"] for r in val))
    assert states["EarlyStopping#2"]["best"] == pytest.approx(min(r["val/mae"] for r in val))
    assert states["EarlyStopping"]["checks"] == states["EarlyStopping#2"]["checks"] == 2
    second, _ = train(tmp_path, task="rt_helpers:OwnCallbacksTask", **kw,
                      **{"training.epochs": 2, "checkpoint.resume": "auto"})
    states = final_state(tmp_path)["callbacks"]
    assert second["step"] == 32 and states["StepCounter"] == {"steps": 32}  # counted on from 16
    assert states["EarlyStopping#2"]["checks"] == 4


def test_a_callback_that_is_not_a_callback_is_refused(tmp_path):
    from raytrain_llm.core.callbacks import CallbackList

    with pytest.raises(UsageError, match=r"callbacks: 'log' is not a raytrain_llm.core.callbacks.Callback"):
        CallbackList(["log"])


# ----------------------------------------------------------------------------- MetricsLogger across resumes
def test_a_finished_run_resumed_with_nothing_left_keeps_its_final_records(tmp_path):
    train(tmp_path, **{"checkpoint.every_n_steps": 8})
    before = read_json(tmp_path / "summary.json")
    again, _ = train(tmp_path, **{"checkpoint.every_n_steps": 8, "checkpoint.resume": "auto"})
    after = read_json(tmp_path / "summary.json")
    assert again["step"] == 16 and after["final"] == before["final"] and after["final"]["val"]["step"] == 16
    assert after["best"] == before["best"]
    earlier = final_state(tmp_path)["callbacks"]["MetricsLogger"]["wall_time_s"]
    assert 0 < earlier <= after["wall_time_s"]  # the first segment's time counts too


def test_resuming_another_runs_checkpoint_moves_this_folders_metrics_aside(tmp_path):
    train(tmp_path / "here", **{"checkpoint.enabled": False})  # 16 steps of an unrelated run
    train(tmp_path / "there", **{"checkpoint.every_n_steps": 8})
    source = checkpoints(tmp_path / "there")[0]
    assert ckpt_step(source) == 8
    result, _ = train(tmp_path / "here", **{"checkpoint.resume": str(source)})
    assert result["step"] == 16
    steps = [r["step"] for r in read_jsonl(tmp_path / "here" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(9, 17))  # only this run's own steps, none of the other run's 1..16
    aside = [p for p in (tmp_path / "here").iterdir() if p.name.startswith("metrics-")]
    assert len(aside) == 1 and len([r for r in read_jsonl(aside[0]) if r["split"] == "train"]) == 16


def _progress_lines(run_dir) -> list[str]:
    return [line.split("] ", 1)[1] for line in (run_dir / "logs" / "rank0.log").read_text().splitlines()
            if "] step " in line]


def test_without_a_terminal_progress_is_logged_in_lines(tmp_path):
    # progress_bar=auto and no TTY (pytest captures stderr): lines in the log instead of a bar.
    train(tmp_path / "auto", **{"logging.progress_bar": "auto", "training.max_steps": 2})
    assert _progress_lines(tmp_path / "auto")[0].startswith("step 1/2 epoch 1 loss ")
    train(tmp_path / "off", **{"logging.progress_bar": "off"})
    assert "] step " not in (tmp_path / "off" / "logs" / "rank0.log").read_text()
    # The same bar (no terminal, left to decide) on a clock that does not move: no 30 s interval
    # passes, so the first train record, one every tenth of the run (4 of 32 steps), the last one
    # and each validation.
    bar = ProgressBar(stream=io.StringIO(), clock=ManualClock())
    train(tmp_path / "still", extra_callbacks=[bar], **{"logging.progress_bar": "off", "training.epochs": 2})
    lines = _progress_lines(tmp_path / "still")
    assert bar.log_lines and bar.stream.getvalue() == ""  # lines in the log, nothing drawn
    assert lines[0].startswith("step 1/32 epoch 1 loss ") and " lr " in lines[0] and " eta " not in lines[0]
    assert [int(line.split()[1].split("/")[0]) for line in lines if " loss " in line] == [1, 5, 9, 13, 17, 21, 25, 29, 32]
    assert [line.split(" val/loss")[0] for line in lines if "val/loss" in line] == \
        ["step 16/32 epoch 1", "step 32/32 epoch 2"]  # the epoch that ended, as train records count
    assert lines[1].endswith(" eta 0:00:00") and lines[-2].startswith("step 32/32 epoch 2 loss ")


def test_progress_lines_come_every_30_seconds_with_the_eta_of_the_pace_after_warm_up(tmp_path):
    clock = ManualClock()  # 10 s per step: 30 s pass before a tenth of the run (4 steps) does
    train(tmp_path, extra_callbacks=[Tick(clock, per_batch=10.0), ProgressBar(stream=io.StringIO(), clock=clock)],
          **{"logging.progress_bar": "off", "training.epochs": 2, "training.validate": False})
    lines = _progress_lines(tmp_path)
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [*range(1, 32, 3), 32]
    assert " eta " not in lines[0]  # the first steps (warm-up) give no estimate
    assert lines[1].startswith("step 4/32 ") and lines[1].endswith(" eta 0:04:40")  # 10 s a step since step 2, 28 to go
    assert " eta " not in lines[-1]  # nothing left


def test_the_bar_on_a_terminal_that_is_not_its_stream_redraws_at_most_every_fifth_of_a_second(tmp_path):
    # Under Ray, rank 0's stream is a file the driver relays to its terminal: the driver says so.
    clock, out = ManualClock(), io.StringIO()
    bar = ProgressBar(stream=out, terminal=True, clock=clock)
    train(tmp_path, extra_callbacks=[Tick(clock, per_batch=0.125), bar],
          **{"logging.progress_bar": "off", "training.validate": False})
    frames = out.getvalue().split("\r")[1:]
    assert bar.enabled and not bar.log_lines and "] step " not in (tmp_path / "logs" / "rank0.log").read_text()
    # 16 steps of 0.125 s: a frame every other step, and the last one
    assert [f.split("] ")[1].split()[0] for f in frames] == [f"{s}/16" for s in (1, 3, 5, 7, 9, 11, 13, 15, 16)]
    assert frames[-1].startswith("[" + "#" * 30 + "] 16/16 ep 1 ") and frames[-1].endswith("\x1b[K\n")


def test_a_rerun_without_checkpoints_moves_the_earlier_runs_events_aside(tmp_path):
    settings = {"logging.tensorboard": "true", "checkpoint.enabled": "false", "training.max_steps": 4}
    train(tmp_path, **settings)
    train(tmp_path, **{**settings, "training.max_steps": 3})
    earlier = [p for p in (tmp_path / "tensorboard").iterdir() if p.name.startswith("earlier-")]
    assert len(earlier) == 1
    steps = {}
    for folder in (tmp_path / "tensorboard", earlier[0]):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        steps[folder.name] = [e.step for e in acc.Scalars("train/loss")]
    assert steps == {"tensorboard": [1, 2, 3], earlier[0].name: [1, 2, 3, 4]}
