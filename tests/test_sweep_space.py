"""A sweep's points, built and checked before Ray starts: task options as sweep keys, and keys
that another setting switches off in every trial."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping
from raytrain_llm.core.errors import ConfigError
from raytrain_llm.launchers.tune.runner import trial_config
from raytrain_llm.launchers.tune.search_space import build_points, inactive_keys
from raytrain_llm.launchers.tune.sweep_spec import parse_sweep
from rt_helpers import OptionsTask

REPO = Path(__file__).resolve().parents[1]


def base(tmp_path, task="rt_helpers:OptionsTask", **sections) -> Config:
    return config_from_mapping({"task": task, "logging": {"dir": str(tmp_path / "run")}, **sections})


@pytest.mark.timeout(30)
def test_task_options_are_swept_and_reach_the_task(tmp_path):
    spec = parse_sweep({"search_space": {"task_options.width": [4, 16], "task_options.scale":
                                         {"loguniform": [0.1, 10.0]}}, "seed": 1}, "s.yaml")
    points = build_points(spec, base(tmp_path))
    assert [p["task_options.width"] for p in points] == [4, 16]
    for point in points:
        task = OptionsTask(trial_config(base(tmp_path), point, str(tmp_path / "sweep")))
        assert task.options.width == point["task_options.width"]
        assert task.options.scale == pytest.approx(point["task_options.scale"]) and 0.1 <= task.options.scale <= 10


@pytest.mark.timeout(30)
def test_bad_task_option_values_are_refused_naming_the_option(tmp_path):
    spec = parse_sweep({"search_space": {"task_options.width": [4, "wide"]}}, "s.yaml")
    with pytest.raises(ConfigError) as info:
        build_points(spec, base(tmp_path))
    assert "1 of 2 grid points are invalid" in str(info.value)
    assert "{task_options.width: 'wide'}: task_options.width: expected an integer, got 'wide'" in str(info.value)
    # A misspelt option is named with the task's options; a randint over a float option draws
    # values the task rejects, so no draw is valid.
    with pytest.raises(ConfigError, match=r"task_options\.widht: unknown option of task .*did you mean 'width'"):
        build_points(parse_sweep({"search_space": {"task_options.widht": [4]}}, "s.yaml"), base(tmp_path))
    with pytest.raises(ConfigError, match="randint needs an integer key and integer bounds"):
        parse_sweep({"search_space": {"task_options.width": {"randint": [1.5, 4]}}}, "s.yaml")
    with pytest.raises(ConfigError, match="task_options.tag: expected a string"):
        build_points(parse_sweep({"search_space": {"task_options.tag": {"uniform": [0.0, 1.0]}}}, "s.yaml"),
                     base(tmp_path))


@pytest.mark.timeout(30)
def test_a_key_switched_off_in_every_trial_refuses_the_sweep(tmp_path):
    lm = base(tmp_path, task="lm")
    with pytest.raises(ConfigError) as info:
        build_points(parse_sweep({"search_space": {"model.num_experts": [2, 4], "training.lr": [1e-3, 1e-2]}},
                                 "s.yaml"), lm)
    assert len(info.value.problems) == 1 and info.value.problems[0].endswith(
        "s.yaml: search_space.model.num_experts: has no effect in any trial (model.use_moe is false): trials "
        "that differ only in it would train the same model; drop the key, or sweep or set what switches it on")
    # Switched on in some trials is fine (the MoE ones differ), and so is a base that switches it on.
    assert len(build_points(parse_sweep({"search_space": {"model.use_moe": [False, True],
                                                          "model.num_experts": [2, 4]}}, "s.yaml"), lm)) == 4
    moe = base(tmp_path, task="lm", model={"use_moe": True})
    assert len(build_points(parse_sweep({"search_space": {"model.num_experts": [2, 4]}}, "s.yaml"), moe)) == 2


@pytest.mark.timeout(30)
def test_a_sweep_metric_the_task_does_not_report_refuses_the_sweep(tmp_path):
    lm = base(tmp_path, task="lm")
    lrs = {"training.lr": [1e-3, 1e-2]}
    with pytest.raises(ConfigError) as info:
        build_points(parse_sweep({"search_space": lrs, "metric": "val/perplexty"}, "s.yaml"), lm)
    assert len(info.value.problems) == 1 and info.value.problems[0].endswith(
        "s.yaml: metric: 'val/perplexty' is not a validation metric of task 'lm' (did you mean 'val/perplexity'?) "
        "(validation: val/loss, val/perplexity)")
    # Missing in some trials only: those trials would stop at their first validation.
    declaring = base(tmp_path, task="rt_helpers:TaggedMetricTask")
    with pytest.raises(ConfigError, match=r"'val/mae' is not a validation metric .* in 1 of 2 trials, e\.g\. "
                                          r"\{task_options\.tag: 'none'\}"):
        build_points(parse_sweep({"search_space": {"task_options.tag": ["mae", "none"]}, "metric": "val/mae"},
                                 "s.yaml"), declaring)
    # An early-stopping trial's callbacks.monitor too, per trial: what the trial's task declares.
    with pytest.raises(ConfigError, match=r"s\.yaml: callbacks\.monitor: 'val/los' is not a validation metric of "
                                          r"task 'lm' \(did you mean 'val/loss'\?\).* in 1 of 2 trials"):
        build_points(parse_sweep({"search_space": {"callbacks.monitor": ["val/los", "val/loss"]}}, "s.yaml"),
                     base(tmp_path, task="lm", callbacks={"early_stopping": True}))
    stopping = base(tmp_path, task="rt_helpers:TaggedMetricTask",
                    callbacks={"early_stopping": True, "monitor": "val/mae"})
    assert len(build_points(parse_sweep({"search_space": {"task_options.tag": ["mae"]}}, "s.yaml"), stopping)) == 1
    # Train-record metrics, and tasks that declare nothing, are checked at the first validation.
    assert len(build_points(parse_sweep({"search_space": lrs, "metric": "ce_loss"}, "s.yaml"), lm)) == 2
    assert len(build_points(parse_sweep({"search_space": {"task_options.width": [4, 8]}, "metric": "val/acc"},
                                        "s.yaml"), base(tmp_path, task="rt_helpers:CustomValTask"))) == 2


def test_inactive_keys_follow_their_switches():
    off = inactive_keys(Config(task="lm"))
    assert off["model.top_k"] == "model.use_moe is false" and off["model.hidden_dim"] == "task lm does not use it"
    assert off["callbacks.early_stopping_patience"] == "callbacks.early_stopping is false"
    assert "training.min_lr_ratio" not in off and "model.d_model" not in off  # cosine by default
    on = config_from_mapping({"task": "lm", "model": {"use_moe": True}, "callbacks": {"early_stopping": True},
                           "training": {"lr_schedule": "constant"}})
    off = inactive_keys(on)
    assert "model.top_k" not in off and "callbacks.early_stopping_patience" not in off
    assert off["model.bias_update_rate"] == "model.bias_balancing is false"
    assert off["training.min_lr_ratio"] == "training.lr_schedule is constant"
    assert inactive_keys(Config())["model.d_model"] == "task regression does not use it"
    # A user task may read any model or data key (or plan its own schedule): only the engine's rules.
    custom = inactive_keys(Config(task="rt_helpers:OptionsTask", training=on.training))
    assert not any(k.startswith(("model.", "data.")) for k in custom) and "training.min_lr_ratio" not in custom
    assert custom["callbacks.profile_start_step"] == "callbacks.profile_steps is 0"


@pytest.mark.timeout(90)
def test_cli_sweep_of_a_switched_off_key_exits_2_before_ray(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"storage_path": str(tmp_path / "sweeps"),
                                     "search_space": {"model.top_k": [1, 2]}}))
    proc = subprocess.run([sys.executable, "train.py", "--task", "lm", "--tune", str(sweep)], cwd=REPO,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2, proc.stderr
    assert "search_space.model.top_k: has no effect in any trial (model.use_moe is false)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "sweeps").exists()
