"""Mixture-of-Experts feed-forward layer with dropless sorted dispatch.

Experts are stacked 3-D weights ([E, d, h] and [E, h, d]): one parameter per projection, so
every expert is in the autograd graph on every step and DDP never sees an unused parameter.

Dispatch: the k*N (token, choice) assignments are laid out as rows in expert order, the tokens
are gathered into those rows, both projections run per expert block, the rows are scaled by
their combine weights and gathered back to their tokens. Backends for the expert GEMMs:
  grouped_mm - torch.nn.functional.grouped_mm over contiguous blocks with int32 cumulative
               offsets: CUDA bf16, compiled graphs, and eager CPU with larger experts
  split      - per-expert matmuls over `split(counts.tolist())`: the fallback where grouped_mm
               is missing (older torch, fp32 CUDA)
  padded     - one bmm over [E, C, d] slots (C = capacity, else the busiest expert's load):
               static shapes for compiled fp32 graphs, and eager CPU when experts are small
`loop` is the textbook per-expert reference (torch.where + index_add_), kept for tests.
benchmarks/moe_bench.py measures them side by side.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from raytrain_llm.models.mlp import MLP, activate
from raytrain_llm.models.router import Router, Routing

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
# Eager CPU: below this many rows per expert on average, `padded` was faster than `grouped_mm`
# (1.3x at 64 rows), above it slower (0.93x at 128 rows; benchmarks/moe_bench.py).
PADDED_MAX_ROWS_PER_EXPERT = 96


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    # grouped_mm is not autocast-aware (and on CUDA wants bf16): pick the dtype explicitly.
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@functools.lru_cache(maxsize=None)
def cpu_grouped_mm_works(dtype: torch.dtype) -> bool:
    """Whether this torch has an eager CPU grouped_mm kernel for `dtype` (newer releases do)."""
    if _grouped_mm is None:
        return False
    try:
        _grouped_mm(torch.zeros(2, 8, dtype=dtype), torch.zeros(1, 8, 8, dtype=dtype),
                    offs=torch.tensor([2], dtype=torch.int32))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def _gather_rows(t: torch.Tensor, index: torch.Tensor, pad: bool) -> torch.Tensor:
    """t[index] for 2-D t; with `pad`, index == len(t) reads a zero row (padding, drops). The
    zero row costs a copy of t, so layouts without padding or drops say so."""
    return (F.pad(t, (0, 0, 0, 1)) if pad else t).index_select(0, index)


def _sum_choices(rows: torch.Tensor, src: torch.Tensor, inverse: torch.Tensor, k: int,
                 atomic_free: Optional[bool] = None) -> torch.Tensor:
    """[k*N, d] rows -> [N, d]: each token's k rows summed. On CUDA a gather through `inverse`
    and a sum over k: index_add_ would take atomics there (nondeterministic sums). On CPU
    index_add_ is deterministic, whatever the thread count, and ~2x faster than gather + sum.
    `atomic_free` overrides the choice (tests run the CUDA way on CPU)."""
    if rows.is_cuda if atomic_free is None else atomic_free:
        return rows.index_select(0, inverse).view(k, -1, rows.shape[1]).sum(0)
    return rows.new_zeros(inverse.numel() // k, rows.shape[1]).index_add_(0, src, rows)


class _ToRows(torch.autograd.Function):
    """x [N, d] -> [k*N, d], row r holding token src[r] (a permutation of the assignments);
    `inverse` is the row of assignment slot*N + token. The backward sums each token's k rows
    of gradient without CUDA atomics (_sum_choices)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, src: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(src, inverse)
        ctx.k = k
        return x.index_select(0, src)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        src, inverse = ctx.saved_tensors
        return _sum_choices(grad, src, inverse, ctx.k), None, None, None


