"""`ExpertShards`: where this rank's slice of the MoE experts sits in a checkpoint.

With `distributed.expert_parallel` = P > 1 each rank holds experts [p*E/P, (p+1)*E/P) of every
MoE layer (p: its rank in the expert group), as plain tensors of the local shape [E/P, ...].
Checkpoints are sharded (DCP, `core/sharded/`): for the state dict DCP saves or loads, each such
parameter and each optimizer state tensor of its shape (AdamW's moments) is viewed as a DTensor
over the expert group, `Shard(0)`, whose global shape has all E experts. DCP then writes each
expert slice once (the expert groups of other replicas hold the same slices at the same offsets,
which DCP deduplicates) and reads any layout back: the rank's slice of a sharded checkpoint
saved at any P, whole experts into a model without expert parallelism, FSDP shards of them.
A full checkpoint (`state.pt` holding every expert) is sliced on load (`sliced`). Both copy
values exactly: a resume at the same layout is bit-identical.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard


class ExpertShards:
    def __init__(self, model: torch.nn.Module, sharded: list[torch.nn.Parameter], group: dist.ProcessGroup,
                 device: torch.device):
        """`sharded`: `model`'s parameters split over `group` along dim 0. No collective."""
        self.sharded = sharded
        self.parts, self.part = dist.get_world_size(group), dist.get_rank(group)
        self.mesh = DeviceMesh.from_group(group, device.type)
        ids = {id(p) for p in sharded}
        self.by_name = {name: p for name, p in model.named_parameters() if id(p) in ids}

    def _global(self, t: Any, p: torch.nn.Parameter) -> Any:
        """`t` as the DTensor of all experts it is this rank's slice of (same storage: DCP's load
        writes into `t`), if it has `p`'s local shape; anything else as it is."""
        if not torch.is_tensor(t) or isinstance(t, DTensor) or t.shape != p.shape:
            return t
        return DTensor.from_local(t, self.mesh, [Shard(0)], run_check=False)

    def placed(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> tuple[dict, dict]:
        """Copies of `get_state_dict`'s two dicts (keyed by parameter name) with the expert entries
        as DTensors over the expert group, for DCP to save or load."""
        model = {k: self._global(v, self.by_name[k]) if k in self.by_name else v for k, v in model_sd.items()}
        state = {name: {k: self._global(v, self.by_name[name]) for k, v in values.items()}
                 if name in self.by_name else values for name, values in optim_sd.get("state", {}).items()}
        return model, {**optim_sd, "state": state}

    def unplaced(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> tuple[dict, dict]:
        """`placed`'s dicts, after DCP filled them, with the expert entries this rank's local
        tensors again (as `set_state_dict` takes them)."""
        local = lambda name, v: v.to_local() if name in self.by_name and isinstance(v, DTensor) else v  # noqa: E731
        state = {name: {k: local(name, v) for k, v in values.items()}
                 for name, values in optim_sd.get("state", {}).items()}
        return {k: local(k, v) for k, v in model_sd.items()}, {**optim_sd, "state": state}

    def _slice(self, t, p: torch.nn.Parameter):
        """This rank's experts of `t` if it is a full tensor of `p`'s layer, else `t` (a mismatch
        is then the load's to report)."""
        if not torch.is_tensor(t) or t.shape != (p.shape[0] * self.parts, *p.shape[1:]):
            return t
        return t[self.part * p.shape[0]:(self.part + 1) * p.shape[0]].clone()

    def sliced(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A loaded full checkpoint (every expert in `state["model"]` and in the optimizer's
        index-keyed state) with this rank's experts only."""
        model = {k: self._slice(v, self.by_name[k]) if k in self.by_name else v for k, v in state["model"].items()}
        out = {**state, "model": model}
        if state.get("optimizer"):
            ids = {id(p) for p in self.sharded}
            params = [p for group in optimizer.param_groups for p in group["params"]]
            per_param = dict(state["optimizer"]["state"])
            for i, p in enumerate(params):  # the optimizer numbers its parameters in group order
                if id(p) in ids and i in per_param:
                    per_param[i] = {k: self._slice(v, p) for k, v in per_param[i].items()}
            out["optimizer"] = {**state["optimizer"], "state": per_param}
        return out
