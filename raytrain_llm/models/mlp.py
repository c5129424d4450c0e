"""Dense feed-forward block: GELU or SwiGLU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hidden_width(d_model: int, mlp_ratio: float, mlp_type: str) -> int:
    """SwiGLU has three matrices instead of two, so it gets 2/3 of the width (LLaMA) to keep
    parameters and FLOPs close to the GELU MLP of the same ratio; rounded to a multiple of 8."""
    h = mlp_ratio * d_model * (2 / 3 if mlp_type == "swiglu" else 1)
    return max(8, int(round(h / 8)) * 8)


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, mlp_type: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.swiglu = mlp_type == "swiglu"
        # SwiGLU's gate and up projections share one matmul: [d, 2h] then chunk.
        self.fc = nn.Linear(d_model, hidden * (2 if self.swiglu else 1), bias=False)
        self.proj = nn.Linear(hidden, d_model, bias=False)
        self.proj.residual_out = True
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(activate(self.fc(x), self.swiglu)))


def activate(h: torch.Tensor, swiglu: bool) -> torch.Tensor:
    """GELU of h, or SiLU(gate) * up where h = [gate | up] along the last dim."""
    if swiglu:
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(h)