class _FromRows(torch.autograd.Function):
    """h [k*N, d] -> y [N, d], y[n] = sum of the rows of token n's k choices: _ToRows transposed."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, src: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(src)
        return _sum_choices(h, src, inverse, k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (src,) = ctx.saved_tensors
        return grad.index_select(0, src), None, None, None


@dataclass
class RowLayout:
    """Where the k*N assignments (id = choice * N + token) live as R rows in expert order."""

    src: torch.Tensor  # [R] token of each row; N marks a padding row
    inverse: torch.Tensor  # [k*N] row of each assignment; R marks a dropped one
    assign: torch.Tensor  # [R] assignment of each row; k*N marks a padding row
    k: int
    has_padding: bool
    has_drops: bool


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
        # Expert parallelism (models/moe_expert_parallel.shard_experts sets both): the group of
        # ranks splitting the experts, and the dispatch that exchanges tokens over it.
        self.expert_group = None
        self.expert_dispatch: Optional[Callable] = None
        for w in (self.w_in, self.w_out, self.router.weight):  # GPT re-inits; this is for standalone use
            nn.init.normal_(w, std=0.02)
        # grouped_mm needs 16-byte aligned row strides: 8 elements covers fp32 and bf16.
        self.gmm_ok = _grouped_mm is not None and d_model % 8 == 0 and hidden % 8 == 0

    def backend(self, x: torch.Tensor) -> str:
        if self.impl in ("loop", "split", "padded"):  # forced (config, tests, benchmarks)
            return self.impl
        dt = compute_dtype(x)
        if torch.compiler.is_compiling():  # no host sync allowed in a graph
            # The compile-time check of grouped_mm wants bf16.
            return "grouped_mm" if self.gmm_ok and dt == torch.bfloat16 else "padded"
        if x.is_cuda:
            return "grouped_mm" if self.gmm_ok and dt == torch.bfloat16 else "split"
        if self.top_k * x.shape[0] <= PADDED_MAX_ROWS_PER_EXPERT * self.num_experts:
            return "padded"  # small experts: one bmm beats per-expert GEMMs despite the padding
        return "grouped_mm" if self.gmm_ok and cpu_grouped_mm_works(dt) else "split"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, d]
        routing = self.router(x)
        if self.expert_dispatch is not None:
            y = self.expert_dispatch(self, x, routing)
        elif (backend := self.backend(x)) == "loop":
            y = self._loop(x, routing)
        else:
            y = self._dispatch(x, routing, backend)
        if self.shared is not None:
            y = y + self.shared(x)
        return self.drop(y.view(shape)), routing.stats

    def _dispatch(self, x: torch.Tensor, r: Routing, backend: str) -> torch.Tensor:
        N, E = x.shape[0], self.num_experts
        dt = compute_dtype(x)
        C = self.slots_per_expert(r, N) if backend == "padded" else None
        layout = self._row_layout(r, N, C)
        xs = self._to_rows(x.to(dt), layout)  # [R, d] in expert order
        # Combine weight of each row; 0 for padding rows and capacity drops.
        w_rows = _gather_rows(r.weights.t().reshape(-1, 1), layout.assign, layout.has_padding)  # [R, 1] fp32

        if backend == "padded":
            def project(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return torch.bmm(a.view(E, C, -1), w).view(E * C, -1)
        elif backend == "grouped_mm":
            offs = r.counts.cumsum(0).to(torch.int32)

            def project(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return _grouped_mm(a, w, offs=offs)
        else:
            sizes = r.counts.tolist()

            def project(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return torch.cat([ae @ we for ae, we in zip(a.split(sizes), w.unbind(0))])

        h = activate(project(xs, self.w_in.to(dt)), self.swiglu)  # [R, hidden]
        # Scale on whichever side of the second GEMM is narrower: the hidden side for
        # fine-grained experts; the output side otherwise, where fp32 weights promote the
        # rows to fp32 before the k choices are summed.
        if h.shape[1] <= x.shape[1]:
            out = project(h * w_rows.to(dt), self.w_out.to(dt)).float()
        else:
            out = project(h, self.w_out.to(dt)) * w_rows
        return self._from_rows(out, layout).to(x.dtype)

    @staticmethod
    def _to_rows(x: torch.Tensor, lay: RowLayout) -> torch.Tensor:
        if lay.has_padding:
            # Plain index_select: dynamo fails to lift the padded layout's symbolic sizes into
            # an autograd.Function. Its backward index_adds the k copies of a token (atomics
            # on CUDA), which only the compiled fp32 graphs meet.
            return _gather_rows(x, lay.src, True)
        return _ToRows.apply(x, lay.src, lay.inverse, lay.k)

    @staticmethod
    def _from_rows(h: torch.Tensor, lay: RowLayout) -> torch.Tensor:
        if lay.has_padding:  # backward: index_add_ onto distinct rows, deterministic
            return _gather_rows(h, lay.inverse, lay.has_drops).view(lay.k, -1, h.shape[1]).sum(0)
        return _FromRows.apply(h, lay.src, lay.inverse, lay.k)

    def slots_per_expert(self, r: Routing, N: int) -> int:
        if self.router.capacity_factor > 0:
            return self.router.capacity(N)
        if torch.compiler.is_compiling():
            return N  # static; a token picks an expert at most once (E/k times the FLOPs)
        return max(1, int(r.counts.max()))  # eager: a host sync buys ~1x instead of E/k x FLOPs

    def _row_layout(self, r: Routing, N: int, C: Optional[int]) -> RowLayout:
        """C None: R = k*N rows, the sorted assignments back to back (capacity drops keep their
        row, with weight 0). Else R = E*C: expert e owns rows [e*C, (e+1)*C), unused rows are
        padding and assignments past C are dropped (only when C is a capacity)."""
        k, kN = self.top_k, self.top_k * N
        if C is None:
            rows = torch.arange(kN, device=r.order.device)
            inverse = torch.empty_like(r.order).scatter_(0, r.order, rows)
            return RowLayout(r.order % N, inverse, r.order, k, has_padding=False, has_drops=False)
        E = self.num_experts
        sorted_expert = r.experts.t().reshape(-1)[r.order]  # [k*N]
        rank = torch.arange(kN, device=r.order.device) - (r.counts.cumsum(0) - r.counts)[sorted_expert]
        row = torch.where(rank < C, sorted_expert * C + rank, E * C)  # of each sorted assignment
        inverse = torch.empty_like(r.order).scatter_(0, r.order, row)
        # One spare row past E*C takes every dropped assignment, then goes.
        assign = r.order.new_full((E * C + 1,), kN).scatter_(0, row, r.order)[:-1]
        src = torch.where(assign == kN, N, assign % N)
        return RowLayout(src, inverse, assign, k, has_padding=True, has_drops=self.router.capacity_factor > 0)

    def _loop(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        dt = compute_dtype(x)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        # unbind, not w_in[e]: the backward of E selects would zero-fill E full-size gradients.
        w_in, w_out = self.w_in.to(dt).unbind(0), self.w_out.to(dt).unbind(0)
        for e in range(self.num_experts):
            tok, slot = torch.where(r.experts == e)
            h = activate(x[tok].to(dt) @ w_in[e], self.swiglu) @ w_out[e]
            y.index_add_(0, tok, h.float() * r.weights[tok, slot, None])
        return y.to(x.dtype)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on a few tokens (a decoding step, x [B, 1, d]): the router's choice as in
        forward, then each token's k experts gathered and applied with one bmm each way, and
        no balancing statistics. The sorted dispatch above is for many tokens; for one a row
        its sort, layout and host syncs cost more than the experts. With a capacity limit the
        forward's drop rule applies, and with sharded experts the exchange: forward is used."""
        if self.router.capacity_factor > 0 or self.expert_dispatch is not None:
            return self.forward(x)[0]
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, d]
        experts, weights = self.router.choose(x)  # [N, k], [N, k] fp32
        N, k = experts.shape
        h = torch.bmm(x.repeat_interleave(k, 0)[:, None], self.w_in[experts.flatten()])  # [N*k, 1, up]
        out = torch.bmm(activate(h, self.swiglu), self.w_out[experts.flatten()])[:, 0]  # [N*k, d]
        y = (out.float().view(N, k, -1) * weights[..., None]).sum(1).to(x.dtype)  # [N, d]
        if self.shared is not None:
            y = y + self.shared(x)
        return y.view(shape)

    def update_router_bias(self, counts: torch.Tensor, rate: float) -> None:
        self.router.update_bias(counts, rate)
