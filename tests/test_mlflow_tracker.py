"""MLflow tracking: a run's parameters, tags, every metric at the steps of metrics.jsonl and its
artifacts, read back through MLflow's own client from a plain file store, a local SQLite store and a
real `mlflow server` on 127.0.0.1; a killed and resumed run has each step once; a missing package is
a usage error; a server gone mid-run costs a warning, not the run."""
from __future__ import annotations

import json
import signal
import sys

import pytest

from rt_testing import REPO, cli_env, read_jsonl, run_cli, set_args, settings, train
from rt_trackers import jsonl_series, mlflow_series

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

RUN = {"logging.trackers": "mlflow", "training.val_every_n_steps": 4, "training.epochs": 2,
       "checkpoint.every_n_steps": 8}


def only_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def check_run(client, run, log_dir, cfg) -> None:
    """Parameters = the resolved config, tags, every metric's (step, value) list = metrics.jsonl."""
    params = run.data.params
    assert params["training.val_every_n_steps"] == "4" and params["task"] == "regression"
    assert params["logging.trackers"] == '["mlflow"]' and params["model.hidden_dim"] == "16"
    assert run.data.tags["task"] == "regression" and run.data.tags["launcher"] == "local"
    assert run.data.tags["strategy"] == "single" and len(run.data.tags.get("git_commit", "x" * 40)) == 40
    assert run.info.status == "FINISHED" and run.info.run_name == log_dir.name
    expected = jsonl_series(log_dir)
    assert {"loss", "val/loss", "lr"} <= set(expected)
    assert set(run.data.metrics) == set(expected)
    assert mlflow_series(client, run.info.run_id, expected) == {k: sorted(v) for k, v in expected.items()}
    assert [s for s, _ in expected["val/loss"]] == [4, 8, 12, 16, 20, 24, 28, 32]
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "metrics.jsonl", "config.yaml"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "summary.json", str(log_dir.parent / f"dl-{log_dir.name}"))
    with open(local, encoding="utf-8") as fh:
        assert json.load(fh)["global_step"] == 32
    assert run.data.tags["summary.global_step"] == "32"


def test_file_store_holds_params_metrics_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    run_dir = tmp_path / "run"
    result, cfg = train(run_dir, **RUN, **{"logging.mlflow_tracking_uri": uri, "logging.experiment": "files",
                                           "logging.tracker_log_checkpoint": True})
    client = MlflowClient(uri)
    run = only_run(client, "files")
    check_run(client, run, run_dir, cfg)
    best = result["best_checkpoint"].rstrip("/").split("/")[-1]
    assert best in {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {f.path.split("/")[-1] for f in client.list_artifacts(run.info.run_id, best)} >= {"state.pt"}


@pytest.mark.timeout(240)
def test_killed_and_resumed_run_continues_one_mlflow_run_with_each_step_once(tmp_path):
    # The default store: SQLite in logging.dir, artifacts beside it.
    run_dir = tmp_path / "killed"
    s = settings(run_dir, **{**RUN, "checkpoint.every_n_steps": 5})
    args = ["--task", "rt_tracker_tasks:KillWhenSentTask", *set_args(s)]
    p = run_cli(args, env=cli_env(RT_KILL_AT_STEP="13", RT_TRACKER="mlflow"), timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    first = json.loads((run_dir / "tracker-mlflow.json").read_text())
    assert first["sent"]["train"] >= 11  # sent before the kill (13 trained; 12 and 13 may be)
    p = run_cli([*args, "--set", "checkpoint.resume=auto"], env=cli_env(RT_KILL_AT_STEP="0", RT_TRACKER="mlflow"),
                timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed from" in p.stderr
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    run = only_run(client, "raytrain_llm")
    assert run.info.run_id == first["run_id"] and run.data.tags["resumed_at_step"] == "10"
    expected = jsonl_series(run_dir)
    got = mlflow_series(client, run.info.run_id, expected)
    assert [s for s, _ in got["loss"]] == list(range(1, 33))  # each step once
    assert {k: [s for s, _ in v] for k, v in got.items()} == {k: sorted(s for s, _ in v) for k, v in expected.items()}
    # Steps trained twice keep the values sent first: the same numbers (a bit-identical resume),
    # except timings and memory, which no two runs share.
    trained = {k for k in expected if k in ("loss", "lr", "grad_norm", "mae") or k.startswith("val/")}
    assert {k: got[k] for k in trained} == {k: sorted(expected[k]) for k in trained}
    assert (run_dir / "mlartifacts").is_dir()


def test_a_missing_package_is_a_usage_error_that_says_how_to_install_it(tmp_path):
    # sys.modules[name] = None is how Python blocks an import: as if mlflow were not installed.
    code = ("import sys, runpy; sys.modules['mlflow'] = None; sys.argv = ['train.py'] + sys.argv[1:]; "
            "runpy.run_path('train.py', run_name='__main__')")
    s = settings(tmp_path / "run", **{"logging.trackers": "mlflow"})
    import subprocess

    p = subprocess.run([sys.executable, "-c", code, *set_args(s)], cwd=REPO, env=cli_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "pip install -e '.[mlflow]'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from rt_trackers import mlflow_server

    # One server for the module; the last test stops it.
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as (uri, proc):
        yield uri, proc


@pytest.mark.timeout(240)
def test_tracking_server_returns_params_metrics_and_artifacts(tmp_path, server):
    server, _ = server
    run_dir = tmp_path / "run"
    _, cfg = train(run_dir, **RUN, **{"logging.mlflow_tracking_uri": server, "logging.experiment": "served"})
    client = MlflowClient(server)
    run = only_run(client, "served")
    check_run(client, run, run_dir, cfg)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, not by the run


@pytest.mark.timeout(240)
def test_a_server_gone_mid_run_costs_a_warning_not_the_run(tmp_path, server):
    uri, proc = server
    run_dir = tmp_path / "run"
    # The module's server: this run kills it after step 8, once step 6 reached it (the module's
    # last test). MLflow's client retries are cut short: the test need not wait out its back-off.
    s = settings(run_dir, **RUN, **{"logging.mlflow_tracking_uri": uri, "logging.experiment": "gone"})
    env = cli_env(RT_KILL_AT_STEP="8", RT_TRACKER="mlflow", RT_KILL_PGID=str(proc.pid),
                  MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    p = run_cli(["--task", "rt_tracker_tasks:KillWhenSentTask", *set_args(s)], env=env, timeout=180)
    proc.wait(timeout=30)  # the server is gone
    assert p.returncode == 0, p.stderr[-3000:]
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert max(r["step"] for r in records) == 32 and (run_dir / "summary.json").exists()
    sent = json.loads((run_dir / "tracker-mlflow.json").read_text())["sent"]
    assert 6 <= sent["train"] < 32
    warning = [line for line in p.stderr.splitlines() if "mlflow: not logged" in line]
    assert len(warning) == 1, p.stderr[-3000:]
    # It names what is missing: the train records after the last one sent, the validations, the end.
    assert f"train records of steps {sent['train'] + 1}-32" in warning[0]
    assert "val records" in warning[0] and "the summary" in warning[0] and "summary.json" in warning[0]
    assert "sending train record failed" in p.stderr or "sending val record failed" in p.stderr
