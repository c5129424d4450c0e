"""Launchers without Ray: one in-process run, or N processes with torch.multiprocessing.spawn.

The spawn path is what a plain-PyTorch user knows (gloo on CPU, nccl on GPUs) and is the
baseline against which the Ray launcher's overhead is measured.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

import torch

from raytrain_llm.core.callbacks.metrics_logger import final_val_metrics, read_summary
from raytrain_llm.core.config import Config
from raytrain_llm.core.distributed import DistributedManager, pick_backend
from raytrain_llm.core.errors import RaytrainError, TrainingError, UsageError
from raytrain_llm.core.worker import train_worker


def run_in_process(config: Config) -> dict[str, Any]:
    return train_worker(config)


def check_data_up_front(config: Config) -> None:
    """The data module's check (e.g. every token id of a token file), once, before any worker
    starts: a long pass inside a worker would keep the other ranks waiting in a collective,
    which times out on files of hundreds of GB."""
    from raytrain_llm.tasks.registry import resolve_task

    resolve_task(config.task)(config).build_data_module().check_data()


def _spawned(rank: int, config_dict: dict[str, Any], world_size: int, port: int) -> None:
    config = Config.from_dict(config_dict)
    d = config.distributed
    use_cuda = torch.cuda.is_available() and config.training.device != "cpu"
    os.environ["LOCAL_RANK"] = str(rank)
    if use_cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist = DistributedManager()
    dist.init_process_group(pick_backend(d.backend, use_cuda), rank, world_size, d.master_addr, port)
    try:
        train_worker(config, dist=dist, data_checked=True)
    finally:
        dist.cleanup()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_spawn(config: Config) -> dict[str, Any]:
    world = config.distributed.num_workers
    if world == 1:
        return run_in_process(config)
    check_data_up_front(config)
    # 0 (the default) picks a free port per run: a fixed one would make two runs on one machine collide.
    port = config.distributed.master_port or free_port(config.distributed.master_addr)
    # When one worker fails torch stops the others and logs a line per process first; the
    # failure itself is reported below, in one line.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    try:
        torch.multiprocessing.spawn(_spawned, args=(config.to_dict(), world, port), nprocs=world, join=True)
    except torch.multiprocessing.ProcessRaisedException as exc:
        # The child's traceback ends in "module.ErrorType: message": keep a usage error a usage error.
        last = str(exc).strip().splitlines()[-1]
        kind, _, message = last.partition(": ")
        if kind.rsplit(".", 1)[-1] in ("UsageError", "ConfigError"):
            raise UsageError(message) from None
        raise TrainingError(f"a spawned worker failed: {last}") from None
    except torch.multiprocessing.ProcessExitedException as exc:
        raise TrainingError(f"a spawned worker died: {exc}") from None
    summary = read_summary(config.logging.dir)
    if summary is None:
        raise RaytrainError(f"training finished but wrote no summary in {config.logging.dir}")
    return {"train": summary["final"].get("train", {}), "val": final_val_metrics(summary),
            "step": summary["global_step"], "best_checkpoint": summary.get("best_checkpoint")}
