"""Ray Tune sweeps (issue #5): validation before anything starts, a real 4-trial ASHA sweep of tiny
MoE language models, its results table, best config, plots, TensorBoard runs and resume.

The sweep runs once per module (about a minute on 2 cores) and the other tests read its outputs.
"""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping, load_config
from raytrain_llm.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
GOOD_LR, BAD_LR = 0.02, 1e-7

# 16 optimizer steps, a validation + checkpoint (= one Tune report) every 4: 4 reports per trial.
TINY_LM = {
    "task": "lm",
    "model": {"vocab_size": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16, "use_moe": True,
              "num_experts": 2, "top_k": 1},
    "data": {"num_train_samples": 256, "num_val_samples": 64},
    "training": {"batch_size": 16, "epochs": 1, "lr": GOOD_LR, "lr_schedule": "constant", "val_every_n_steps": 4,
                 "device": "cpu"},
    "checkpoint": {"every_n_steps": 4, "keep_last": 1, "keep_best": 0},
    "logging": {"log_every_n_steps": 4, "progress_bar": "off", "level": "WARNING"},
    # 0.25 CPU per worker: two trials at once still leave a whole CPU for their Ray Data tasks.
    "distributed": {"num_workers": 1, "cpus_per_worker": 0.25},
}


def write_sweep(path: Path, **body) -> str:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def base_config(tmp_path: Path) -> Config:
    data = {**TINY_LM, "logging": {**TINY_LM["logging"], "dir": str(tmp_path / "base_run")}}
    return config_from_mapping(data)


# ------------------------------------------------------------------ validation, no Ray needed
@pytest.mark.timeout(30)
def test_invalid_grid_points_rejected_before_anything_starts(tmp_path):
    from raytrain_llm.launchers.tune.runner import run_sweep

    sweep = write_sweep(tmp_path / "s.yaml", name="bad", storage_path=str(tmp_path / "sweeps"),
                        search_space={"model.num_experts": {"grid": [2, 4]}, "model.top_k": {"grid": [1, 4]}})
    with pytest.raises(ConfigError) as info:
        run_sweep(base_config(tmp_path), sweep)
    msg = str(info.value)
    assert "1 of 4 grid points are invalid" in msg
    assert "{model.num_experts: 2, model.top_k: 4}" in msg and "model.top_k: must be <= model.num_experts" in msg
    assert not (tmp_path / "sweeps").exists()  # nothing was started or written


@pytest.mark.timeout(30)
def test_sweep_file_errors_name_every_key(tmp_path):
    from raytrain_llm.launchers.tune.sweep_spec import load_sweep

    sweep = write_sweep(tmp_path / "s.yaml", metrc="val/loss", scheduler={"type": "asha", "grace": 2,
                                                                          "time_attr": "stepz"},
                        num_samples="two", search_space={
                            "model.num_expert": [2, 4], "model.top_k": {"grid": [1, "x"]},
                            "model.d_model": {"uniform": [8, 16]}, "training.lr": {"loguniform": [0, 1]},
                            "logging.dir": ["a"], "model.aux_loss_coef": {"normal": [0, 1]}})
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep)
    problems = "\n".join(info.value.problems)
    for expected in ("metrc: unknown sweep key (did you mean 'metric'?)", "scheduler.grace: unknown key",
                     "num_samples: must be an integer >= 1", "model.num_expert: not a key of Config",
                     "model.top_k: grid value 'x': expected an integer",
                     "model.d_model: uniform needs a number key", "training.lr: loguniform needs low > 0",
                     "logging.dir: set per trial by the sweep", "model.aux_loss_coef: unknown distribution",
                     "scheduler.time_attr: expected one of reports, training_iteration, steps, step, epoch, "
                     "time_total_s, a value every report carries that grows with training (got 'stepz') "
                     "(did you mean"):
        assert expected in problems, expected


