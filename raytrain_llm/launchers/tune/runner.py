"""`run_sweep`: a Ray Tune sweep in which every trial is a full Ray Train run of our engine.

Train V2 cannot be handed to `Tuner` directly: each trial is a function that builds a
`TorchTrainer` (`ray_train/trainer.build_trainer`) and fits it, with Tune's `TuneReportCallback` in
the trainer's run config so every Train report (one per engine checkpoint) becomes a Tune
result that ASHA can act on. All points are drawn and validated before Tune starts
(search_space.py); the results are written by report.py.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import sys
from typing import Any, Optional

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping, dump_yaml
from raytrain_llm.core.errors import TrainingError, UsageError
from raytrain_llm.core.logger import Logger
from raytrain_llm.launchers.ray_train.cluster import DATA_TASK_CPUS, worker_resources
from raytrain_llm.launchers.tune.report import trial_folder
from raytrain_llm.launchers.tune.search_space import POINT_ID, apply_point, build_points
from raytrain_llm.launchers.tune.sweep_spec import SweepSpec, load_sweep, merge_base
from raytrain_llm.launchers.tune.trackers import set_trial_tracking, tag_best_trial

TRIAL_CPU = 0.01  # the trial function only waits on its trainer; Tune rejects 0
STOPPED_FILE = "early_stopped.json"
POINTS_FILE = "sweep_points.json"


# ---------------------------------------------------------------- per trial (runs in a Ray actor)
def trial_config(base: Config, point: dict[str, Any], sweep_dir: str,
                 monitor: Optional[tuple[str, str]] = None) -> Config:
    """The config one trial trains: the base with the point's values, its own folders, on Ray;
    `monitor` = the sweep's (metric, mode), which then also ranks the trial's checkpoints, so
    that its best checkpoint is best by the measure that picks the sweep's winner."""
    cfg = apply_point(base, point)
    if monitor:
        cfg.checkpoint.monitor, cfg.checkpoint.mode = monitor
    cfg.logging.dir = trial_folder(sweep_dir, point[POINT_ID])
    cfg.logging.tensorboard = True
    cfg.logging.progress_bar = "off"
    cfg.checkpoint.dir = ""  # under the trial's logging.dir
    cfg.checkpoint.resume = "none"
    cfg.distributed.launcher = "ray"
    cfg.distributed.run_name = point[POINT_ID]
    cfg.distributed.storage_path = os.path.join(sweep_dir, "train")
    set_trial_tracking(cfg, sweep_dir, point[POINT_ID])
    return cfg


def run_trial(tune_config: dict[str, Any], *, base: dict[str, Any], sweep_dir: str, sweep_name: str,
              monitor: Optional[tuple[str, str]] = None) -> None:
    """Tune's trainable: one Ray Train run; each of its reports reaches Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytrain_llm.launchers.ray_train.trainer import build_trainer, fit, resolve_paths

    point = tune_config["point"]
    cfg = trial_config(config_from_mapping(base), point, sweep_dir, monitor)
    cfg = resolve_paths(cfg, name=f"{sweep_name}-{point[POINT_ID]}")
    fit(build_trainer(cfg, run_callbacks=[TuneReportCallback()]), cfg)


def trial_name(trial) -> str:
    return trial.config["point"][POINT_ID]


# ---------------------------------------------------------------- scheduling
def make_scheduler(spec: SweepSpec):
    if spec.scheduler.type == "none":
        return None
    from raytrain_llm.launchers.tune.scheduler import RecordingASHA

    s = spec.scheduler
    return RecordingASHA(os.path.join(spec.sweep_dir, STOPPED_FILE), time_attr=s.time_attr,
                         grace_period=s.grace_period, max_t=s.max_t, reduction_factor=s.reduction_factor)


def trial_resources(cfg: Config) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds while it runs: its own function plus its Train workers."""
    per_worker, n = worker_resources(cfg), cfg.distributed.num_workers
    return TRIAL_CPU + n * per_worker["CPU"], n * per_worker.get("GPU", 0.0)


