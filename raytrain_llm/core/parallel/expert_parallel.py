"""`ExpertParallel`: the process groups a model's MoE layers use, and what the engine does
differently for parameters sharded over them.

`distributed.expert_parallel` = P splits the W ranks into W/P expert groups of P consecutive ranks
(ranks r with the same r // P); each rank holds E/P experts of every MoE layer and exchanges
tokens within its group. The ranks holding the same experts (same r % P) form a replica group.
`model.aux_loss_scope=global_batch` sums the balance loss's expert counts over all W ranks.

The model takes the groups through `model.set_parallel_groups(balance_group=, expert_group=)`
(it creates none itself) and returns its sharded parameters. For those the engine:
  - keeps them out of DDP, or out of FSDP (`ignored_params`), whichever shards or replicates the
    rest of the model (DDP would average different experts' gradients, and its initial
    broadcast would overwrite every rank's shard with rank 0's)
  - divides their gradient by W and sums it over the replica group: the gradient of a sharded
    expert already holds every group rank's tokens (the all-to-all's backward brought them), so
    this is the same average over W ranks that DDP or FSDP takes for the rest, and P > 1 trains
    as P = 1 does
  - clips by the norm over all gradients (the squared norms of the shards summed over the group,
    FSDP's over all ranks), so every rank scales by the same factor
  - saves sharded checkpoints, each rank its own experts (`ExpertShards`).
With P = 1 and no balance group all of this is the engine's plain path, unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from raytrain_llm.core.config import Config
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.errors import UsageError, raised_on_every_rank

if TYPE_CHECKING:  # imported where used: it brings DTensor (~0.7 s of imports a run without experts skips)
    from raytrain_llm.core.parallel.expert_checkpoint import ExpertShards


class ExpertParallel:
    def __init__(self, config: Config, dist_manager: DistributedManager):
        """Collective with P > 1 (it creates the process groups): run on every rank before anything
        that may fail on some ranks only. The model is split later, by `split`."""
        self.config = config
        self.size = P = config.distributed.expert_parallel
        self.world = W = dist_manager.world_size
        self.sharded: list[torch.nn.Parameter] = []
        self.shards: Optional[ExpertShards] = None  # with sharded parameters
        self.expert_group: Optional[dist.ProcessGroup] = None
        self.replica_group: Optional[dist.ProcessGroup] = None
        self.balance = dist.group.WORLD if config.model.aux_loss_scope == "global_batch" and dist_manager.enabled \
            else None
        if P == 1:
            return
        if W % P or not dist_manager.enabled:
            raise raised_on_every_rank(UsageError(
                f"distributed.expert_parallel: {P} must divide the number of worker processes ({W})"))
        rank = dist_manager.rank
        # Every rank creates every group, in the same order (new_group is collective).
        for start in range(0, W, P):
            group = dist.new_group(list(range(start, start + P)))
            if start <= rank < start + P:
                self.expert_group = group
        if W > P:
            for offset in range(P):
                group = dist.new_group(list(range(offset, W, P)))
                if rank % P == offset:
                    self.replica_group = group

    def split(self, model: torch.nn.Module, data_module, device: torch.device) -> None:
        """Give `model` (the task's, unwrapped, before FSDP and the optimizer) its groups: with
        P > 1 it keeps this rank's experts only. No collective; its UsageErrors are alike on
        every rank (they depend on the config, the model's class and the data's size)."""
        hook = getattr(model, "set_parallel_groups", None)
        if self.size > 1:
            if hook is None:
                raise raised_on_every_rank(UsageError(
                    f"distributed.expert_parallel: {self.size}, but the task's model ({type(model).__name__}) has "
                    f"no experts to split (no set_parallel_groups)"))
            check_validation_batches(self.config, data_module, self.world)
        if hook is not None and (self.balance is not None or self.expert_group is not None):
            self.sharded = hook(balance_group=self.balance, expert_group=self.expert_group)
        if self.sharded:
            from raytrain_llm.core.parallel.expert_checkpoint import ExpertShards

            self.shards = ExpertShards(model, self.sharded, self.expert_group, device)

    def exclude_from_ddp(self, module: torch.nn.Module) -> None:
        """Before `module` (the model or its compiled form) is wrapped in DDP: its sharded
        parameters are not DDP's to reduce."""
        if not self.sharded:
            return
        ids = {id(p) for p in self.sharded}
        names = [name for name, p in module.named_parameters() if id(p) in ids]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)

    def finish_gradients(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """After backward (and unscaling), with sharded experts: their gradients averaged as DDP or
        FSDP averaged the others, then all gradients clipped to `max_norm` by their global norm,
        which is returned. The others' norm comes back partial from FSDP's DTensor shards:
        `full_tensor()` sums the ranks' squares."""
        for p in self.sharded:
            if p.grad is None:  # every replica reduces the same tensors
                p.grad = torch.zeros_like(p)
            p.grad.div_(self.world)
            if self.replica_group is not None:
                dist.all_reduce(p.grad, group=self.replica_group)
        shard_ids = {id(p) for p in self.sharded}
        others = [p for p in params if p.grad is not None and id(p) not in shard_ids]
        rest = torch.nn.utils.get_total_norm([p.grad for p in others])
        if hasattr(rest, "full_tensor"):  # a DTensor (FSDP): partial sums of squares -> the total
            rest = rest.full_tensor()
        own = torch.nn.utils.get_total_norm([p.grad for p in self.sharded]).square()
        dist.all_reduce(own, group=self.expert_group)  # sum of the squared norms of the group's shards
        total = (rest.square() + own).sqrt()
        for group in (others, self.sharded):  # apart: one foreach call takes DTensors or tensors, not both
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
        return total


def check_validation_batches(config: Config, data_module, world: int) -> None:
    """Every forward of a sharded MoE layer is collective: every rank must see the same number of
    validation batches (the last round of a split validation set may leave some ranks out).
    Raised alike on every rank (it depends on the config and the data's size only)."""
    t = config.training
    dataset = getattr(data_module, "val_dataset", None) if t.validate else None
    if dataset is None:
        return
    n, b = len(dataset), t.batch_size
    counts = {max(0, -(-(n - r * b) // (world * b))) for r in range(world)}
    if t.limit_val_batches:
        counts = {min(c, t.limit_val_batches) for c in counts}
    if len(counts) > 1:
        raise raised_on_every_rank(UsageError(
            f"distributed.expert_parallel: validation batches must be equal on all {world} ranks (each "
            f"forward exchanges tokens), but {n} validation samples at training.batch_size={b} give "
            f"{min(counts)} to some and {max(counts)} to others; make the sample count a multiple of "
            f"{world * b} or set training.limit_val_batches <= {min(counts)}"))