@pytest.mark.timeout(60)
def test_cli_bad_sweep_file_exits_2(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml", search_space={"model.nope": [1]})
    proc = subprocess.run([sys.executable, "train.py", "--task", "lm", "--tune", sweep], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "model.nope: not a key of Config" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(30)
def test_random_points_reproducible_and_invalid_draws_resampled_or_skipped(tmp_path):
    from raytrain_llm.launchers.tune.search_space import build_points
    from raytrain_llm.launchers.tune.sweep_spec import parse_sweep

    base = base_config(tmp_path)
    body = {"num_samples": 12, "seed": 3, "search_space": {
        "model.num_experts": {"choice": [1, 2, 4]}, "model.top_k": {"randint": [1, 2]},
        "training.lr": {"loguniform": [1e-4, 1e-2]}}}
    points = build_points(parse_sweep(body, "s.yaml"), base)
    assert points == build_points(parse_sweep(body, "s.yaml"), base)  # same seed, same points
    assert len(points) == 12 and all(p["model.top_k"] <= p["model.num_experts"] for p in points)
    assert all(1e-4 <= p["training.lr"] <= 1e-2 for p in points)
    skipped = build_points(parse_sweep({**body, "invalid_points": "skip"}, "s.yaml"), base)
    assert len(skipped) < 12 and all(p["model.top_k"] <= p["model.num_experts"] for p in skipped)
    # With nothing valid to draw, the sweep is refused before it starts.
    hopeless = {"search_space": {"model.num_experts": {"choice": [1]}, "model.top_k": {"randint": [2, 3]}}}
    with pytest.raises(ConfigError, match="no valid random draw"):
        build_points(parse_sweep(hopeless, "s.yaml"), base)


@pytest.mark.timeout(30)
def test_base_config_file_sits_under_the_command_line(tmp_path):
    from raytrain_llm.launchers.tune.sweep_spec import merge_base

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"task": "lm", "training": {"lr": 0.005, "epochs": 7}}))
    cli = load_config(None, ["training.epochs=2"], environ={})
    merged = merge_base(cli, str(tmp_path / "base.yaml"))
    assert (merged.task, merged.training.lr, merged.training.epochs) == ("lm", 0.005, 2)
    # A command-line value equal to the built-in default still wins (epochs=1 is the default).
    from raytrain_llm.core.config_loader import load_config_and_keys

    cli, keys = load_config_and_keys(None, ["training.epochs=1", "task_options.width=3"], environ={},
                                     task="regression")
    assert keys == {"training.epochs", "task_options.width", "task"}
    merged = merge_base(cli, str(tmp_path / "base.yaml"), keys)
    assert (merged.task, merged.training.lr, merged.training.epochs) == ("regression", 0.005, 1)
    assert merged.task_options == {"width": "3"}


@pytest.mark.timeout(30)
def test_auto_concurrency_leaves_room_for_ray_data():
    # Each trial: 0.01 CPU + its workers; Ray Data's task needs a whole CPU on top.
    from raytrain_llm.launchers.tune.runner import auto_concurrency

    def cfg(workers, cpus):
        c = Config()
        c.distributed.num_workers, c.distributed.cpus_per_worker = workers, cpus
        return c

    assert auto_concurrency([cfg(1, 0.25)] * 4, {"CPU": 2.0}) == 3
    assert auto_concurrency([cfg(1, 0.5)] * 4, {"CPU": 2.0}) == 1
    assert auto_concurrency([cfg(2, 1.0)] * 4, {"CPU": 2.0}) == 1  # never 0: one trial always runs
    assert auto_concurrency([cfg(4, 1.0)] * 40, {"CPU": 64.0}) == 15


@pytest.mark.timeout(30)
def test_asha_judges_a_trial_on_validated_reports_only(tmp_path):
    # A checkpoint between two validations is reported without val/loss (it used to carry NaN,
    # which ASHA recorded at the rung, where NaN < cutoff is False: the trial passed unjudged).
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from raytrain_llm.launchers.tune.scheduler import RecordingASHA

    asha = RecordingASHA(str(tmp_path / "stopped.jsonl"), metric="val/loss", mode="min", time_attr="reports",
                         max_t=9, grace_period=1, reduction_factor=3)
    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    for trial in (good, bad):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, good, {"reports": 1, "val/loss": 2.6}) == TrialScheduler.CONTINUE
    # The bad trial's report at the rung is a checkpoint without validation...
    assert asha.on_trial_result(None, bad, {"reports": 1}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, bad, {"reports": 1, "val/loss": math.nan}) == TrialScheduler.CONTINUE
    # ...so its next validated report is judged at that rung, against the good trial.
    assert asha.on_trial_result(None, bad, {"reports": 2, "val/loss": 3.5}) == TrialScheduler.STOP
    assert "bad" in (tmp_path / "stopped.jsonl").read_text()


