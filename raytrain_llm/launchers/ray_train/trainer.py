"""The Ray Train launcher: `run_ray(config)` for the CLI, `build_trainer(config, ...)` for Tune.

Every worker runs the same `train_worker` as the in-process and spawn launchers; Ray adds only
the process group (gloo on CPU, nccl on GPU), Ray Data shards, checkpoint reports and restarts.
The engine wraps DDP itself, so Ray's `prepare_model` is deliberately not used.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Iterable, Optional

from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping
from raytrain_llm.core.distributed import pick_backend
from raytrain_llm.core.errors import TrainingError, UsageError
from raytrain_llm.launchers.ray_train.cluster import (
    init_ray,
    keep_private_ray_on_loopback,
    warn_if_unplaceable,
    worker_resources,
)
from raytrain_llm.launchers.ray_train.console import ray_console, shows_ray_logs, worker_console
from raytrain_llm.launchers.ray_train.driver_signals import fit_with_driver_signals, start_driver_stop
from raytrain_llm.launchers.ray_train.preload import import_in_background
from raytrain_llm.launchers.ray_train.report_callback import SCORE_KEY
from raytrain_llm.launchers.ray_train.results import failure_message, summarize, worker_usage_error

USAGE_ERROR_KEY = "usage_error"  # in the value train_loop_per_worker returns


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def resolve_paths(config: Config, *, name: Optional[str] = None, storage_path: Optional[str] = None) -> Config:
    """A copy with every path absolute (Ray workers chdir) and a run name and storage path set."""
    cfg = config_from_mapping(config.to_dict())
    cfg.logging.dir = _abs(cfg.logging.dir)
    if cfg.checkpoint.dir:
        cfg.checkpoint.dir = _abs(cfg.checkpoint.dir)
    if cfg.checkpoint.resume not in ("none", "auto"):
        cfg.checkpoint.resume = _abs(cfg.checkpoint.resume)
    for key in ("train_tokens", "val_tokens"):
        if getattr(cfg.data, key):
            # a comma-separated list of shards: each made absolute
            setattr(cfg.data, key, ",".join(_abs(p.strip()) for p in getattr(cfg.data, key).split(",") if p.strip()))
    d = cfg.distributed
    # A user task's `pkg.mod:Class` would put a colon in folder names and storage URIs.
    d.run_name = name or d.run_name or f"{re.sub(r'[^A-Za-z0-9._-]', '-', cfg.task)}-{time.strftime('%Y%m%d-%H%M%S')}"
    d.storage_path = _abs(storage_path or d.storage_path or os.path.join(cfg.logging.dir, "ray"))
    return cfg


def train_loop_per_worker(loop_config: dict[str, Any]) -> Optional[dict[str, str]]:
    """Runs in each Ray Train worker; the process group already exists when it starts.

    A usage error that every rank raised alike (see `UsageError.on_every_rank`) ends the run as
    a normal return carrying its message (`fit` raises it in the driver): as a worker failure it
    would print each rank's traceback and be retried `max_failures` times, to fail the same way."""
    from raytrain_llm.launchers.ray_train.driver_signals import follow_driver_stop
    from raytrain_llm.launchers.ray_train.interruption import raise_if_interrupted, watch_for_preemption

    watch_for_preemption()
    follow_driver_stop(loop_config.get("driver_stop"))  # SIGTERM / Ctrl-C to the driver
    try:
        _train(loop_config)
    except UsageError as exc:
        if not exc.on_every_rank:
            raise
        return {USAGE_ERROR_KEY: str(exc)}
    raise_if_interrupted(loop_config.get("driver_stop"))  # a worker's SIGTERM: saved and reported; Ray restarts
    return None