def auto_concurrency(cfgs: list[Config], cluster: dict[str, float]) -> int:
    """How many trials fit at once: the largest trial against the cluster, leaving CPUs for Ray Data.

    Over-committing is what hangs a sweep (Train retries worker start-up forever), so round down.
    """
    cpu = max(trial_resources(c)[0] for c in cfgs)
    gpu = max(trial_resources(c)[1] for c in cfgs)
    total_cpu = cluster.get("CPU", 0.0)
    n = math.floor(max(total_cpu - DATA_TASK_CPUS, 0.0) / cpu + 1e-9)
    if gpu:
        n = min(n, math.floor(cluster.get("GPU", 0.0) / gpu + 1e-9))
    return max(1, min(n, len(cfgs)))


# ---------------------------------------------------------------- the sweep
def _check_same_sweep(spec: SweepSpec, points: list[dict[str, Any]], base: Config) -> None:
    """A resumed sweep must be the same sweep: same points, same base config. A record without
    Tune state beside it is from a sweep refused before any trial started (e.g. it did not fit
    the machine): that name is still free."""
    from ray import tune

    path = os.path.join(spec.sweep_dir, POINTS_FILE)
    record = {"points": points, "base": base.to_dict()}
    if os.path.exists(path) and tune.Tuner.can_restore(spec.sweep_dir):
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        if json.loads(json.dumps(record)) != old:
            raise UsageError(f"sweep {spec.name!r} already exists in {spec.sweep_dir} with a different search "
                             "space or base config; give the sweep a new name (or delete that folder)")
        return
    from raytrain_llm.core.atomic_io import atomic_write_text

    os.makedirs(spec.sweep_dir, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))
    atomic_write_text(os.path.join(spec.sweep_dir, "base_config.yaml"), dump_yaml(base))
    if spec.source and os.path.isfile(spec.source):
        with open(spec.source, encoding="utf-8") as fh:
            atomic_write_text(os.path.join(spec.sweep_dir, "sweep.yaml"), fh.read())


def plan(base_config: Config, sweep_path: str,
         cli_keys: Optional[set[str]] = None) -> tuple[SweepSpec, Config, list[dict[str, Any]]]:
    """Parse, merge and validate everything a sweep needs, before Ray is touched."""
    spec = load_sweep(sweep_path)
    base = merge_base(base_config, spec.base_config, cli_keys)
    points = build_points(spec, base)
    return spec, base, points


def build_tuner(spec: SweepSpec, base: Config, points: list[dict[str, Any]], concurrency: int):
    from ray import tune

    trainable = tune.with_parameters(run_trial, base=base.to_dict(), sweep_dir=spec.sweep_dir,
                                     sweep_name=spec.name, monitor=(spec.metric, spec.mode))
    trainable = tune.with_resources(trainable, {"cpu": TRIAL_CPU})
    if tune.Tuner.can_restore(spec.sweep_dir):
        # Finished trials keep their results; unfinished ones run again (their Train run resumes
        # from its own latest checkpoint); errored ones stay errored.
        # The concurrency stored with the sweep applies: resume on a cluster at least as large.
        return tune.Tuner.restore(spec.sweep_dir, trainable, resume_unfinished=True, resume_errored=False), True
    tune_config = tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=make_scheduler(spec),
                                  max_concurrent_trials=concurrency, num_samples=1,
                                  trial_name_creator=trial_name, trial_dirname_creator=trial_name)
    run_config = tune.RunConfig(name=spec.name, storage_path=spec.storage_path, verbose=1,
                                failure_config=tune.FailureConfig(max_failures=0))
    return tune.Tuner(trainable, param_space={"point": tune.grid_search(points)},
                      tune_config=tune_config, run_config=run_config), False


