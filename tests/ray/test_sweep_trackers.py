"""A sweep in MLflow: 2 trials are 2 runs in one experiment named after the sweep, each with its
swept values as parameters and the metrics of its metrics.jsonl; the best is tagged and holds the
sweep's table and plots. The same sweep in W&B (offline): 2 runs in one project named after it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from raytrain_llm.core.config_loader import config_from_mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rt_trackers import jsonl_series, mlflow_series, wandb_config, wandb_records  # noqa: E402

mlflow = pytest.importorskip("mlflow")

TINY_LM = {
    "task": "lm",
    "model": {"vocab_size": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16, "use_moe": True,
              "num_experts": 2, "top_k": 1},
    "data": {"num_train_samples": 128, "num_val_samples": 32},
    "training": {"batch_size": 16, "epochs": 1, "max_steps": 4, "lr": 0.02, "lr_schedule": "constant",
                 "val_every_n_steps": 2, "device": "cpu"},
    "checkpoint": {"every_n_steps": 2, "keep_last": 1, "keep_best": 0},
    "logging": {"log_every_n_steps": 2, "progress_bar": "off", "level": "WARNING",
                "trackers": ["mlflow", "wandb"], "wandb_mode": "offline"},
    "distributed": {"num_workers": 1, "cpus_per_worker": 0.25},
}


@pytest.mark.timeout(300)
def test_a_sweep_of_two_trials_is_two_mlflow_runs_in_one_experiment(tmp_path, ray_local, monkeypatch):
    from mlflow.tracking import MlflowClient

    from raytrain_llm.launchers.tune.runner import run_sweep

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = config_from_mapping({**TINY_LM, "logging": {**TINY_LM["logging"], "dir": str(tmp_path / "base")}})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tracked", "storage_path": str(tmp_path / "sweeps"), "scheduler": "none",
                                    "max_concurrent_trials": 1,
                                    "search_space": {"model.num_experts": {"grid": [2, 4]}}}))
    summary = run_sweep(base, str(path))
    sweep_dir = tmp_path / "sweeps" / "tracked"
    client = MlflowClient(f"sqlite:///{sweep_dir}/mlflow.db")
    exp = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["t000", "t001"]
    assert {name: r.data.params["model.num_experts"] for name, r in runs.items()} == {"t000": "2", "t001": "4"}
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["launcher"] == "ray"
        folder = sweep_dir / "tensorboard" / name
        expected = jsonl_series(folder)
        got = mlflow_series(client, run.info.run_id, expected)
        assert {k: [s for s, _ in v] for k, v in got.items()} == {k: [s for s, _ in v] for k, v in expected.items()}
        assert got["val/loss"] == expected["val/loss"]
    best = summary["best"]["trial"]
    assert {name: r.data.tags["sweep.best"] for name, r in runs.items()} == {
        name: str(name == best).lower() for name in runs}
    assert {r.data.tags["sweep.stopped_early"] for r in runs.values()} == {"no"}
    artifacts = {f.path for f in client.list_artifacts(runs[best].info.run_id, "sweep")}
    assert "sweep/results.md" in artifacts and any(p.endswith(".png") for p in artifacts)
    # W&B: each trial's offline run, in the sweep's project, named after the trial, with its swept value.
    for name, experts in (("t000", 2), ("t001", 4)):
        (path,) = (sweep_dir / "tensorboard" / name / "wandb").glob("offline-run-*/*.wandb")
        run = next(r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run")
        assert (run.project, run.display_name) == ("tracked", name)
        assert wandb_config(path)["model.num_experts"] == experts
