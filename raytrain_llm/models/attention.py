"""Causal self-attention with rotary (RoPE) or no positional term.

Learned absolute positions live in the model's embedding, so this module only knows RoPE.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

_SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
_CAN_PRIORITISE = "set_priority" in inspect.signature(sdpa_kernel).parameters  # torch >= 2.6


def sdpa_order(preferred: str) -> Optional[list]:
    """The SDPA backends to allow, `preferred` first; None keeps torch's own choice.

    On CUDA torch tries FlashAttention-2 first; on Hopper cuDNN's fused attention can be faster
    below ~8k tokens, so which one wins is measured (benchmarks/gpu.sh), not assumed. Where the
    preferred kernel cannot run (fp32 for flash, head size, dropout) the others follow it, so the
    choice never becomes an error. CPU ignores the order (it has flash and math): there only
    `math`, allowed alone, changes the kernel. Torch without priorities (< 2.6) allows the
    preferred backend alone."""
    if preferred == "auto":
        return None
    first = _SDPA[preferred]
    if preferred == "math" or not _CAN_PRIORITISE:
        return [first]
    return [first] + [b for name, b in _SDPA.items() if name != preferred]


class Rotary(nn.Module):
    """Rotary position embedding tables, rotate-half convention (GPT-NeoX/LLaMA style)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # [T, hd/2]
        # Non-persistent: derived from the config, so checkpoints need not carry them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = q.shape[-2]
        cos, sin = self.cos[:T].to(q.dtype), self.sin[:T].to(q.dtype)  # [T, hd/2]
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def at(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As forward, at explicit per-row positions [B, T] (decoding with a KV cache)."""
        cos, sin = self.cos[positions][:, None].to(q.dtype), self.sin[positions][:, None].to(q.dtype)  # [B, 1, T, hd/2]
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # each [B, H, T, hd/2]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, seq_len: int, dropout: float, rope: bool,
                 backend: str = "auto"):
        super().__init__()
        assert d_model % n_heads == 0
        self.n_heads, self.dropout = n_heads, dropout
        self.sdpa_order = sdpa_order(backend)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.proj.residual_out = True  # scaled init, see GPT._init_weights
        self.resid_drop = nn.Dropout(dropout)
        self.rotary = Rotary(d_model // n_heads, seq_len) if rope else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        if self.sdpa_order is None:
            y = self._attend(q, k, v)
        else:
            kwargs = {"set_priority": True} if len(self.sdpa_order) > 1 else {}
            with sdpa_kernel(self.sdpa_order, **kwargs):  # compiles inside a fullgraph too
                y = self._attend(q, k, v)
        y = y.transpose(1, 2).reshape(B, T, C)  # [B, T, C]
        return self.resid_drop(self.proj(y))

    def forward_cached(self, x: torch.Tensor, cache, layer: int, positions: torch.Tensor,
                       mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Decoding (eval only): x [B, T, C] are the tokens after the cache's filled slots, at
        `positions` [B, T]; mask [B, 1, T, S], or None for causal attention over every filled
        slot (see KVCache.step_inputs). The training forward above stays as it is."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        if self.rotary is not None:
            q, k = self.rotary.at(q, k, positions)
        k, v = cache.update(layer, k, v)  # [B, H, S, hd]
        # No mask: T new queries after S - T cached slots. is_causal aligns top-left, which is right
        # for the first step (S = T) and not needed for a one-token step (it sees every slot).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              dropout_p=self.dropout if self.training else 0.0)