# ------------------------------------------------------------------ one real sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory, _ray_session_owner):
    from conftest import ensure_local_ray
    from raytrain_llm.launchers.tune.runner import run_sweep

    ensure_local_ray()
    tmp = tmp_path_factory.mktemp("tune")
    path = write_sweep(
        tmp / "sweep.yaml", name="moe", storage_path=str(tmp / "sweeps"),
        # lr first and one trial at a time, so the two bad trials start only after both good ones
        # have reported at every rung: ASHA's decision does not depend on how busy the machine is.
        search_space={"training.lr": {"grid": [GOOD_LR, BAD_LR]}, "model.num_experts": {"grid": [2, 4]},
                      "model.top_k": {"grid": [1]}},
        max_concurrent_trials=1, scheduler={"type": "asha", "grace_period": 1, "max_t": 4, "reduction_factor": 2})
    base = base_config(tmp)
    t0 = time.time()
    summary = run_sweep(base, path)
    return {"summary": summary, "path": path, "base": base, "dir": Path(summary["table_csv"]).parent,
            "seconds": time.time() - t0}


def read_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(240)
def test_sweep_completes_and_asha_stops_a_bad_trial(sweep):
    rows = read_rows(sweep["dir"])
    assert [r["trial"] for r in rows] == ["t000", "t001", "t002", "t003"]
    assert all(r["status"] in ("done", "stopped") and not r["error"] for r in rows), rows
    stopped = [r for r in rows if r["stopped early"] == "yes"]
    # Trials run one at a time: the first has nothing to be compared with at any rung and runs to
    # the end; ASHA may also cut the second good trial if it trails the first (that is ASHA doing
    # its job); both bad trials trail at the first rung and must be cut there.
    first = rows[0]
    assert first["stopped early"] == "no" and int(first["reports"]) >= 4 and int(first["steps"]) == 16
    bad = [r for r in rows if float(r["training.lr"]) == BAD_LR]
    assert len(bad) == 2 and all(r["stopped early"] == "yes" for r in bad), bad
    assert all(int(r["reports"]) < int(first["reports"]) and int(r["steps"]) < 16 for r in stopped)
    for r in rows:
        assert float(r["tokens/s"]) > 0 and float(r["expert load max/mean"]) >= 1.0
        assert int(r["total params"]) > int(r["active params"]) > 0 or int(r["model.num_experts"]) == 1
    best = sweep["summary"]["best"]
    assert best["point"]["training.lr"] == GOOD_LR
    assert best["folder"] == str(sweep["dir"] / "tensorboard" / best["trial"])
    assert Path(best["checkpoint"]).parent == Path(best["folder"]) / "checkpoints"
    assert (Path(best["checkpoint"]) / "state.pt").exists()  # the winner's weights, ready to load
    print(f"sweep took {sweep['seconds']:.1f}s")


@pytest.mark.timeout(120)
def test_results_table_matches_what_tune_reported(sweep):
    from ray import tune
    from raytrain_llm.launchers.tune.runner import run_trial

    grid = tune.Tuner.restore(str(sweep["dir"]), run_trial).get_results()
    rows = {r["trial"]: r for r in read_rows(sweep["dir"])}
    assert len(grid) == len(rows) == 4
    for result in grid:
        point = result.config["point"]
        row = rows[point["id"]]
        history = result.metrics_dataframe
        losses = [v for v in history["val/loss"] if math.isfinite(v)]
        assert int(row["reports"]) == len(history)
        assert float(row["val/loss final"]) == pytest.approx(losses[-1], rel=1e-12)
        assert float(row["val/loss best"]) == pytest.approx(min(losses), rel=1e-12)
        assert float(row["val/loss final"]) == pytest.approx(result.metrics["val/loss"], rel=1e-12)
        for key in ("training.lr", "model.num_experts", "model.top_k"):
            assert float(row[key]) == point[key]
    md = (sweep["dir"] / "results.md").read_text()
    assert md.count("\n| t00") == 4 and "| val/loss final |" in md