def _train(loop_config: dict[str, Any]) -> None:
    import ray.train

    from raytrain_llm.launchers.ray_train.data_shards import RayShardDataModule, start_reading

    # First: Ray Data's pipeline (split coordinator, generating tasks and their processes) starts
    # while this worker imports and builds its model. Every rank asks for its shard here alike.
    train_shard = ray.train.get_dataset_shard("train")
    train_stream = start_reading(train_shard)

    from raytrain_llm.core.distributed import DistributedManager
    from raytrain_llm.launchers.ray_train.checkpoint_pointer import resolve as resolve_pointer
    from raytrain_llm.launchers.ray_train.checkpoint_pointer import stores_in_place
    from raytrain_llm.launchers.ray_train.console import open_worker_console
    from raytrain_llm.launchers.ray_train.report_callback import RayReportCallback
    from raytrain_llm.launchers.worker import train_worker

    config = config_from_mapping(loop_config["config"])
    ctx = ray.train.get_context()
    os.environ["LOCAL_RANK"] = str(ctx.get_local_rank())
    if not config.distributed.use_gpu and config.training.device == "auto":
        config.training.device = "cpu"  # a GPU may be visible on this node, but none was reserved
    dist = DistributedManager()
    _record_placement(config, ctx, dist.rank)

    def data_module_factory(inner):
        return RayShardDataModule(inner, train_shard, lambda: ray.train.get_dataset_shard("val"),
                                  rank=dist.rank, world_size=dist.world_size, stream=train_stream)

    callbacks = [RayReportCallback(config.checkpoint.monitor, config.checkpoint.enabled, config.checkpoint.mode,
                                   in_place=stores_in_place(config))]
    kwargs = dict(dist=dist, data_module_factory=data_module_factory, extra_callbacks=callbacks,
                  data_checked=bool(loop_config.get("data_checked")),
                  console=open_worker_console(loop_config, dist.is_main),  # relayed by the driver (console.py)
                  console_is_terminal=loop_config.get("console_is_terminal"))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        if config.checkpoint.resume == "none" and _engine_checkpoint_after(config, dist, -1):
            config.checkpoint.resume = "auto"
        train_worker(config, **kwargs)
        return
    # After a restart (or a resumed run name): continue exactly from the last reported checkpoint,
    # or from a newer one of this run that Ray never registered.
    with checkpoint.as_directory() as reported:
        path = resolve_pointer(reported)  # the engine's own folder when Ray holds a pointer to it
        if _engine_checkpoint_after(config, dist, _saved_step(path)):
            config.checkpoint.resume = "auto"
            train_worker(config, **kwargs)
        else:
            train_worker(config, resume_from=path, **kwargs)


def _saved_step(path: str) -> int:
    from raytrain_llm.core.checkpointing import read_meta

    return int((read_meta(path) or {"step": -1})["step"])


def _engine_checkpoint_after(config: Config, dist, step: int) -> bool:
    """Whether this run's own checkpoint folder holds a checkpoint newer than `step`.

    Ray registers a report only when its controller next polls the workers, so a worker killed
    within a poll interval of a save restarts from the report before it (or from none), although
    the newer checkpoint is on disk. `build_trainer` refused folders holding an earlier run's
    checkpoints, so whatever is there now is this run's. Every rank must decide alike.
    """
    from raytrain_llm.core.checkpointing import CheckpointManager

    if not config.checkpoint.enabled:
        return False
    found = CheckpointManager(config.checkpoint_dir, is_main=False).checkpoints()
    seen = dist.gather_objects(found[-1]["step"] if found else None)
    if not any(s is not None for s in seen):
        return False
    if len(set(seen)) > 1:
        if step >= 0:  # node-local folders: Ray's own checkpoint is the one every rank can load
            return False
        raise TrainingError(f"restarted without a Ray checkpoint, and ranks see different checkpoints in "
                            f"{config.checkpoint_dir} (newest steps {seen}): put logging.dir on storage all "
                            f"nodes share")
    return seen[0] > step


SNAPSHOT = "checkpoint_manager_snapshot.json"  # what Ray Train checks for to restore a run name


def ray_restores_run(config: Config) -> bool:
    """Whether Ray will restore this run name: its checkpoint snapshot is in storage (local or a URI)."""
    d = config.distributed
    if "://" not in d.storage_path:
        return os.path.exists(os.path.join(d.storage_path, d.run_name, SNAPSHOT))
    import pyarrow
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(d.storage_path)
        info = fs.get_file_info(f"{root.rstrip('/')}/{d.run_name}/{SNAPSHOT}")
    except (OSError, ValueError, pyarrow.ArrowException):
        return False  # Ray itself will name what is wrong with the storage
    return info.type != pyarrow.fs.FileType.NotFound


def _refuse_stale_checkpoints(config: Config, restoring: bool) -> None:
    """A new run must not start in a folder holding another run's checkpoints (as the engine rules)."""
    from raytrain_llm.core.checkpointing import CheckpointManager

    if config.checkpoint.resume != "none" or not config.checkpoint.enabled or restoring:
        return
    CheckpointManager(config.checkpoint_dir, is_main=False).refuse_earlier_run()


