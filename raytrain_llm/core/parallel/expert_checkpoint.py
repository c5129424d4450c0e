"""`ExpertShards`: full expert weights in checkpoints while each rank trains a slice of them.

Checkpoints keep the full format (every expert of every layer), so a run resumes at any
`distributed.expert_parallel` and samples or exports on one process. On save, each sharded
parameter and each optimizer state tensor of its shape (AdamW's moments) is gathered over the
expert group and concatenated along the expert dimension (dim 0); on load, this rank's slice is
taken. Gathering and slicing copy values exactly: a resume at the same layout is bit-identical.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


class ExpertShards:
    def __init__(self, model: torch.nn.Module, sharded: list[torch.nn.Parameter],
                 group: Optional[dist.ProcessGroup]):
        self.group, self.sharded = group, sharded
        self.parts = dist.get_world_size(group) if group is not None else 1
        self.part = dist.get_rank(group) if group is not None else 0
        ids = {id(p) for p in sharded}
        self.by_name = {name: p for name, p in model.named_parameters() if id(p) in ids}

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        pieces = [torch.empty_like(t) for _ in range(self.parts)]
        dist.all_gather(pieces, t.contiguous(), group=self.group)
        return torch.cat(pieces)

    def _slice(self, t, p: torch.nn.Parameter):
        """This rank's experts of `t` if it is a full tensor of `p`'s layer, else `t` (a mismatch
        is then the load's to report)."""
        if not torch.is_tensor(t) or t.shape != (p.shape[0] * self.parts, *p.shape[1:]):
            return t
        return t[self.part * p.shape[0]:(self.part + 1) * p.shape[0]].clone()

    def _optimizer_index(self, optimizer: torch.optim.Optimizer) -> dict[int, torch.nn.Parameter]:
        """The state-dict index of each sharded parameter (the optimizer numbers them in order)."""
        ids = {id(p) for p in self.sharded}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {i: p for i, p in enumerate(params) if id(p) in ids}

    def full_model(self, state: dict) -> dict:
        if self.parts == 1:
            return state
        return {k: self._gather(v) if k in self.by_name else v for k, v in state.items()}

    def full_optimizer(self, optimizer: torch.optim.Optimizer) -> dict:
        state = optimizer.state_dict()
        if self.parts == 1:
            return state
        index = self._optimizer_index(optimizer)
        per_param = dict(state["state"])  # new dicts: the values are the optimizer's live state
        for i, p in index.items():
            if i in per_param:
                per_param[i] = {k: self._gather(v) if torch.is_tensor(v) and v.shape == p.shape else v
                                for k, v in per_param[i].items()}
        return {**state, "state": per_param}

    def local(self, state: dict, optimizer: torch.optim.Optimizer) -> dict:
        if self.parts == 1:
            return state
        model = {k: self._slice(v, self.by_name[k]) if k in self.by_name else v for k, v in state["model"].items()}
        out = {**state, "model": model}
        if state.get("optimizer"):
            per_param = dict(state["optimizer"]["state"])
            for i, p in self._optimizer_index(optimizer).items():
                if i in per_param:
                    per_param[i] = {k: self._slice(v, p) for k, v in per_param[i].items()}
            out["optimizer"] = {**state["optimizer"], "state": per_param}
        return out
