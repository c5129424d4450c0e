"""Top-k router for the MoE layer: fp32 softmax, capacity, balancing losses and load stats.

Routing is shared by every dispatch implementation, so the grouped path and the reference
loop differ only in how the experts are computed, which is what the tests compare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    """One layer's routing decision for N tokens, top-k each."""

    experts: torch.Tensor  # [N, k] int64 expert ids
    weights: torch.Tensor  # [N, k] fp32 combine weights (renormalised if k > 1); 0 where dropped
    order: torch.Tensor  # [k*N] stable sort of the slot-major assignments by expert
    counts: torch.Tensor  # [E] int64 assignments per expert, before capacity drops
    stats: dict  # scalar/[E] tensors, see Router.stats
    # With a capacity shared by a group (Router.capacity_group): [P, k, E] int64 assignments per
    # (group rank, slot, expert), before drops, as every rank of the group has them. Else None.
    group_counts: Optional[torch.Tensor] = None


class Router(nn.Module):
    def __init__(self, d_model: int, num_experts: int, top_k: int, capacity_factor: float = 0.0,
                 bias_balancing: bool = False):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor, self.bias_balancing = capacity_factor, bias_balancing
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        # DeepSeek-V3 aux-loss-free balancing: shifts which experts are *selected*, never the
        # combine weights. A buffer, so it lands in checkpoints and DDP keeps ranks in step.
        self.register_buffer("bias", torch.zeros(num_experts))
        # Set from outside (GPT.set_parallel_groups): the ranks whose expert counts the balance
        # loss's load fractions sum over in training; None: this rank's micro-batch alone.
        self.balance_group: Optional[dist.ProcessGroup] = None
        # Set from outside (moe_expert_parallel.shard_experts): the ranks whose tokens share each
        # expert's capacity, as one batch of their tokens in group-rank order would; None: this
        # rank's tokens alone.
        self.capacity_group: Optional[dist.ProcessGroup] = None

    def capacity(self, num_tokens: int) -> int:
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def forward(self, x: torch.Tensor) -> Routing:  # x [N, d]
        N, E, k = x.shape[0], self.num_experts, self.top_k
        # fp32 routing even under autocast: top-k on bf16 probabilities flips near-ties.
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())  # [N, E]
        probs = logits.softmax(dim=-1)
        scores = probs + self.bias if self.bias_balancing else probs
        experts = scores.topk(k, dim=-1).indices  # [N, k]
        weights = probs.gather(1, experts)
        if k > 1:
            # Renormalise over the chosen k. Not for k=1 (Switch): the weight would be 1.0 and
            # the router would learn from the balance losses alone.
            weights = weights / weights.sum(dim=-1, keepdim=True)

        # Slot-major flattening: assignment a = slot * N + token. A stable sort then orders each
        # expert's assignments by (slot, token): every token's first choice before any second.
        flat = experts.t().reshape(-1)  # [k*N]
        order = flat.argsort(stable=True)
        # scatter_add, not bincount: its output shape is static, so torch.compile keeps one graph.
        counts = torch.zeros(E, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        kept = torch.ones((), device=x.device)
        group_counts = None
        if self.capacity_factor > 0:
            weights, kept, group_counts = self._drop_over_capacity(weights, flat, order, counts, N)
        stats = self.stats(logits, probs, counts, kept)
        return Routing(experts, weights, order, counts, stats, group_counts)

    @torch.no_grad()
    def choose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: forward's experts [N, k] and combine weights [N, k] (fp32), without the
        sort, capacity and statistics (the same operations, so the same choice)."""
        with torch.autocast(x.device.type, enabled=False):
            probs = F.linear(x.float(), self.weight.float()).softmax(dim=-1)  # [N, E]
        scores = probs + self.bias if self.bias_balancing else probs
        experts = scores.topk(self.top_k, dim=-1).indices
        weights = probs.gather(1, experts)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return experts, weights

    def _drop_over_capacity(self, weights, flat, order, counts, N):
        """Zero the combine weight of assignments past an expert's capacity; returns the weights,
        the fraction of this rank's assignments kept and the group's counts (None without a
        capacity group).

        Priority is router order: all top-1 assignments before top-2 and so on, and within a
        slot the earlier token (in flattened batch order) wins; ties cannot occur. With a
        capacity group of P ranks the rule is that of one batch holding the group's tokens,
        rank 0's first: the capacity counts the group's tokens, and an assignment's place in
        its expert's queue counts the group's assignments ahead of it.
        """
        k = self.top_k
        starts = counts.cumsum(0) - counts  # [E] first sorted position of each expert
        sorted_expert = flat[order]  # [k*N]
        place = torch.arange(flat.numel(), device=flat.device) - starts[sorted_expert]  # position within expert
        group_counts = None
        if self.capacity_group is None:
            capacity = self.capacity(N)
        else:
            group_counts, ahead, capacity = self._group_queue(flat, N)
            place = place + ahead[order // N, sorted_expert]
        keep_sorted = place < capacity
        keep = torch.empty_like(keep_sorted).scatter_(0, order, keep_sorted)  # back to slot-major
        keep = keep.view(k, N).t()  # [N, k]
        return weights * keep, keep.float().mean(), group_counts

    def _group_queue(self, flat: torch.Tensor, N: int):
        """flat [k*N] slot-major expert ids of this rank -> the group's counts [P, k, E], the
        number of group assignments ahead of this rank's in each (slot, expert) queue beyond
        this rank's own earlier slots [k, E], and the capacity (a 0-d tensor) of the group's
        token count. One all_gather of [k, E] counts."""
        k, E = self.top_k, self.num_experts
        slot = torch.arange(k * N, device=flat.device) // N
        mine = torch.zeros(k * E, dtype=torch.int64, device=flat.device).scatter_add_(
            0, slot * E + flat, torch.ones_like(flat)).view(k, E)  # [k, E]
        # Loaded with expert parallelism (by moe_expert_parallel), before any graph is traced.
        from raytrain_llm.models.count_exchange import gather_counts

        group_counts = gather_counts(mine, self.capacity_group)  # [P, k, E]
        p = dist.get_rank(self.capacity_group)
        total = group_counts.sum(0)  # [k, E]
        # Ahead of (slot s, expert e) on rank p: every rank's slots < s, ranks < p in slot s;
        # minus rank p's own slots < s, which its local position already counts.
        ahead = (total.cumsum(0) - total) - (mine.cumsum(0) - mine) + group_counts[:p].sum(0)
        tokens = total[0].sum()  # each token has one first choice
        capacity = torch.ceil(self.capacity_factor * tokens.double() * k / E)  # capacity()'s arithmetic
        return group_counts, ahead, capacity

    def stats(self, logits, probs, counts, kept) -> dict:
        """The load metrics are this rank's micro-batch's whatever the scope (bias balancing sums
        `counts` over ranks itself). The balance loss's f_i, with a balance group, are global:
        counts summed over its ranks, no gradient through them, while the probability means P_i
        stay local. DDP then averages E * sum_i f_i * P_i(rank) over the W ranks into
        E * sum_i f_i * mean_r P_i(rank): the gradient of one rank holding all W*B sequences."""
        E = self.num_experts
        load = counts.float() / counts.sum()  # fraction of assignments, sums to 1
        f = load
        if self.balance_group is not None and self.training:  # validation may run uneven batches per rank
            total = counts.clone()
            dist.all_reduce(total, group=self.balance_group)
            f = total.float() / total.sum()
        # Switch-style balance loss scaled so uniform routing gives exactly 1.0.
        aux = E * (f * probs.mean(dim=0)).sum()
        z = torch.logsumexp(logits, dim=-1).square().mean()
        entropy = -(probs * probs.clamp_min(1e-20).log()).sum(-1).mean()
        return {"aux_loss": aux, "z_loss": z, "load": load, "counts": counts.float(),
                "max_load": load.max() * E, "dropped_frac": 1.0 - kept, "entropy": entropy}

    @torch.no_grad()
    def update_bias(self, counts: torch.Tensor, rate: float) -> None:
        """Raise the bias of under-loaded experts, lower it for over-loaded ones (sign rule)."""
        counts = counts.to(self.bias)
        self.bias.add_(rate * torch.sign(counts.mean() - counts))
