"""User mistakes outside the config table: YAML shapes, stray RAYTRAIN_ variables, task and data
classes that cannot work, settings that only fail once the device is known, and defaults
(master port, weight decay, profiler range) that must do what they promise."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import ENV_NOT_FIELDS, load_config
from raytrain_llm.core.errors import ConfigError, UsageError
from rt_testing import REPO, cli_env, make_config, run_cli, train


# ----------------------------------------------------------------------------- YAML
@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "null\n", "---\n"])
def test_an_empty_yaml_file_is_an_empty_config(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    assert load_config(str(f), [], environ={}) == Config()


@pytest.mark.parametrize("text", ["0\n", "[]\n", "''\n", "false\n"])
def test_a_yaml_file_that_is_not_a_mapping_is_an_error(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(str(f), [], environ={})


def test_every_duplicate_yaml_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  lr: 0.1\nmodel:\n  d_model: 32\n  d_model: 64\ntraining:\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(f), [], environ={})
    assert err.value.problems == [f"model.d_model: set twice in {f} (lines 4 and 5)",
                                  f"training: set twice in {f} (lines 1 and 6)"]


def test_the_bool_hint_is_only_for_string_fields(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("logging:\n  level: yes\ntraining:\n  epochs: on\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(f), [], environ={})
    level, epochs = err.value.problems
    assert "logging.level: expected a string, got True (YAML reads unquoted" in level
    assert epochs == f"training.epochs: expected an integer, got True in {f}"


# ----------------------------------------------------------------------------- environment
def test_variables_the_project_reads_itself_are_not_config_errors():
    env = {name: "1" for name in ENV_NOT_FIELDS}
    assert load_config(None, [], environ=env) == Config()


def test_every_raytrain_variable_the_code_reads_is_exempt():
    # A new RAYTRAIN_ knob read with os.environ would otherwise fail every run as a config typo.
    used = set()
    for path in (REPO / "raytrain_llm").rglob("*.py"):
        used |= set(re.findall(r"""["'](RAYTRAIN_[A-Z0-9_]*[A-Z0-9])["']""", path.read_text()))
    assert used and used <= ENV_NOT_FIELDS, used - ENV_NOT_FIELDS


def test_misspelt_variables_are_reported_with_the_other_errors():
    env = {"RAYTRAIN_TRAINING_BATCH_SIZE": "8", "RAYTRAIN_NOTHING": "1", "RAYTRAIN_TRAINING__LR": "0.5"}
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.dropout=2"], environ=env)
    assert err.value.problems == [
        "$RAYTRAIN_NOTHING: not a config field (expected RAYTRAIN_<SECTION>__<FIELD>, two underscores)",
        "$RAYTRAIN_TRAINING_BATCH_SIZE: not a config field (expected RAYTRAIN_<SECTION>__<FIELD>, two "
        "underscores) (did you mean RAYTRAIN_TRAINING__BATCH_SIZE?)",
        "model.dropout: must be <= 1.0 (got 2.0) (from --set)"]


# ----------------------------------------------------------------------------- cross-field rules
@pytest.mark.timeout(60)
def test_moe_settings_are_ignored_without_moe():
    p = run_cli(["--task", "regression", "--set", "model.num_experts=1", "--print-config"], env=cli_env(),
                timeout=60)
    assert p.returncode == 0, p.stderr
    printed = yaml.safe_load(p.stdout)
    assert printed["task"] == "regression" and printed["model"]["use_moe"] is False
    assert (printed["model"]["num_experts"], printed["model"]["top_k"]) == (1, Config().model.top_k)  # kept as given
    with pytest.raises(ConfigError, match="model.top_k"):
        load_config(None, ["model.use_moe=true", "model.num_experts=1"], environ={})


def test_master_port_zero_picks_a_free_port_and_an_explicit_one_is_kept(tmp_path, monkeypatch):
    from raytrain_llm.launchers.local import spawn as local

    assert Config().distributed.master_port == 0
    ports = []
    monkeypatch.setattr(torch.multiprocessing, "spawn", lambda fn, args, nprocs, join: ports.append(args[2]))
    monkeypatch.setattr(local, "read_summary", lambda d: {"final": {}, "global_step": 0})
    monkeypatch.setattr(local, "final_val_metrics", lambda summary: {})
    for port in ("0", "0", "12345"):
        local.run_spawn(make_config(tmp_path, **{"distributed.launcher": "spawn", "distributed.num_workers": 2,
                                                 "distributed.master_port": port}))
    assert 0 < ports[0] <= 65535 and 0 < ports[1] <= 65535 and ports[2] == 12345


# ----------------------------------------------------------------------------- tasks and data
def test_an_abstract_task_is_a_usage_error_naming_what_is_missing():
    from raytrain_llm.launchers.task_resolution import resolve_task

    with pytest.raises(UsageError, match=r"rt_input_tasks:HalfTask does not implement build_data_module, "
                                         r"train_step \(required by TrainingTask\)"):
        resolve_task("rt_input_tasks:HalfTask")


def test_a_plain_torch_dataset_is_a_usage_error(tmp_path):
    from rt_input_tasks import PlainDataModule

    dm = PlainDataModule(make_config(tmp_path))
    with pytest.raises(UsageError, match="PlainDataModule.build_train_dataset returned a TensorDataset"):
        dm.train_dataset
    dm.build_val_dataset = lambda: TensorDataset(torch.zeros(4, 1))
    with pytest.raises(UsageError, match="PlainDataModule.build_val_dataset returned a TensorDataset"):
        dm.val_dataset


def test_fp16_is_refused_once_the_device_resolves_to_cpu():
    from raytrain_llm.core.precision import Precision

    with pytest.raises(UsageError, match="optimization.amp: fp16 needs a CUDA device, but this run trains on cpu"):
        Precision("fp16", torch.device("cpu"))
    assert Precision("bf16", torch.device("cpu")).scaler is None


class _TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(10, 4)
        self.pos = nn.Embedding(6, 4)
        self.frozen = nn.Embedding(3, 4).requires_grad_(False)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.tok.weight  # tied: one parameter, two modules


def test_default_optimizer_never_decays_embeddings_tied_or_not(tmp_path):
    from raytrain_llm.tasks.regression_task import RegressionTask

    model = _TiedLM()
    task = RegressionTask(make_config(tmp_path, **{"training.weight_decay": 0.1}))
    decay, no_decay = task.build_optimizer(model).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda group: [id(p) for p in group["params"]]  # noqa: E731
    assert ids(decay) == [id(model.proj.weight)]
    assert sorted(ids(no_decay)) == sorted(map(id, (model.tok.weight, model.pos.weight, model.proj.bias)))


# ----------------------------------------------------------------------------- profiler
def test_profiler_warns_when_the_run_ends_before_its_first_step(tmp_path):
    # TINY: 256 samples / batch 16 = 16 optimizer steps.
    train(tmp_path, **{"callbacks.profile_start_step": 40, "callbacks.profile_steps": 2})
    assert not (tmp_path / "profiler").exists()
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert ("WARNING [rank 0] profiler: no steps were profiled: callbacks.profile_start_step=40, "
            "but the run ended after step 16, before it") in log


def test_print_config_with_a_sweep_prints_the_trials_base_config():
    p = run_cli(["--tune", "examples/sweep_moe.yaml", "--set", "training.lr=0.02", "--print-config"], timeout=60)
    assert p.returncode == 0, p.stderr
    printed = yaml.safe_load(p.stdout)
    base = yaml.safe_load((REPO / "examples" / "sweep_moe_base.yaml").read_text())
    assert printed["task"] == base["task"] == "lm" and printed["model"]["use_moe"] is True
    assert printed["model"]["d_model"] == base["model"]["d_model"]
    assert printed["training"]["lr"] == 0.02  # the command line wins over the base file


@pytest.mark.timeout(120)
def test_a_misspelt_validation_monitor_is_refused_before_the_run_starts(tmp_path):
    run = tmp_path / "run"
    p = run_cli(["--task", "lm", "--set", f"logging.dir={run}", "--set", "checkpoint.monitor=val/perplexty"])
    assert p.returncode == 2 and p.stderr.strip() == (
        "error: checkpoint.monitor: 'val/perplexty' is not a validation metric of task 'lm' (did you mean "
        "'val/perplexity'?) (validation: val/loss, val/perplexity)")
    assert not run.exists()  # refused before anything was written
    p = run_cli(["--set", f"logging.dir={run}", "--set", "callbacks.early_stopping=true",
                 "--set", "callbacks.monitor=val/mea"])
    assert p.returncode == 2 and "callbacks.monitor: 'val/mea' is not a validation metric of task 'regression' " \
                                 "(did you mean 'val/mae'?)" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    # Early stopping follows validation metrics only: a name without val/ is checked too.
    p = run_cli(["--set", f"logging.dir={run}", "--set", "callbacks.early_stopping=true",
                 "--set", "callbacks.monitor=val_loss"])
    assert p.returncode == 2 and "callbacks.monitor: 'val_loss' is not a validation metric of task 'regression' " \
                                 "(did you mean 'val/loss'?)" in p.stderr
    # A sweep's trials are checked one by one by its plan, not against the base config.
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"storage_path": str(tmp_path / "sweeps"),
                                     "search_space": {"task_options.tag": ["mae"]}}))
    p = run_cli(["--task", "rt_helpers:TaggedMetricTask", "--tune", str(sweep), "--print-config",
                 "--set", "callbacks.early_stopping=true", "--set", "callbacks.monitor=val/mae"])
    assert p.returncode == 0, p.stderr
    printed = yaml.safe_load(p.stdout)  # the trials' base config, the monitor as given
    assert printed["task"] == "rt_helpers:TaggedMetricTask" and printed["callbacks"]["monitor"] == "val/mae"
    assert printed["callbacks"]["early_stopping"] is True and not (tmp_path / "sweeps").exists()


