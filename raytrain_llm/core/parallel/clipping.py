"""Gradient clipping by the global norm over sharded (DTensor) or whole gradients."""
from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def clip_sharded_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The 2-norm of all gradients, over every rank's shards, and the gradients scaled down to
    `max_norm` when above it (`max_norm <= 0`: no clipping). The norm of DTensor shards comes back
    as a partial DTensor: `full_tensor()` sums the ranks' squares (an all-reduce), so every rank
    clips by the same, true norm. Returns a plain tensor."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
    return norm
