"""`WandbLogger`: the run as a Weights & Biases run (config, tags, history per step, files).

Online or offline (`logging.wandb_mode`): offline writes `<logging.dir>/wandb/offline-run-*/`
with no network at all, for `wandb sync` later. The project is `logging.experiment` (default
raytrain_llm), the run's name `logging.run_name` (default: the last folder of logging.dir).
"""
from __future__ import annotations

import os
from typing import Any, Optional

from raytrain_llm.core.callbacks.mlflow_logger import experiment_name, run_name
from raytrain_llm.core.callbacks.tracker_logger import TrackerLogger, flat_params


class WandbLogger(TrackerLogger):
    name = "wandb"

    def __init__(self, config, logger=None):
        super().__init__(config, logger)
        self.mode = config.logging.wandb_mode
        self.project = experiment_name(config.logging)
        self.run_name = run_name(config.logging)
        self.run = None

    def start_run(self, run_id: Optional[str], params: dict[str, Any], tags: dict[str, str]) -> str:
        import wandb

        settings = wandb.Settings(mode=self.mode, console="off", x_disable_stats=True, silent=True)
        # W&B tags are plain strings (at most 64 characters): "key:value".
        self.run = wandb.init(project=self.project, name=self.run_name, id=run_id, resume="allow" if run_id else None,
                              dir=self.log_dir, config=None if run_id else params,
                              tags=[f"{k}:{v}"[:64] for k, v in tags.items()], reinit="create_new", settings=settings)
        return self.run.id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        flat = flat_params({k: v for k, v in summary.items() if k != "final"}, "summary.")
        self.run.summary.update(flat)

    def log_files(self, paths: list[str]) -> None:
        import wandb

        for path in paths:
            if os.path.basename(path) == "config.yaml":
                continue  # W&B's own file of that name holds the config already (as the run's config)
            if os.path.isdir(path):  # a checkpoint folder: a model artifact
                artifact = wandb.Artifact(f"checkpoint-{self.run.id}", type="model")
                artifact.add_dir(path)
                self.run.log_artifact(artifact)
            else:
                self.run.save(path, base_path=os.path.dirname(path), policy="now")

    def end_run(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.run = None
