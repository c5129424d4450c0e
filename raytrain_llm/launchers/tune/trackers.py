"""A sweep in the experiment trackers: each trial is a run inside one experiment (MLflow) or
project (W&B) named after the sweep, the run named after the trial; the trial's config, swept
values included, are its parameters (the trial's own tracker callback sends them). When the
sweep ends, the best trial's MLflow run is tagged `sweep.best=true` (the others `false`) and
receives the sweep's table and plots as artifacts under `sweep/`.
"""
from __future__ import annotations

import os
from typing import Any

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping


def set_trial_tracking(cfg: Config, sweep_dir: str, trial: str) -> None:
    """Tracker settings of one trial's config (in place): one experiment per sweep, one run per
    trial, and for MLflow one store shared by all trials (a SQLite database in the sweep folder
    unless the config or $MLFLOW_TRACKING_URI names one; resolved here, in the driver)."""
    log = cfg.logging
    log.experiment = log.experiment or os.path.basename(os.path.normpath(sweep_dir))
    log.run_name = f"{log.run_name}-{trial}" if log.run_name else trial
    if "mlflow" in log.trackers:
        log.mlflow_tracking_uri = (log.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                                   or "sqlite:///" + os.path.join(os.path.abspath(sweep_dir), "mlflow.db"))


def tag_best_trial(base: Config, sweep_dir: str, summary: dict[str, Any], rows: list[dict[str, Any]],
                   logger) -> None:
    """Tags each trial's MLflow run with whether it is the sweep's best and whether ASHA stopped
    it early (such a run, its process killed, is still RUNNING: it is ended as KILLED), and gives
    the best run the sweep's table and plots. A tracker that fails here costs a warning: the
    sweep's own results are written already."""
    if "mlflow" not in base.logging.trackers:
        return
    from raytrain_llm.core.callbacks.tracker_logger import TrackerLogger
    from raytrain_llm.launchers.tune.report import trial_folder

    probe = config_from_mapping(base.to_dict())
    set_trial_tracking(probe, sweep_dir, "t")
    best = (summary.get("best") or {}).get("trial")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(probe.logging.mlflow_tracking_uri)
        for row in rows:
            trial = row["trial"]
            state = TrackerLogger.read_json(os.path.join(trial_folder(sweep_dir, trial), "tracker-mlflow.json"))
            if not state.get("run_id"):
                continue
            client.set_tag(state["run_id"], "sweep.best", str(trial == best).lower())
            client.set_tag(state["run_id"], "sweep.stopped_early", row.get("stopped early", "no"))
            if row.get("stopped early") == "yes" and client.get_run(state["run_id"]).info.status == "RUNNING":
                client.set_terminated(state["run_id"], status="KILLED")
            if trial == best:
                for path in [summary.get("table_md"), summary.get("table_csv"), *summary.get("plots", [])]:
                    if path and os.path.exists(path):
                        client.log_artifact(state["run_id"], path, artifact_path="sweep")
    except Exception as exc:  # noqa: BLE001 - the tracker is a copy; the sweep folder has everything
        logger.warning(f"mlflow: the sweep's best trial was not tagged ({type(exc).__name__}: {exc}); "
                       f"the results are in {sweep_dir}")