def _record_placement(config: Config, ctx, rank: int) -> None:
    """Where this rank runs (node id, IP, pid), in <logging.dir>/logs: the first thing to check on a cluster."""
    import ray

    logs = os.path.join(config.logging.dir, "logs")
    os.makedirs(logs, exist_ok=True)
    info = {"rank": rank, "local_rank": ctx.get_local_rank(), "node_rank": ctx.get_node_rank(),
            "node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}
    with open(os.path.join(logs, f"ray_worker_rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump(info, fh)


def build_trainer(config: Config, *, run_callbacks: Iterable[Any] = (), name: Optional[str] = None,
                  storage_path: Optional[str] = None, private_cluster: bool = False, driver_stop=None,
                  console: Optional[dict[str, Any]] = None):
    """A ready-to-`fit()` TorchTrainer for `config` (needs `ray.init` first; Tune calls this per trial).

    `private_cluster`: Ray was started by this process and ends with it (see private_cluster.py).
    `driver_stop`: the `driver_signals.DriverStop` actor the workers take a stop request from.
    `console`: console.worker_console's settings for rank 0 (default: the worker's own stderr)."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    from raytrain_llm.launchers.ray_train.data_shards import build_ray_datasets, warm_slot_process
    from raytrain_llm.launchers.ray_train.early_split import EarlySplitDataConfig
    from raytrain_llm.launchers.ray_train.interruption import stop_signals_on_workers
    from raytrain_llm.launchers.task_resolution import resolve_task

    cfg = resolve_paths(config, name=name, storage_path=storage_path)
    d, ck = cfg.distributed, cfg.checkpoint
    restoring = ray_restores_run(cfg)
    _refuse_stale_checkpoints(cfg, restoring)
    data_module = resolve_task(cfg.task)(cfg).build_data_module()
    data_module.require_a_batch(cfg.training.batch_size, d.num_workers)  # before any worker starts
    data_module.check_data()  # here, not on rank 0 while the other ranks wait (see local/in_process.check_data_up_front)
    keep = ck.keep_last + ck.keep_best if ck.keep_last else None
    run_config = ray.train.RunConfig(
        name=d.run_name, storage_path=d.storage_path, callbacks=[*run_callbacks, stop_signals_on_workers()],
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=keep, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order=ck.mode),
        failure_config=ray.train.FailureConfig(max_failures=d.max_failures,
                                               max_preemption_failures=d.max_preemption_failures))
    # A resumed or restored run may go on from another global batch's data position, so its
    # stream spans every epoch rather than ending where max_steps would from the start.
    datasets = build_ray_datasets(cfg, data_module, d.num_workers, every_epoch=restoring or ck.resume != "none")
    trainer_class = TorchTrainer
    if private_cluster:
        from raytrain_llm.launchers.ray_train.private_cluster import PrivateClusterTorchTrainer as trainer_class

        warm_slot_process(cfg)  # the first generating task's process, ready when the first read starts
    return trainer_class(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "data_checked": True, "driver_stop": driver_stop,
                           **(console or {})},
        torch_config=TorchConfig(backend=pick_backend(d.backend, d.use_gpu)),
        scaling_config=ray.train.ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu,
                                               resources_per_worker=worker_resources(cfg),
                                               placement_strategy=d.placement_strategy),
        run_config=run_config,
        datasets=datasets,
        # preserve_order makes shard k of every epoch the same blocks: deterministic data per rank.
        # The training set is split here, now, so that Ray Data starts with the workers (early_split).
        dataset_config=EarlySplitDataConfig({"train": datasets["train"]}, d.num_workers,
                                            execution_options=ExecutionOptions(preserve_order=True)))


def fit(trainer, cfg: Config):
    """`trainer.fit()`, with a failed run turned into our one-line `TrainingError` (exit 1)."""
    import ray.train

    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _failure(cfg, exc) from None
    except SystemExit:  # Train's own SIGINT handler exits rather than raise KeyboardInterrupt
        raise KeyboardInterrupt from None
    return check_result(result, cfg)


def check_result(result, cfg: Config):
    """A finished fit's result, or its one-line error: a failed run (exit 1) or the usage error
    the workers stopped on (exit 2)."""
    if getattr(result, "error", None) is not None:
        raise _failure(cfg, result.error)
    value = getattr(result, "return_value", None)  # Train V2 only
    usage = value.get(USAGE_ERROR_KEY) if isinstance(value, dict) else None
    if usage:
        raise UsageError(usage)
    return result


def _failure(cfg: Config, exc: BaseException) -> Exception:
    """A worker's usage error stays a usage error (exit 2, its own message), as in-process."""
    usage = worker_usage_error(exc)
    return UsageError(usage) if usage else TrainingError(failure_message(cfg, exc))


def run_ray(config: Config) -> dict[str, Any]:
    """Train on Ray (an existing cluster or a private local one); returns final metrics and paths."""
    cfg = resolve_paths(config)
    keep_private_ray_on_loopback(cfg)  # before Ray is imported
    import ray

    preload = import_in_background(cfg.task)  # while ray.init waits for the node to start
    with ray_console(cfg, lambda: init_ray(cfg, log_to_driver=shows_ray_logs(cfg))) as started:
        stop = None
        try:
            preload.join()
            if not started:
                warn_if_unplaceable(cfg)
            else:
                from raytrain_llm.launchers.ray_train.private_cluster import start_ray_data_actors

                start_ray_data_actors()  # up before Train's controller and Ray Data ask for them
            stop = start_driver_stop()
            trainer = build_trainer(cfg, private_cluster=started, driver_stop=stop, console=worker_console(cfg))
            return summarize(cfg, fit_with_driver_signals(lambda: fit(trainer, cfg), stop))
        finally:
            if stop is not None:
                ray.kill(stop)
            if started:
                ray.shutdown()


__all__ = ["build_trainer", "check_result", "fit", "resolve_paths", "run_ray", "train_loop_per_worker"]