# ----------------------------------------------------------------------------- command-line hints
@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, line", [
    (["--task", "LM"], "error: --task: unknown task 'LM' (did you mean 'lm'?) (known: lm, regression, "
                       "or package.module:ClassName)"),
    (["--set", "training.lr", "0.01"], "error: unrecognized arguments: 0.01 (did you mean --set training.lr=0.01?)"),
    (["--set", "lr=0.01"], "error: invalid config: lr: expected section.field (from --set) (did you mean "
                           "'training.lr'?)"),
    (["--set", "monitor=val/loss"], "error: invalid config: monitor: expected section.field (from --set) (did you "
                                    "mean 'checkpoint.monitor' or 'callbacks.monitor'?)"),
])
def test_common_command_line_slips_get_one_line_with_the_fix(args, line):
    p = run_cli([*args, "--print-config"], timeout=60)
    assert p.returncode == 2 and p.stderr.strip() == line and not p.stdout


# ----------------------------------------------------------------------------- environment
def _run_without_site_packages(tmp_path, args, *deps):
    """`python -S train.py ARGS` from an empty folder: a real Python without the installed packages
    (as the system python3 is), plus the `deps` packages alone, linked into a folder of their own."""
    only = tmp_path / "only"
    only.mkdir(parents=True)
    for module in deps:
        (only / module.__name__).symlink_to(os.path.dirname(module.__file__))
    env = cli_env(PYTHONPATH=os.pathsep.join([str(REPO), str(only)]))
    work = tmp_path / "work"
    work.mkdir()
    p = subprocess.run([sys.executable, "-S", str(REPO / "train.py"), *args], cwd=work, env=env,
                       capture_output=True, text=True, timeout=60)
    assert not list(work.iterdir())  # no runs/default/error.log, nothing at all
    return p


@pytest.mark.timeout(120)
def test_a_missing_dependency_is_a_usage_error_that_says_how_to_install(tmp_path):
    p = _run_without_site_packages(tmp_path, ["--task", "lm", "--print-config"])
    assert p.returncode == 2 and not p.stdout, p.stderr
    assert p.stderr.startswith("error: this Python (") and len(p.stderr.strip().splitlines()) == 1
    assert "lacks 'yaml', a dependency of raytrain_llm" in p.stderr and "`make train` creates .venv" in p.stderr
    assert "pip install -e ." in p.stderr and ".venv/bin/python" in p.stderr
    # With the config reader there but no torch, a training command stops at the same line.
    p = _run_without_site_packages(tmp_path / "b", ["--task", "lm", "--set", "logging.dir=run"], yaml)
    assert p.returncode == 2 and "lacks 'torch', a dependency" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
