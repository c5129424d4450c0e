"""`MLflowLogger`: the run as an MLflow run (parameters, tags, metrics per step, artifacts).

It talks through its own `MlflowClient`, never MLflow's fluent API (`mlflow.start_run`), whose
active run is global to the process: a user's own `mlflow.start_run()` around `fit()` stays theirs.

The store is `logging.mlflow_tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite database
`<logging.dir>/mlflow.db` (MLflow 3 refuses new plain-file stores unless MLFLOW_ALLOW_FILE_STORE
is set). A SQLite store's new experiments keep their artifacts in `mlartifacts/` beside the
database: MLflow's own default is ./mlruns relative to whatever folder the worker runs in.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

from raytrain_llm.core.callbacks.tracker_logger import TrackerLogger, flat_params, param_text

DEFAULT_EXPERIMENT = "raytrain_llm"
MAX_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
MAX_METRICS = 1000  # and of metrics


def resolve_tracking_uri(logging_cfg) -> str:
    return (logging_cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or "sqlite:///" + os.path.join(os.path.abspath(logging_cfg.dir), "mlflow.db"))


def experiment_name(logging_cfg) -> str:
    return logging_cfg.experiment or DEFAULT_EXPERIMENT


def run_name(logging_cfg) -> str:
    return logging_cfg.run_name or os.path.basename(os.path.abspath(logging_cfg.dir))


def local_artifact_location(tracking_uri: str) -> Optional[str]:
    """`mlartifacts/` beside a SQLite database file; None for any other store (its own default)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = tracking_uri[len("sqlite:///"):]
    return "file://" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlartifacts")


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """The experiment's id, created if missing (two sweep trials may race to create it)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=local_artifact_location(tracking_uri))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MLflowLogger(TrackerLogger):
    name = "mlflow"

    def __init__(self, config, logger=None):
        super().__init__(config, logger)
        self.tracking_uri = resolve_tracking_uri(config.logging)
        self.experiment = experiment_name(config.logging)
        self.run_name = run_name(config.logging)
        self.client = None

    def start_run(self, run_id: Optional[str], params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.tracking_uri)
        if run_id:
            # Parameters are immutable in MLflow: the first segment's stay.
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            return run_id
        run = self.client.create_run(experiment_id(self.client, self.experiment, self.tracking_uri),
                                     run_name=self.run_name, tags=tags)
        items = [Param(k, param_text(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(run.info.run_id, params=items[i:i + MAX_BATCH])
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_records([(metrics, step)])

    def log_records(self, records: list[tuple[dict[str, float], int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for metrics, step in records for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=items[i:i + MAX_METRICS])

    def log_summary(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        # The last records are metrics already; the rest (steps, best value and checkpoint) as tags.
        flat = flat_params({k: v for k, v in summary.items() if k != "final"}, "summary.")
        tags = [RunTag(k, param_text(v)[:5000]) for k, v in flat.items()]
        for i in range(0, len(tags), MAX_BATCH):
            self.client.log_batch(self.run_id, tags=tags[i:i + MAX_BATCH])

    def log_files(self, paths: list[str]) -> None:
        for path in paths:
            if os.path.isdir(path):
                self.client.log_artifacts(self.run_id, path, artifact_path=os.path.basename(path))
            else:
                self.client.log_artifact(self.run_id, path)

    def end_run(self, status: str) -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, status=status)
