"""A task's own settings (`task_options.*`), checked against its `Options` dataclass."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import pytest
import yaml

from raytrain_llm.core.errors import ConfigError
from rt_helpers import OptionsTask
from rt_testing import TINY, cli_env, make_config, run_cli, set_args


def test_options_come_typed_from_every_source(tmp_path):
    cfg = make_config(tmp_path, "rt_helpers:OptionsTask", **{"task_options.width": "3", "task_options.tag": "on"})
    task = OptionsTask(cfg)
    assert task.options == OptionsTask.Options(width=3, scale=1.0, tag="on")
    assert sum(p.numel() for p in task.build_model().parameters()) == 8 * 3 + 3 + 3 + 1
    (tmp_path / "c.yaml").write_text("task_options:\n  scale: 2\n  width: 4\n")
    from raytrain_llm.core.config_loader import load_config

    cfg = load_config(str(tmp_path / "c.yaml"), ["task_options.width=5"], task="rt_helpers:OptionsTask",
                      environ={"RAYTRAIN_TASK_OPTIONS__TAG": "env"})
    assert OptionsTask(cfg).options == OptionsTask.Options(width=5, scale=2.0, tag="env")
    with pytest.raises(ConfigError) as err:
        OptionsTask(make_config(tmp_path, "rt_helpers:OptionsTask", **{
            "task_options.widht": "3", "task_options.scale": "big"}))
    assert err.value.problems == [
        "task_options.widht: unknown option of task OptionsTask (did you mean 'width'?) (options: width, scale, tag)",
        "task_options.scale: expected a number, got 'big'"]


def test_the_cli_checks_options_up_front_and_records_them(tmp_path):
    base = {**TINY, "training.max_steps": "2"}
    bad = run_cli(["--task", "rt_helpers:OptionsTask", *set_args({**base, "logging.dir": str(tmp_path / "a"),
                                                                  "task_options.width": "wide"})])
    assert bad.returncode == 2 and "task_options.width: expected an integer, got 'wide'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "a").exists()
    none = run_cli(["--task", "regression", *set_args({**base, "task_options.width": "3"})])
    assert none.returncode == 2 and "task regression takes no options" in none.stderr
    ok = run_cli(["--task", "rt_helpers:OptionsTask", *set_args({**base, "logging.dir": str(tmp_path / "b"),
                                                                 "task_options.width": "3"})],
                 env=cli_env(RAYTRAIN_TASK_OPTIONS__SCALE="0.5"))
    assert ok.returncode == 0, ok.stderr
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["task_options"] == {"width": 3, "scale": 0.5, "tag": "none"}  # every option, typed


def test_the_readme_task_example_runs_as_written(tmp_path):
    import re
    import subprocess
    import sys

    from rt_testing import REPO, read_jsonl

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Writing a task", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "tasks.py").write_text(code)
    run = subprocess.run([sys.executable, str(REPO / "train.py"), "--task", "mypkg.tasks:MyTask",
                          *set_args({**TINY, "logging.dir": str(tmp_path / "run"), "task_options.depth": "3",
                                     "distributed.launcher": "spawn", "distributed.num_workers": "2"})],
                         cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert "acc" in records[0] and "val/acc" in records[-1]


def test_container_literal_and_optional_options_round_trip(tmp_path):
    from raytrain_llm.core.task_options import options_dict, parse_task_options

    @dataclasses.dataclass
    class Options:
        widths: list[int] = dataclasses.field(default_factory=lambda: [8, 8])
        pair: tuple[int, int] = (2, 3)
        act: Literal["relu", "gelu"] = "relu"
        scale: Optional[float] = None

    defaults = parse_task_options(Options, {}, "T")
    assert parse_task_options(Options, options_dict(defaults), "T") == defaults  # what config.yaml holds
    assert parse_task_options(Options, {"widths": "4,5", "pair": "[1, 2]", "act": "gelu", "scale": "0.5"}, "T") == \
        Options(widths=[4, 5], pair=(1, 2), act="gelu", scale=0.5)
    with pytest.raises(ConfigError) as err:
        parse_task_options(Options, {"act": "bogus", "pair": [1, 2, 3]}, "T")
    assert err.value.problems == ["task_options.act: expected one of 'relu', 'gelu', got 'bogus'",
                                  "task_options.pair: expected a list of 2, got [1, 2, 3]"]
