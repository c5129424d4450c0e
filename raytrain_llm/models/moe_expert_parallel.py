"""Expert parallelism for the MoE layer: the experts split over a group of ranks, tokens exchanged
all-to-all.

Each of the P ranks of the expert group holds E/P consecutive experts of every MoE layer (rank p:
experts [p*E/P, (p+1)*E/P)); router, shared experts and the rest of the model are replicated.
One layer's forward on a rank with N tokens, top-k:
  1. route locally, lay the k*N assignments out as rows in expert order (as MoE's dispatch does)
  2. exchange the row counts per (rank, expert): all_to_all_single of [P, E/P] each way (with a
     capacity limit, the all_gather of counts that the capacity rule made already holds them)
  3. send every rank the rows of its experts: all_to_all_single with variable splits (autograd)
  4. reorder the received rows from [source rank][expert] to [expert][source rank], run the local
     experts with the grouped kernel, reorder back
  5. send the rows home (the transposed exchange), scale by the combine weights, sum each
     token's k rows.
Backward runs the same exchanges transposed. Routing and router statistics are computed before
the exchange, on this rank's tokens, as the layer without expert parallelism computes them.
A capacity limit (model.capacity_factor > 0) is the group's: the router gathers every group
rank's assignment counts per (slot, expert) and drops as the layer without expert parallelism
would on one batch of the group's tokens, rank 0's first (Router._drop_over_capacity). The
statistics stay this rank's tokens' (its dropped fraction: of its own assignments, under the
group's rule). Dropped assignments travel with weight 0.
Every rank of the group must run the layer the same number of times (the exchange is collective).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

# Loaded here, before any graph is traced: the router imports it where a capacity is shared.
from raytrain_llm.models.count_exchange import gather_counts  # noqa: F401
from raytrain_llm.models.mlp import activate
from raytrain_llm.models.moe import MoE, _FromRows, _grouped_mm, _ToRows, compute_dtype, cpu_grouped_mm_works
from raytrain_llm.models.router import Routing


def _exchange(x: torch.Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """x [sum(send), ...] -> [sum(recv), ...]: block i of x to rank i, block j of the result from rank j."""
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """_exchange with a backward: the gradient goes back by the transposed exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return _exchange(x, send, recv, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad, ctx.recv, ctx.send, ctx.group), None, None, None


def shard_experts(moe: MoE, group: dist.ProcessGroup) -> list[nn.Parameter]:
    """Keep this rank's E/P experts of `moe` (in place: the Parameter objects stay, so an
    optimizer built before still holds them); the layer then dispatches over `group`. The full
    weights come from the same seeded init on every rank, so the shards start as slices of the
    single-process layer. Returns the sharded parameters."""
    P, p = dist.get_world_size(group), dist.get_rank(group)
    local = moe.num_experts // P
    with torch.no_grad():
        for w in (moe.w_in, moe.w_out):
            w.data = w.data[p * local:(p + 1) * local].clone()
    moe.expert_group, moe.expert_dispatch = group, expert_parallel_dispatch
    moe.router.capacity_group = group  # a capacity limit counts the group's tokens
    return [moe.w_in, moe.w_out]


def _source_to_expert_order(counts: torch.Tensor, total: int) -> torch.Tensor:
    """counts [P, L] rows per (source rank, local expert), laid out source-major; returns the
    permutation (index_select order) that lays the same rows out expert-major."""
    flat = counts.flatten()  # [P*L]
    starts = (flat.cumsum(0) - flat).view(counts.shape).t().flatten()  # [L*P] source-major start, expert-major
    sizes = counts.t().flatten()
    block_start = sizes.cumsum(0) - sizes  # where each block begins in expert-major order
    return torch.repeat_interleave(starts - block_start, sizes, output_size=total) + \
        torch.arange(total, device=counts.device)


