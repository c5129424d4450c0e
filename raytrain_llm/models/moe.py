"""Mixture-of-Experts feed-forward layer with dropless sorted dispatch.

Experts are stacked 3-D weights ([E, d, h] and [E, h, d]): one parameter per projection, so
every expert is in the autograd graph on every step and DDP never sees an unused parameter.

Dispatch (`grouped`): sort the k*N assignments by expert, gather the tokens in that order,
run both projections as one grouped GEMM over contiguous per-expert row blocks, scale by the
combine weights and un-sort. No host sync on that path. Backends for the expert GEMMs:
  grouped_mm - torch.nn.functional.grouped_mm with int32 cumulative offsets (CUDA, compile)
  split      - per-expert matmuls over `split(counts.tolist())`: needs a host sync, which
               costs nothing on CPU, and is the faster choice there (benchmarks/moe_bench.py)
  padded     - one bmm over [E, capacity, d] slots: static shapes for compiled fp32 graphs
`loop` is the textbook per-expert reference (torch.where + index_add_), kept for tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raytrain_llm.models.mlp import MLP, activate
from raytrain_llm.models.router import Router, Routing

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    # grouped_mm is not autocast-aware (and on CUDA wants bf16): pick the dtype explicitly.
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[index] for 2-D t. gather with an expanded index: on CPU it runs ~5x faster than
    index_select or t[index] for a random permutation of a large tensor (it parallelises)."""
    return torch.gather(t, 0, index[:, None].expand(-1, t.shape[1]))


class _Dispatch(torch.autograd.Function):
    """x [N, d] -> its k*N assignment rows in expert order. Backward gathers the gradient back
    to slot-major order and sums the k slots: pure gathers, no scatter-add (slow on CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.n = x.shape[0]
        return _rows(x, order % x.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return _rows(grad, inverse).view(-1, ctx.n, grad.shape[1]).sum(0), None, None


class _PermuteRows(torch.autograd.Function):
    """t[perm] whose backward is the gather g[inverse]."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return _rows(t, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return _rows(grad, inverse), None, None