@pytest.mark.timeout(120)
def test_best_config_round_trips_and_plots_and_tensorboard_exist(sweep, tmp_path):
    from raytrain_llm.core.config_loader import dump_yaml
    from raytrain_llm.launchers.tune.search_space import apply_point

    best_path = sweep["summary"]["best_config"]
    loaded = load_config(best_path, environ={})
    point = {k: v for k, v in sweep["summary"]["best"]["point"].items()}
    expected = apply_point(sweep["base"], point)
    assert loaded.to_dict() == expected.to_dict()
    assert dump_yaml(load_config(best_path, environ={})) == dump_yaml(expected)  # idempotent
    assert loaded.distributed.cpus_per_worker == 0.25 and loaded.logging.dir == sweep["base"].logging.dir
    proc = subprocess.run([sys.executable, "train.py", "--config", best_path, "--print-config"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # The CLI reads it as written; it prints the task's options resolved (the lm task's defaults filled in).
    from raytrain_llm.core.task_options import options_dict, parse_task_options
    from raytrain_llm.tasks.lm_task import LanguageModelingTask
    want = yaml.safe_load(dump_yaml(expected))
    want["task_options"] = options_dict(parse_task_options(LanguageModelingTask.Options, want["task_options"], "lm"))
    assert yaml.safe_load(proc.stdout) == want
    plots = [Path(p) for p in sweep["summary"]["plots"]]
    assert {p.name for p in plots} == {"val_loss_vs_num_experts.png", "loss_curves.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    for trial in ("t000", "t001", "t002", "t003"):
        events = list((sweep["dir"] / "tensorboard" / trial).rglob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events for {trial}"
        # One TensorBoard run per trial: its HParams session sits in the run's own folder.
        assert {e.parent for e in events} == {sweep["dir"] / "tensorboard" / trial / "tensorboard"}, trial


@pytest.mark.timeout(180)
def test_rerun_resumes_without_redoing_finished_trials(sweep):
    from raytrain_llm.launchers.tune.runner import run_sweep

    def trial_files():  # everything the trials wrote: metrics, events, configs, checkpoints
        return {p: p.stat().st_mtime_ns for p in (sweep["dir"] / "tensorboard").glob("t*/**/*") if p.is_file()}

    before = trial_files()
    assert len({p.relative_to(sweep["dir"] / "tensorboard").parts[0] for p in before}) == 4
    assert len([p for p in before if p.name == "metrics.jsonl"]) == 4
    rows_before = read_rows(sweep["dir"])
    # After an interrupted and resumed sweep, Tune's saved state can hold a finished trial whose
    # last result lacks `done` (it sets the flag on a copy it does not save again): the trial's
    # status must decide, or the sweep reads "interrupted" (exit 130) on every rerun.
    for state_file in sweep["dir"].glob("experiment_state-*.json"):
        state = json.loads(state_file.read_text())
        for entry in state["trial_data"]:
            meta = json.loads(entry[1])
            if isinstance(meta.get("last_result"), dict):
                meta["last_result"]["done"] = False
            entry[1] = json.dumps(meta)
        state_file.write_text(json.dumps(state))
    summary = run_sweep(sweep["base"], sweep["path"])
    assert trial_files() == before  # no trial started again: not a file written, none added
    assert read_rows(sweep["dir"]) == rows_before
    assert summary["best"] == sweep["summary"]["best"]


@pytest.mark.timeout(60)
def test_changed_search_space_under_the_same_name_is_refused(sweep, tmp_path):
    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.launchers.tune.runner import run_sweep

    body = yaml.safe_load(Path(sweep["path"]).read_text())
    body["search_space"]["model.num_experts"] = {"grid": [2, 8]}
    changed = write_sweep(tmp_path / "sweep.yaml", **body)
    with pytest.raises(UsageError, match="different search space"):
        run_sweep(sweep["base"], changed)


@pytest.mark.timeout(60)
def test_a_sweep_refused_before_it_ran_leaves_its_name_free(tmp_path):
    # e.g. refused as not fitting the machine: its record was written, no trial ever started.
    from raytrain_llm.launchers.tune.runner import POINTS_FILE, _check_same_sweep, plan

    sweep = write_sweep(tmp_path / "s.yaml", name="refused", storage_path=str(tmp_path / "sweeps"),
                        search_space={"model.num_experts": {"grid": [2, 4]}})
    spec, base, points = plan(base_config(tmp_path), sweep)
    _check_same_sweep(spec, points, base)
    assert (Path(spec.sweep_dir) / POINTS_FILE).exists()
    spec, base, points = plan(base_config(tmp_path), write_sweep(
        tmp_path / "s.yaml", name="refused", storage_path=str(tmp_path / "sweeps"),
        search_space={"model.num_experts": {"grid": [2, 8]}}))
    _check_same_sweep(spec, points, base)  # no Tune state beside the record: not refused
    assert json.loads((Path(spec.sweep_dir) / POINTS_FILE).read_text())["points"] == points


@pytest.mark.timeout(240)
def test_a_misspelt_metric_is_named_with_what_trials_reported(tmp_path, _ray_session_owner):
    from conftest import ensure_local_ray
    from raytrain_llm.core.errors import UsageError
    from raytrain_llm.launchers.tune.runner import run_sweep

    ensure_local_ray()
    path = write_sweep(tmp_path / "sweep.yaml", name="typo", storage_path=str(tmp_path / "sweeps"),
                       search_space={"model.num_experts": {"grid": [2]}}, metric="ce_los", scheduler="none")
    base = base_config(tmp_path)
    base.training.max_steps = 4
    with pytest.raises(UsageError) as info:  # exit 2: a mistake in the sweep file
        run_sweep(base, path)
    # A misspelt val/ metric of a built-in task is refused before Ray starts (test_sweep_space);
    # a train metric's names depend on the run, so the trial stops at its first validation.
    assert ("no trial reported ce_los (t000: UsageError: checkpoint.monitor: 'ce_los' is not a validation or "
            "train metric of this run (did you mean 'ce_loss'?)") in str(info.value)
    # The trial ranked its checkpoints by the sweep's metric (the summary's best checkpoint is its best).
    trial = yaml.safe_load((tmp_path / "sweeps" / "typo" / "tensorboard" / "t000" / "config.yaml").read_text())
    assert trial["checkpoint"]["monitor"] == "ce_los"


@pytest.mark.timeout(60)
def test_a_resumed_trials_row_keeps_the_reports_tune_dropped(tmp_path):
    # Tune's history of a resumed trial starts over at the restore point; the engine's
    # metrics.jsonl still holds every validation once, up to the last report.
    from raytrain_llm.launchers.tune.report import logged_metric, make_row
    from raytrain_llm.launchers.tune.sweep_spec import parse_sweep

    folder = tmp_path / "t000"
    folder.mkdir()
    losses = {4: 3.0, 8: 2.0, 12: 2.5, 16: 2.4, 20: 1.0}  # step 20: logged after the last report
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"split": "val", "step": s, "val/loss": v}) + "\n" for s, v in losses.items()) + '{"split": "tr')
    spec = parse_sweep({"search_space": {"model.num_experts": {"grid": [2]}}}, str(tmp_path / "s.yaml"))
    history = [{"step": 12, "val/loss": 2.5, "training_iteration": 1},
               {"step": 16, "val/loss": 2.4, "training_iteration": 2}]
    row = make_row(spec, base_config(tmp_path), {"id": "t000", "model.num_experts": 2}, history, None, None, {},
                   logged=logged_metric(str(folder), "val/loss"))
    assert row["val/loss best"] == 2.0 and row["val/loss final"] == 2.4 and row["reports"] == 2
    assert row["_curve"] == [(4, 3.0), (8, 2.0), (12, 2.5), (16, 2.4)]
