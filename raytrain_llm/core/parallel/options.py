"""The config rules of `distributed.strategy`: options of one strategy set under the other.

Plain functions of the config's fields (no torch): `core/config.py` calls them among its
cross-field rules and its switched-off keys.
"""
from __future__ import annotations

from typing import Any

DDP_ONLY = ("find_unused_parameters",)
FSDP_ONLY = ("fsdp_reshard_after_forward", "fsdp_cpu_offload")


def strategy_errors(cfg: Any) -> list[str]:
    """An option that does nothing under the chosen strategy, set away from its default: the user
    meant the other strategy (one line each, naming the key)."""
    d, errors = cfg.distributed, []
    if d.strategy == "ddp":
        changed = {"fsdp_reshard_after_forward": not d.fsdp_reshard_after_forward,
                   "fsdp_cpu_offload": d.fsdp_cpu_offload}
        errors += [f"distributed.{key}: applies to distributed.strategy=fsdp only (the strategy is ddp)"
                   for key in FSDP_ONLY if changed[key]]
        return errors
    if d.find_unused_parameters:
        errors.append("distributed.find_unused_parameters: applies to distributed.strategy=ddp only "
                      "(fsdp needs no such setting)")
    if cfg.optimization.amp == "fp16":
        errors.append("optimization.amp: fp16 (a gradient scaler over shards) is not supported with "
                      "distributed.strategy=fsdp; use bf16")
    if d.fsdp_cpu_offload and cfg.training.device == "cpu":
        errors.append("distributed.fsdp_cpu_offload: offloads a GPU's state to the CPU, but training.device is cpu")
    elif d.fsdp_cpu_offload and d.num_workers < 2:
        errors.append("distributed.fsdp_cpu_offload: needs distributed.num_workers >= 2 (one worker trains "
                      "the model unsharded, with nothing to offload)")
    return errors


def strategy_switched_off(distributed: Any) -> tuple[list[str], str]:
    """(keys, reason): the other strategy's options, which a sweep must not vary."""
    other = FSDP_ONLY if distributed.strategy == "ddp" else DDP_ONLY
    return [f"distributed.{key}" for key in other], f"distributed.strategy is {distributed.strategy}"
