"""Saving and loading model and optimizer state in the sharded format (see `layout.py`), and
loading any checkpoint, full or sharded, into a model that is sharded or not.

A save is collective: rank 0 makes the checkpoint's temporary folder, every rank writes its own
shards into it (no rank gathers the model), rank 0 adds `state.pt` and `meta.json` and renames the
folder into place, as for a full checkpoint; a save that dies leaves only a temporary folder.
"""
from __future__ import annotations

import os
import shutil
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from raytrain_llm.core.checkpointing import CheckpointManager, clean_state_dict
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.errors import CheckpointError
from raytrain_llm.core.parallel.expert_checkpoint import ExpertShards
from raytrain_llm.core.sharded.io import storage_reader
from raytrain_llm.core.sharded.layout import PATH_KEY, SHARDED_DIR, is_sharded


def _local(value: Any) -> Any:
    return value.to_local() if isinstance(value, DTensor) else value


def _non_finite(model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> list[str]:
    named = [(f"model {k}", v) for k, v in model_sd.items()]
    named += [(f"optimizer {fqn} {name}", v) for fqn, values in (optim_sd.get("state") or {}).items()
              for name, v in values.items()]
    return [where for where, v in named if torch.is_tensor(v) and v.is_floating_point()
            and not bool(torch.isfinite(_local(v)).all())]


def save_sharded(manager: CheckpointManager, dist: DistributedManager, device: torch.device, state: dict[str, Any],
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer, experts: Optional[ExpertShards] = None,
                 **meta: Any) -> Optional[str]:
    """Collective: `state` (model and optimizer None) plus every rank's shards of `model` (the
    unwrapped, sharded or whole model) and `optimizer` as one checkpoint folder; its path on rank 0,
    None elsewhere. `experts`: the MoE experts this rank holds a slice of (expert parallelism),
    saved as that slice of the whole experts. `meta`: CheckpointManager.save's step, epoch,
    metrics, config_yaml."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    if experts is not None:
        model_sd, optim_sd = experts.placed(model_sd, optim_sd)
    bad = _non_finite(model_sd, optim_sd)
    if dist.any_true(bool(bad), device):
        where = ", ".join(bad[:3]) or "another rank's shards"
        raise CheckpointError(f"refusing to save step {meta['step']}: non-finite values in {where}")
    tmp = problem = None
    if dist.is_main:
        try:
            tmp = manager.make_temp(meta["step"])
        except OSError as exc:  # told to every rank: the others would wait for the folder forever
            problem = f"cannot save checkpoint step {meta['step']} in {manager.directory}: {exc.strerror or exc}"
    tmp, problem = dist.broadcast_object((tmp, problem))
    if problem:
        raise CheckpointError(problem)
    try:
        with _dcp_call() as alone:
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=os.path.join(tmp, SHARDED_DIR),
                     no_dist=alone)
    except BaseException as exc:
        if dist.is_main:  # a partial checkpoint would hold the disk; earlier ones are untouched
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, dcp.api.CheckpointException):  # a rank's write failed (every rank gets it)
            raise CheckpointError(f"cannot save checkpoint step {meta['step']} in {manager.directory}: "
                                  f"{_first_failure(exc)} (the partial checkpoint was removed)") from None
        raise
    return manager.save(state, prepared=tmp, **meta)


def _first_failure(exc: BaseException) -> str:
    """One line of a DCP CheckpointException (it lists every rank's traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "Error" in line), lines[0] if lines else type(exc).__name__)[:300]


@contextmanager
def _dcp_call() -> Iterator[bool]:
    """Yields whether this process is alone (no process group: DCP then reads and writes by itself).
    DCP warns on every such call, even when told (no_dist): a 1-worker run is normal here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield not (torch.distributed.is_available() and torch.distributed.is_initialized())


def _is_sharded_model(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def _keyed_by_name(saved: dict[str, Any], model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A torch optimizer state_dict (parameters numbered in the order of the optimizer's groups)
    keyed by parameter name instead, as `set_state_dict` takes it. The numbering is this
    optimizer's: the same task builds its groups in the same order."""
    names = {id(p): name for name, p in model.named_parameters()}
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        name = {i: names[id(p)] for i, p in enumerate(flat)}
        return {"state": {name[int(i)]: v for i, v in saved["state"].items()},
                "param_groups": [{**g, "params": [name[int(i)] for i in g["params"]]}
                                 for g in saved["param_groups"]]}
    except (KeyError, TypeError) as exc:
        raise KeyError(f"optimizer parameter {exc} is not one of this model's") from None


def load_model_and_optimizer(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             experts: Optional[ExpertShards] = None) -> None:
    """Load a checkpoint's model and optimizer state into `model` (unwrapped) and `optimizer`:
    full or sharded state, into a whole or a sharded model; a sharded one at any world size (DCP
    reads each rank's part from whichever shards hold it). `experts`: the MoE experts `model`
    holds a slice of (expert parallelism): that slice is read, from a full checkpoint or from
    shards saved at any expert-parallel size. Collective when either is sharded.
    Raises RuntimeError/KeyError/ValueError when the state does not fit the model."""
    if is_sharded(state):
        model_sd, optim_sd = get_state_dict(model, optimizer)  # the tensors to read into
        if experts is not None:
            model_sd, optim_sd = experts.placed(model_sd, optim_sd)
        try:
            with _dcp_call() as alone:
                dcp.load({"model": model_sd, "optimizer": optim_sd}, storage_reader=storage_reader(state[PATH_KEY]),
                         no_dist=alone)
        except dcp.api.CheckpointException as exc:  # a BaseException: one line of its first failure
            raise RuntimeError(_first_failure(exc)) from None
        if experts is not None:
            model_sd, optim_sd = experts.unplaced(model_sd, optim_sd)
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
        return
    if experts is not None:
        state = experts.sliced(state, optimizer)
    if _is_sharded_model(model):  # a full checkpoint (DDP) into shards: each rank keeps its slice
        set_state_dict(model, optimizer, model_state_dict=clean_state_dict(state["model"]),
                       optim_state_dict=_keyed_by_name(state["optimizer"], model, optimizer),
                       options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(clean_state_dict(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
