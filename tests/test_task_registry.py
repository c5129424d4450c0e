"""User tasks given as `package.module:Class`: found from the current folder as well as sys.path,
and handed on to Ray workers started on this machine."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from raytrain_llm.launchers.task_resolution import import_root, resolve_task
from rt_testing import REPO, TINY, cli_env, make_config, set_args

TASK_SOURCE = '''
from raytrain_llm.tasks.regression_task import RegressionTask


class UserTask(RegressionTask):
    pass
'''


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder holding a module and a package with a task each, as the current folder only."""
    (tmp_path / "rt_user_module.py").write_text(TASK_SOURCE)
    (tmp_path / "rt_user_pkg").mkdir()
    (tmp_path / "rt_user_pkg" / "__init__.py").write_text(TASK_SOURCE)
    (tmp_path / "rt_user_pkg" / "tasks.py").write_text(TASK_SOURCE)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("rt_user_module", "rt_user_pkg", "rt_user_pkg.tasks"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("target", ["rt_user_module:UserTask", "rt_user_pkg.tasks:UserTask", "rt_user_pkg:UserTask"])
def test_a_user_task_is_found_in_the_current_folder_and_its_root_reported(user_folder, target):
    assert resolve_task(target).__name__ == "UserTask"
    assert import_root(target) == str(user_folder)  # the folder to put on a worker's PYTHONPATH


def test_built_in_tasks_need_no_import_root():
    from raytrain_llm.tasks.lm_task import LanguageModelingTask
    from raytrain_llm.tasks.regression_task import RegressionTask

    assert resolve_task("lm") is LanguageModelingTask and resolve_task("regression") is RegressionTask
    assert import_root("lm") is None and import_root("regression") is None


def test_the_private_ray_cluster_gets_the_task_folder_on_its_workers_path(user_folder, monkeypatch):
    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.launchers.ray_train.cluster import _task_import_env

    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    config = load_config(None, [], environ={}, task="rt_user_pkg.tasks:UserTask")
    assert _task_import_env(config) == {"env_vars": {"PYTHONPATH": f"{user_folder}:/somewhere/else"}}
    assert _task_import_env(load_config(None, [], environ={}, task="lm")) is None
    # Already on the PYTHONPATH the node's processes inherit: no job runtime env (which would keep
    # the job off the workers Ray prestarts without one).
    monkeypatch.setenv("PYTHONPATH", f"/somewhere/else:{user_folder}/")
    assert _task_import_env(config) is None


def test_a_private_node_starts_without_the_preemption_watcher_and_the_driver_keeps_its_env(monkeypatch):
    import os

    from raytrain_llm.launchers.ray_train.cluster import PRIVATE_NODE_ENV, _private_node_env

    key = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    monkeypatch.delenv(key, raising=False)
    with _private_node_env():
        assert os.environ[key] == "0" == PRIVATE_NODE_ENV[key]  # what ray.init's processes inherit
    assert key not in os.environ  # a cluster this process starts later gets Ray's default
    monkeypatch.setenv(key, "1")
    with _private_node_env():
        assert os.environ[key] == "1"  # the user's own setting wins
    assert os.environ[key] == "1"


@pytest.mark.timeout(120)
def test_train_py_run_from_the_task_folder_finds_the_task(tmp_path):
    (tmp_path / "rt_user_module.py").write_text(TASK_SOURCE)
    s = dict(TINY, **{"logging.dir": str(tmp_path / "run")})
    p = subprocess.run([sys.executable, str(REPO / "train.py"), "--task", "rt_user_module:UserTask", *set_args(s)],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["global_step"] == 16 and summary["final"]["val"]["step"] == 16  # TINY: 256 samples / 16
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["task"] == "rt_user_module:UserTask"


def test_default_ray_run_names_have_no_colon(tmp_path):
    from raytrain_llm.launchers.ray_train.trainer import resolve_paths

    cfg = make_config(tmp_path, "rt_helpers:OwnCallbacksTask")
    assert resolve_paths(cfg).distributed.run_name.startswith("rt_helpers-OwnCallbacksTask-")


def test_a_broken_or_shadowed_task_module_is_a_usage_error_naming_it(user_folder, monkeypatch):
    from raytrain_llm.core.errors import UsageError

    (user_folder / "rt_broken_syntax.py").write_text("class T(\n")
    (user_folder / "rt_broken_name.py").write_text("\n\nx = undefined_name\n")
    (user_folder / "sched.py").write_text(TASK_SOURCE)  # the standard library's sched comes first
    for name in ("rt_broken_syntax", "rt_broken_name"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(UsageError, match=r"^--task: importing 'rt_broken_syntax' .* failed: SyntaxError: .*"
                                         r"rt_broken_syntax.py, line 1"):
        resolve_task("rt_broken_syntax:T")
    with pytest.raises(UsageError, match=r"failed: NameError: name 'undefined_name' is not defined "
                                         r"\(at rt_broken_name.py:3\)"):
        resolve_task("rt_broken_name:T")
    with pytest.raises(UsageError, match=r"^--task: 'sched' has no class 'UserTask' \(that name imported "
                                         r".*sched.py, not .*/sched.py: rename your module\)"):
        resolve_task("sched:UserTask")
    # A class missing from a package's submodule is just missing: nothing is shadowed there.
    with pytest.raises(UsageError) as info:
        resolve_task("rt_user_pkg.tasks:Nope")
    assert str(info.value) == "--task: 'rt_user_pkg.tasks' has no class 'Nope'"
