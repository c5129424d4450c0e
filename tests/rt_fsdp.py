"""Helpers for the FSDP tests: several training runs in one pair of gloo processes (one process
start for all of them), the training-state bytes each rank holds, and a checkpoint's weights."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from raytrain_llm.core.callbacks import Callback
from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.parallel.memory import local_state_bytes
from raytrain_llm.core.sharded.checkpoint import load_model_and_optimizer
from rt_testing import make_config

# A tiny GPT (2 blocks, tied embeddings); 20 optimizer steps of a global batch of 16 in one epoch.
LM = {"model.vocab_size": 32, "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.seq_len": 16,
      "model.dropout": 0.0, "data.num_train_samples": 320, "data.num_val_samples": 24, "training.lr": 1e-2,
      "training.val_every_n_steps": 10, "checkpoint.every_n_steps": 10, "checkpoint.keep_last": 0,
      "training.warmup_steps": 2}


class StateBytes(Callback):
    """Writes this rank's training-state bytes (core/parallel/memory.py) at the end of training."""

    def on_train_end(self, engine) -> None:
        counts = local_state_bytes(engine.raw_model, engine.optimizer)
        path = Path(engine.config.logging.dir) / f"state-bytes-rank{engine.dist.rank}.json"
        path.write_text(json.dumps(counts))


def _run_plan(rank: int, port: int, plan: list[tuple[str, dict]], world_size: int) -> None:
    torch.set_num_threads(1)
    group = DistributedManager()
    group.init_process_group("gloo", rank, world_size, "127.0.0.1", port)
    from raytrain_llm.launchers.worker import train_worker

    try:
        for folder, overrides in plan:
            cfg = make_config(Path(folder), "lm", **{**LM, **overrides})
            train_worker(cfg, dist=group, extra_callbacks=[StateBytes()], data_checked=True)
    finally:
        group.cleanup()


def run_two_ranks(plan: list[tuple[str, dict]], port: int, timeout_s: float, world_size: int = 2) -> None:
    """Each (logging.dir, settings) of `plan` trained in turn by the same `world_size` gloo processes."""
    context = mp.start_processes(_run_plan, args=(port, plan, world_size), nprocs=world_size, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world_size} ranks did not finish in {timeout_s} s")


def checkpoint_weights(path, **overrides) -> tuple[dict, dict]:
    """(model state_dict, optimizer state_dict) of the lm checkpoint folder `path`, full or sharded,
    read by the engine's own loader into a whole model in this process."""
    from raytrain_llm.tasks.lm_task import LanguageModelingTask

    task = LanguageModelingTask(make_config(Path(path).parent, "lm", **{**LM, **overrides}))
    model = task.build_model()
    optimizer = task.build_optimizer(model)
    load_model_and_optimizer(CheckpointManager.load(str(path)), model, optimizer)
    return model.state_dict(), optimizer.state_dict()
