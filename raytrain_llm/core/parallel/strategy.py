"""The two ways the engine spreads a model over its workers, behind one small interface.

`Replicated` (ddp): every rank holds the whole model, DDP all-reduces gradients; checkpoints are
full (`state.pt`, written by rank 0). `Sharded` (fsdp): FSDP2 shards parameters, gradients and
optimizer state over the ranks; checkpoints are sharded (each rank writes its own shards).

With `distributed.expert_parallel` > 1 both hold the MoE experts sharded over expert groups
instead (`experts`, an `ExpertParallel`): kept out of DDP or FSDP, their gradients reduced by
it, and checkpoints sharded under either strategy, each rank writing its own experts.

With one worker there is no process group: both train the plain model, identically; `Sharded`
then still writes the sharded checkpoint format, so a 1-worker fsdp run and a many-worker one
resume each other.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raytrain_llm.core.checkpointing import CheckpointManager, clean_state_dict
from raytrain_llm.core.config import Config
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.parallel.expert_parallel import ExpertParallel
from raytrain_llm.core.sharded.layout import FORMAT_KEY, SHARDED_FORMAT


class Replicated:
    """DDP when there is a process group of more than one rank; the model as it is otherwise."""

    def __init__(self, config: Config, dist: DistributedManager, device: torch.device, experts: ExpertParallel):
        self.config, self.dist, self.device, self.experts = config, dist, device, experts

    def split_experts(self, model: nn.Module, data_module) -> None:
        """Before `shard` and the optimizer: `model`'s MoE layers get their process groups and,
        with expert parallelism, keep this rank's experts only."""
        self.experts.split(model, data_module, self.device)

    def shard(self, model: nn.Module, units: list[nn.Module]) -> None:
        """Nothing to do: each rank keeps the whole model."""

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The task's optimizer of the model `shard` left, as the engine steps it."""
        return optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module train_step calls (`model` is compiled or not)."""
        if not self.dist.enabled:
            return model
        self.experts.exclude_from_ddp(model)
        return DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.config.distributed.find_unused_parameters)

    def no_sync(self, model: nn.Module, skip_sync: bool) -> ContextManager:
        """Around a micro-batch's backward: `skip_sync` for all but the last of an optimizer step."""
        return model.no_sync() if skip_sync and isinstance(model, DistributedDataParallel) \
            else contextlib.nullcontext()

    def whole_model(self) -> ContextManager:
        """Around validation and its callbacks: every rank may run any number of forwards in it."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """After backward and unscaling: gradients final (sharded experts' reduced too), clipped by
        their global norm, which is returned."""
        max_norm = max_norm if max_norm > 0 else float("inf")
        if self.experts.sharded:
            return self.experts.finish_gradients(params, max_norm)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def writes_shards(self) -> bool:
        """Checkpoints in the sharded format (each rank its own part): with sharded experts."""
        return bool(self.experts.sharded)

    def model_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The checkpoint's model/optimizer entries (model: the unwrapped one); None and the
        sharded format's key when `save` writes them as shards."""
        if self.writes_shards():
            return {"model": None, "optimizer": None, FORMAT_KEY: SHARDED_FORMAT}
        return {"model": clean_state_dict(model.state_dict()), "optimizer": optimizer.state_dict()}

    def save(self, manager: CheckpointManager, state: dict[str, Any], model: nn.Module,
             optimizer: torch.optim.Optimizer, **meta: Any) -> Optional[str]:
        """Collective. The checkpoint's folder on rank 0, None on the others."""
        if self.writes_shards():
            from raytrain_llm.core.sharded.checkpoint import save_sharded

            return save_sharded(manager, self.dist, self.device, state, model, optimizer,
                                experts=self.experts.shards, **meta)
        return manager.save(state, **meta)


class Sharded(Replicated):
    """FSDP2 over all ranks (`core/parallel/fsdp.py`); sharded experts are left out of it. Its
    modules (torch's FSDP, DTensor and distributed checkpoint: ~0.7 s of imports) are imported by
    its methods, so that a replicated run's processes do not pay for them."""

    def __init__(self, config: Config, dist: DistributedManager, device: torch.device, experts: ExpertParallel):
        super().__init__(config, dist, device, experts)
        self.root: Optional[nn.Module] = None  # the sharded model, once shard() ran

    def shard(self, model: nn.Module, units: list[nn.Module]) -> None:
        if not self.dist.enabled:
            return
        from raytrain_llm.core.parallel import fsdp

        d = self.config.distributed
        fsdp.shard_model(model, units, self.device, amp=self.config.optimization.amp,
                         reshard_after_forward=d.fsdp_reshard_after_forward, cpu_offload=d.fsdp_cpu_offload,
                         ignored=self.experts.sharded)
        self.root = model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        # FSDP's DTensor parameters and the plain expert shards it ignores, in one optimizer.
        if self.root is None or not self.experts.sharded:
            return optimizer
        from raytrain_llm.core.parallel import fsdp

        return fsdp.steps_with_plain_parameters(optimizer)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model  # sharded in place by shard()

    def no_sync(self, model: nn.Module, skip_sync: bool) -> ContextManager:
        from raytrain_llm.core.parallel import fsdp

        return fsdp.gradient_sync_off(self.root) if skip_sync and self.root is not None \
            else contextlib.nullcontext()

    def whole_model(self) -> ContextManager:
        from raytrain_llm.core.parallel import fsdp

        if self.root is None:
            return contextlib.nullcontext()
        return fsdp.whole_parameters(self.root, self.config.distributed.fsdp_reshard_after_forward)

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        if self.experts.sharded:
            return super().clip_grad_norm(params, max_norm)
        from raytrain_llm.core.parallel.clipping import clip_sharded_grad_norm

        return clip_sharded_grad_norm(params, max_norm)

    def writes_shards(self) -> bool:
        return True  # with one worker too: a 1-worker and a many-worker fsdp run resume each other


def build_strategy(config: Config, dist: DistributedManager, device: torch.device,
                   experts: ExpertParallel) -> Replicated:
    """`experts`: the expert-parallel groups, made (collectively) before anything that may fail."""
    return (Sharded if config.distributed.strategy == "fsdp" else Replicated)(config, dist, device, experts)
