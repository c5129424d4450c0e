"""Bytes a rank holds for the training state: the memory FSDP divides among the ranks."""
from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def local_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """{"params", "grads", "optimizer"}: bytes of this rank's parameters (its shards under FSDP,
    every parameter once), of their gradients during a step (each trainable parameter's local
    gradient has its local shape, whether or not one is held right now) and of the optimizer's
    state tensors (AdamW's moments: local shards under FSDP)."""
    params = list(model.parameters())  # a shared (tied) parameter counts once
    state = [v for per_param in optimizer.state.values() for v in per_param.values() if torch.is_tensor(v)]
    return {"params": sum(_local_bytes(p) for p in params),
            "grads": sum(_local_bytes(p) for p in params if p.requires_grad),
            "optimizer": sum(_local_bytes(v) for v in state)}
