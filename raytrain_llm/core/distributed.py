"""`DistributedManager`: rank, world size and collectives that also work with no process group.

Whoever launched the process (plain python, torch.multiprocessing.spawn, Ray Train) may or
may not have created a process group; everything downstream asks this object instead of
torch.distributed, so the engine has a single code path for one process and many.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from raytrain_llm.core.errors import UsageError, raised_on_every_rank


class DistributedManager:
    def __init__(self):
        self._owns_group = False

    # --- process group lifecycle (only for launchers that do not set one up themselves) ---
    def init_process_group(self, backend: str, rank: int, world_size: int, master_addr: str,
                           master_port: int, timeout_s: float = 600.0) -> None:
        if world_size <= 1 or dist.is_initialized():
            return
        os.environ.setdefault("MASTER_ADDR", master_addr)
        os.environ.setdefault("MASTER_PORT", str(master_port))
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        self._owns_group = True

    def cleanup(self) -> None:
        """Destroy the group this object created.

        A model still alive keeps the group alive past `destroy_process_group` (DDP holds it);
        the group's gloo thread may then still be releasing the last collective's tensor (which
        needs the GIL) when the interpreter finalizes, and the process aborts. Collecting first
        frees a model left in a reference cycle, so the group's destructor joins its threads
        here once the caller holds no model. After a failure the exception's traceback still
        holds one, and is left so: destroying a group whose collective waits on a failed peer
        could block, while an abort at exit comes after the error was reported (spawn's error
        file), so it changes no outcome."""
        if self._owns_group and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
            self._owns_group = False

    # --- identity ---
    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.enabled else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if self.enabled else 1

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", self.rank if self.enabled else 0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (no-ops in a single process) ---
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def any_true(self, flag: bool, device: Optional[torch.device] = None) -> bool:
        """True on every rank if it is true on one (e.g. a rank saw a NaN, or wants to stop)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device or "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_objects(self, obj) -> list:
        """Every rank's `obj`, indexed by rank, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @contextmanager
    def usage_errors_on_every_rank(self) -> Iterator[None]:
        """For a block with no collectives in it, run on every rank: a UsageError raised in it on
        any rank is raised after it on all of them, marked `on_every_rank`. Otherwise one rank's
        config or checkpoint problem leaves the others waiting in their next collective."""
        problem = None
        try:
            yield
        except UsageError as exc:
            problem = exc
        messages = [m for m in self.gather_objects(str(problem) if problem else None) if m]
        if messages:
            raise raised_on_every_rank(problem or UsageError(messages[0]))

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def pick_backend(requested: str, use_cuda: bool) -> str:
    if requested != "auto":
        return requested
    return "nccl" if use_cuda else "gloo"
