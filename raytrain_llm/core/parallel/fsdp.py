"""FSDP2 (`torch.distributed.fsdp.fully_shard`) applied to a model in place.

Each unit the task names (by default every child of every `nn.ModuleList`: a transformer's
blocks) becomes its own FSDP group, then the root takes the parameters left over (embeddings,
final norm, head). A unit's parameters are all-gathered just before its forward and freed after
it, so at most about one unit is whole at a time; gradients are reduce-scattered to their shards.
"""
from __future__ import annotations

import functools
import types
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.experimental import implicit_replication


def default_units(model: nn.Module) -> list[nn.Module]:
    """The children of every `nn.ModuleList` in `model` (repeated blocks), outermost lists first;
    a list nested in a unit already taken stays inside that unit."""
    units: list[nn.Module] = []
    taken: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and id(module) not in taken:
            for child in module:
                units.append(child)
                taken.update(id(m) for m in child.modules())
    return units


def mixed_precision(amp: str) -> Optional[MixedPrecisionPolicy]:
    """bf16: parameters gathered and computed in bf16, gradients reduced in fp32 into the fp32
    shards (the master weights). The engine's autocast stays on: it finds bf16 weights and casts
    nothing again, and keeps the ops it runs in fp32 (norms, softmax, the loss) in fp32."""
    if amp == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def shard_model(model: nn.Module, units: list[nn.Module], device: torch.device, *, amp: str,
                reshard_after_forward: bool, cpu_offload: bool, ignored: list[nn.Parameter] = ()) -> None:
    """`fully_shard` on each unit, then on `model`, over all ranks of the default process group.
    No collective runs here: each rank keeps its slice of the weights it built (every rank builds
    the same initial weights from the same seed). Attributes set on parameters (`_no_weight_decay`,
    ...) are carried over to the sharded parameters that replace them. `ignored` parameters (MoE
    experts sharded by expert parallelism) stay plain tensors, untouched by FSDP: not sharded,
    not cast by the mixed-precision policy, their gradients not reduced."""
    tags = {name: dict(vars(p)) for name, p in model.named_parameters() if vars(p)}
    mesh = DeviceMesh.from_group(dist.group.WORLD, device.type)
    kwargs = dict(mesh=mesh, reshard_after_forward=reshard_after_forward,
                  mp_policy=mixed_precision(amp) or MixedPrecisionPolicy(),
                  offload_policy=CPUOffloadPolicy() if cpu_offload else None, ignored_params=set(ignored) or None)
    if kwargs["offload_policy"] is None:
        del kwargs["offload_policy"]
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    for name, p in model.named_parameters():
        for key, value in tags.get(name, {}).items():
            setattr(p, key, value)


def steps_with_plain_parameters(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """`optimizer`, its `step` run under DTensor's implicit replication: a fused or foreach kernel
    over FSDP's DTensor parameters and parameters FSDP ignores (plain tensors) then takes both,
    each plain one as a replicated DTensor view of itself, updated in place on its local values
    (no communication). Every caller of `step` gets it: the engine, and DCP's state-dict helpers
    (which step a fresh optimizer once to create its state)."""
    step = optimizer.step

    @functools.wraps(step)
    def step_mixed(self, *args, **kwargs):
        with implicit_replication():
            return step(*args, **kwargs)

    optimizer.step = types.MethodType(step_mixed, optimizer)  # a bound method, as LR schedulers expect
    return optimizer


def fsdp_units(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gradient_sync_off(model: nn.Module) -> Iterator[None]:
    """Backward passes in the block accumulate unsharded gradients locally, without the
    reduce-scatter; the next backward outside it reduces the sum (one reduction per step)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextmanager
def whole_parameters(model: nn.Module, reshard_after_forward: bool) -> Iterator[None]:
    """Collective. Every unit gathered once and kept whole through the block: forwards in it run
    no collective, so ranks may run different numbers of them (uneven validation batches, rank 0
    alone generating samples). Memory: the whole model, as under DDP, for the block's length.
    After it, units reshard after forward as configured (the root never does: FSDP keeps its
    parameters for the backward that follows at once)."""
    units = fsdp_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(reshard_after_forward and unit is not model, recurse=False)