class MoE(nn.Module):
    def __init__(self, d_model: int, hidden: int, num_experts: int, top_k: int, *, mlp_type: str = "gelu",
                 num_shared_experts: int = 0, capacity_factor: float = 0.0, bias_balancing: bool = False,
                 impl: str = "auto", dropout: float = 0.0):
        super().__init__()
        assert 1 <= top_k <= num_experts
        self.num_experts, self.top_k, self.impl = num_experts, top_k, impl
        self.swiglu = mlp_type == "swiglu"
        self.router = Router(d_model, num_experts, top_k, capacity_factor, bias_balancing)
        up = hidden * (2 if self.swiglu else 1)  # SwiGLU: [gate | up] in one matrix
        self.w_in = nn.Parameter(torch.empty(num_experts, d_model, up))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w_out.residual_out = True
        # Shared experts see every token with weight 1: n of them equal one MLP n times as wide.
        self.shared = MLP(d_model, hidden * num_shared_experts, mlp_type) if num_shared_experts else None
        self.drop = nn.Dropout(dropout)
        for w in (self.w_in, self.w_out, self.router.weight):  # GPT re-inits; this is for standalone use
            nn.init.normal_(w, std=0.02)
        # grouped_mm needs 16-byte aligned row strides: 8 elements covers fp32 and bf16.
        self.gmm_ok = _grouped_mm is not None and d_model % 8 == 0 and hidden % 8 == 0

    def backend(self, x: torch.Tensor) -> str:
        if self.impl in ("loop", "split", "padded"):  # forced (tests, benchmarks)
            return self.impl
        compiling = torch.compiler.is_compiling()
        # grouped_mm takes fp32 only on the eager CPU kernel; CUDA and the compile-time shape
        # check want bf16.
        gmm = self.gmm_ok and (compute_dtype(x) == torch.bfloat16 or (x.device.type == "cpu" and not compiling))
        if compiling:
            return "grouped_mm" if gmm else "padded"  # no host sync allowed in a graph
        if gmm and (self.impl == "grouped" or x.is_cuda):
            return "grouped_mm"
        return "split"  # eager CPU: measured fastest; CUDA fp32: grouped_mm unsupported

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, d]
        routing = self.router(x)
        backend = self.backend(x)
        if backend == "loop":
            y = self._loop(x, routing)
        else:
            y = self._sorted(x, routing, backend)
        if self.shared is not None:
            y = y + self.shared(x)
        return self.drop(y.view(shape)), routing.stats

    def _sorted(self, x: torch.Tensor, r: Routing, backend: str) -> torch.Tensor:
        N, k = x.shape[0], self.top_k
        dt = compute_dtype(x)
        inverse = torch.empty_like(r.order).scatter_(0, r.order, torch.arange(k * N, device=x.device))
        xs = _Dispatch.apply(x.to(dt), r.order, inverse)  # [k*N, d] rows grouped by expert
        w_in, w_out = self.w_in.to(dt), self.w_out.to(dt)
        if backend == "grouped_mm":
            offs = r.counts.cumsum(0).to(torch.int32)
            h = _grouped_mm(activate(_grouped_mm(xs, w_in, offs=offs), self.swiglu), w_out, offs=offs)
        elif backend == "padded":
            h = self._padded(xs, w_in, w_out, r)
        else:
            sizes = r.counts.tolist()
            h = torch.cat([activate(xe @ wi, self.swiglu) @ wo
                           for xe, wi, wo in zip(xs.split(sizes), w_in.unbind(0), w_out.unbind(0))])
        h = h * r.weights.t().reshape(-1)[r.order, None]  # [k*N, d], fp32 weights promote
        # Un-sort with the inverse permutation and sum the k slots: a gather, not a scatter-add.
        return _PermuteRows.apply(h, inverse, r.order).view(k, N, -1).sum(0).to(x.dtype)

    def _padded(self, xs: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, r: Routing) -> torch.Tensor:
        """One batched GEMM over [E, C, d] slots. C is the capacity, else the busiest expert's
        load (eager), else N (compiled: static, but E/k times the FLOPs; used only for fp32
        graphs, where grouped_mm refuses fp32). Few ops, so it wins for many small experts."""
        E, N = self.num_experts, xs.shape[0] // self.top_k
        if self.router.capacity_factor > 0:
            C = self.router.capacity(N)
        elif torch.compiler.is_compiling():
            C = N  # a token picks an expert at most once
        else:
            C = max(1, int(r.counts.max()))  # eager: a host sync buys ~1x instead of E/k x FLOPs
        sorted_expert = r.experts.t().reshape(-1)[r.order]
        rank = torch.arange(xs.shape[0], device=xs.device) - (r.counts.cumsum(0) - r.counts)[sorted_expert]
        # Over-capacity rows (weight 0 already) park in one spare row past the E*C slots.
        slot = torch.where(rank < C, sorted_expert * C + rank, E * C)
        buf = xs.new_zeros(E * C + 1, xs.shape[1]).index_copy(0, slot, xs)[:-1].view(E, C, -1)
        h = torch.bmm(activate(torch.bmm(buf, w_in), self.swiglu), w_out).reshape(E * C, -1)
        return h[slot.clamp_max(E * C - 1)]

    def _loop(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        dt = compute_dtype(x)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e in range(self.num_experts):
            tok, slot = torch.where(r.experts == e)
            h = activate(x[tok].to(dt) @ self.w_in[e].to(dt), self.swiglu) @ self.w_out[e].to(dt)
            y.index_add_(0, tok, h.float() * r.weights[tok, slot, None])
        return y.to(x.dtype)

    def update_router_bias(self, counts: torch.Tensor, rate: float) -> None:
        self.router.update_bias(counts, rate)
