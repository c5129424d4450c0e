"""The launcher without Ray for N processes: torch.multiprocessing.spawn (`distributed.launcher=spawn`).

It is what a plain-PyTorch user knows (gloo on CPU, nccl on GPUs) and is the
baseline against which the Ray launcher's overhead is measured.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import socket
from typing import Any

import torch

from raytrain_llm.core import interruption
from raytrain_llm.core.callbacks.metrics_logger import final_val_metrics, read_summary
from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping
from raytrain_llm.core.distributed import DistributedManager, pick_backend
from raytrain_llm.core.errors import RaytrainError, TrainingError, UsageError
from raytrain_llm.launchers.local.in_process import check_data_up_front, run_in_process
from raytrain_llm.launchers.worker import train_worker


def _spawned(rank: int, config_dict: dict[str, Any], world_size: int, port: int, parent_signal) -> None:
    config = config_from_mapping(config_dict)
    d = config.distributed
    use_cuda = torch.cuda.is_available() and config.training.device != "cpu"
    os.environ["LOCAL_RANK"] = str(rank)
    if use_cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    # The parent passes SIGTERM and Ctrl-C on as SIGTERM, and what it received in `parent_signal`
    # (the summary names the user's signal); the terminal's own Ctrl-C copy is ignored.
    interruption.install(signals=(signal.SIGTERM,), meaning=lambda signum: parent_signal.value or signum)
    interruption.ignore(signal.SIGINT)
    dist = DistributedManager()
    dist.init_process_group(pick_backend(d.backend, use_cuda), rank, world_size, d.master_addr, port)
    try:
        train_worker(config, dist=dist, data_checked=True)
    finally:
        dist.cleanup()


def child_exception(text: str) -> tuple[str, str]:
    """(exception type, first line of its message) from a child's formatted traceback. The line
    after the last traceback's frames, not the text's last line: torch's messages run on for
    lines of advice (DDP's unused-parameter error ends with one about TORCH_DISTRIBUTED_DEBUG)."""
    lines = text.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    for line in lines[starts[-1] + 1 if starts else 0:]:
        if line.strip() and not line[0].isspace():
            kind, _, message = line.partition(": ")
            return kind, message.strip()
    return "Exception", lines[-1].strip() if lines else ""


def _keep_traceback(config: Config, text: str) -> str:
    """The child's traceback in <logging.dir>/error.log (as the CLI keeps its own), or ""."""
    path = os.path.join(config.logging.dir, "error.log")
    try:
        os.makedirs(config.logging.dir, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text.strip() + "\n")
    except OSError:
        return ""
    return path


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """A fixed distributed.master_port another process holds: rank 0's store would fail to bind
    (EADDRINUSE) only after the workers started."""
    with socket.socket() as s:
        # As torch's TCPStore binds: a previous run's connections in TIME_WAIT do not hold the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"distributed.master_port: {host}:{port} cannot be used ({exc.strerror or exc}); "
                             "pick another port, or 0 for a free one per run") from None


def _stop_workers(parent_signal, signum: int) -> None:
    """spawn's parent passes a stop signal on to its workers (SIGTERM, also for a Ctrl-C, which
    `parent_signal` tells them): Kubernetes and Slurm signal the main process only."""
    parent_signal.value = parent_signal.value or signum
    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except OSError:
            pass


def run_spawn(config: Config) -> dict[str, Any]:
    world = config.distributed.num_workers
    if world == 1:
        return run_in_process(config)
    check_data_up_front(config)
    # 0 (the default) picks a free port per run: a fixed one would make two runs on one machine collide.
    port = config.distributed.master_port or free_port(config.distributed.master_addr)
    if config.distributed.master_port:
        check_port_free(config.distributed.master_addr, port)
    # When one worker fails torch stops the others and logs a line per process first; the
    # failure itself is reported below, in one line.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    try:
        # Shared memory the workers inherit; written only by the parent's signal handler.
        parent_signal = multiprocessing.get_context("spawn").RawValue("i", 0)
        with interruption.handling(forward=functools.partial(_stop_workers, parent_signal)):
            torch.multiprocessing.spawn(_spawned, args=(config.to_dict(), world, port, parent_signal), nprocs=world,
                                        join=True)
    except torch.multiprocessing.ProcessRaisedException as exc:
        kind, message = child_exception(str(exc))
        if kind.rsplit(".", 1)[-1] in ("UsageError", "ConfigError"):  # keep a usage error a usage error
            raise UsageError(message) from None
        where = _keep_traceback(config, str(exc))
        hint = ("; if the model has parameters that a step does not use, set distributed.find_unused_parameters=true"
                if "find_unused_parameters" in str(exc) else "")
        raise TrainingError(f"a spawned worker failed: {kind.rsplit('.', 1)[-1]}: {message}{hint}"
                            + (f" (traceback in {where})" if where else "")) from None
    except torch.multiprocessing.ProcessExitedException as exc:
        raise TrainingError(f"a spawned worker died: {exc}") from None
    summary = read_summary(config.logging.dir)
    if summary is None:
        raise RaytrainError(f"training finished but wrote no summary in {config.logging.dir}")
    return {"train": summary["final"].get("train", {}), "val": final_val_metrics(summary),
            "step": summary["global_step"], "best_checkpoint": summary.get("best_checkpoint"),
            "interrupted": summary.get("interrupted")}