def _local_experts(moe: MoE, h: torch.Tensor, rows_per_expert: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """h [R, d] in local-expert order -> [R, d]: both projections of each row's expert."""
    dt = h.dtype
    # A compiled graph takes grouped_mm in bf16 only (its compile-time check), as MoE.backend.
    bf16_only = h.is_cuda or torch.compiler.is_compiling()
    use_gmm = moe.gmm_ok and (dt == torch.bfloat16 if bf16_only else cpu_grouped_mm_works(dt))
    if use_gmm:
        offs = rows_per_expert.cumsum(0).to(torch.int32)

        def project(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return _grouped_mm(a, w, offs=offs)
    else:
        def project(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return torch.cat([ae @ we for ae, we in zip(a.split(sizes), w.unbind(0))])

    return project(activate(project(h, moe.w_in.to(dt)), moe.swiglu), moe.w_out.to(dt))


@torch.compiler.disable  # collectives and a host sync: outside any compiled graph
def _rows_to_owners(xs: torch.Tensor, r: Routing, group: dist.ProcessGroup, L: int):
    """xs [k*N, d] in expert order -> (the rows this rank's experts get [R, d] in blocks
    [source rank][local expert], their counts [P, L], rows sent per rank, rows received per
    rank, rows per block [L*P] expert-major). The counts of every rank come from the capacity
    rule's gather when it made one, else from an exchange of counts."""
    P = dist.get_world_size(group)
    send_counts = r.counts.view(P, L)  # rows for each destination rank's each expert
    if r.group_counts is None:
        recv_counts = _exchange(send_counts, [1] * P, [1] * P, group)  # [P, L] rows from each source rank
    else:  # [P, k, E] -> this rank's experts
        p = dist.get_rank(group)
        recv_counts = r.group_counts.sum(1)[:, p * L:(p + 1) * L]
    sizes = torch.cat([send_counts.sum(1), recv_counts.sum(1), recv_counts.t().flatten()]).tolist()  # one sync
    send, recv, blocks = sizes[:P], sizes[P:2 * P], sizes[2 * P:]
    return _AllToAll.apply(xs, send, recv, group), recv_counts, send, recv, blocks


@torch.compiler.disable  # a collective: outside any compiled graph
def _rows_home(out: torch.Tensor, recv: list[int], send: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """_rows_to_owners' exchange transposed: out [R, d] -> [k*N, d] in this rank's expert order."""
    return _AllToAll.apply(out, recv, send, group)


def expert_parallel_dispatch(moe: MoE, x: torch.Tensor, r: Routing) -> torch.Tensor:
    """x [N, d] routed by `r` -> the routed experts' combined output [N, d] (x's dtype).
    Compiled, the graph breaks at the two exchanges (and the count exchange before the first):
    the row layout, the local experts and the combine are compiled."""
    group = moe.expert_group
    P = dist.get_world_size(group)
    N, k = x.shape[0], moe.top_k
    L = moe.num_experts // P
    dt = compute_dtype(x)
    inverse = torch.empty_like(r.order).scatter_(0, r.order, torch.arange(k * N, device=x.device))
    src = r.order % N  # token of each row
    xs = _ToRows.apply(x.to(dt), src, inverse, k)  # [k*N, d] in expert order
    w_rows = r.weights.t().reshape(-1, 1).index_select(0, r.order)  # [k*N, 1] fp32 combine weights

    got, recv_counts, send, recv, blocks = _rows_to_owners(xs, r, group, L)  # [R, d]
    order = _source_to_expert_order(recv_counts, sum(recv))
    per_expert = recv_counts.sum(0)  # [L]
    expert_sizes = [sum(blocks[e * P:(e + 1) * P]) for e in range(L)]
    out = _local_experts(moe, got.index_select(0, order), per_expert, expert_sizes)  # [R, d] expert-major
    back = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
    home = _rows_home(out.index_select(0, back), recv, send, group)  # [k*N, d] in expert order
    return _FromRows.apply(home.float() * w_rows, src, inverse, k).to(x.dtype)