def run_sweep(base_config: Config, sweep_path: str, cli_keys: Optional[set[str]] = None) -> dict[str, Any]:
    """Run (or resume) the sweep in `sweep_path` on top of `base_config` (`cli_keys`: see
    sweep_spec.merge_base); returns the report's summary."""
    spec, base, points = plan(base_config, sweep_path, cli_keys)
    _check_same_sweep(spec, points, base)
    logger = Logger("raytrain_llm.sweep", level=base.logging.level, log_dir=spec.sweep_dir, rank=0)
    # Reports from a save without validation carry no val metrics (ray_train/report_callback.py); keep Tune
    # from failing a trial over a result that lacks the metric.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    import ray
    from raytrain_llm.launchers.ray_train.cluster import init_ray, warn_if_unplaceable

    cfgs = [trial_config(base, p, spec.sweep_dir) for p in points]
    largest = max(cfgs, key=trial_resources)
    # A private cluster is sized (and checked) for the largest trial; ASHA's early stops need the State API.
    started = init_ray(largest, include_dashboard=True, extra_cpus=TRIAL_CPU)
    try:
        if not started:
            warn_if_unplaceable(largest, extra_cpus=TRIAL_CPU, logger=logger)
        fits = auto_concurrency(cfgs, ray.cluster_resources())
        concurrency = min(spec.max_concurrent_trials or fits, fits)
        if spec.max_concurrent_trials > fits:
            logger.warning(f"max_concurrent_trials={spec.max_concurrent_trials} lowered to {fits}: more trials at "
                           f"once do not fit in the cluster's free CPUs/GPUs and would hang waiting for them")
        tuner, resumed = build_tuner(spec, base, points, concurrency)
        logger.info(f"sweep {spec.name}: {len(points)} trials, {concurrency} at a time"
                    f"{' (resumed)' if resumed else ''}; results in {spec.sweep_dir}")
        grid = tuner.fit()
        from raytrain_llm.launchers.tune.report import collect_rows, write_report

        rows = collect_rows(spec, base, grid, points)
        summary = write_report(spec, base, rows)
        tag_best_trial(base, spec.sweep_dir, summary, rows, logger)
        unfinished = [r["trial"] for r in rows if r["status"] == "unfinished"]
    finally:
        logger.close()
        if started:
            ray.shutdown()
    if unfinished:  # Tune caught Ctrl-C (SIGINT) and saved its state
        print(f"sweep {spec.name} interrupted with {len(unfinished)} unfinished trial(s) "
              f"({', '.join(unfinished)}); run the same command again to resume it", file=sys.stderr)
        raise KeyboardInterrupt
    if summary.get("best") is None:
        errors = [f"{r['trial']}: {r['error']}" for r in rows if r.get("error")]
        reported = sorted({k for result in grid for k, v in (result.metrics or {}).items()
                           if "/" in k and isinstance(v, (int, float))})
        close = difflib.get_close_matches(spec.metric, reported, n=1)
        hint = (f" (did you mean {close[0]!r}?)" if close else
                f" (reported: {', '.join(reported[:12])})" if reported and not errors else "")
        # Every trial refusing its config (the sweep's metric is none of the task's: each trial
        # stops at its first validation, checkpoint.monitor being the metric) is a usage error.
        usage = len(errors) == len(rows) and all(r["error"].startswith(("UsageError", "ConfigError")) for r in rows)
        raise (UsageError if usage else TrainingError)(
            f"sweep {spec.name}: no trial reported {spec.metric}{hint}"
            + (f" ({'; '.join(errors)[:500]})" if errors else "") + f"; see {spec.sweep_dir}")
    best = summary["best"]
    print(f"best: {best['trial']} {spec.metric}={best['value']:.4g} -> {summary['best_config']}"
          + (f" (checkpoint {best['checkpoint']})" if best.get("checkpoint") else ""))
    print(f"table: {summary['table_md']}")
    return summary
