"""The rules a config must satisfy beyond each field's type: allowed values and ranges (from
the fields' `setting(...)`), rules across fields, trackers whose package is missing, output
folders that cannot be made; and the keys another setting switches off (for sweeps).

Every function returns all its problems at once, each naming its dotted key, so that the
loader reports them together with where each value came from.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional

from raytrain_llm.core.config import CHOICES, MAXIMUMS, MINIMUMS, SECTIONS, TRACKERS, Config, LoggingConfig
from raytrain_llm.core.errors import quote
from raytrain_llm.core.parallel.options import strategy_errors, strategy_switched_off


def value_errors(key: str, value: Any) -> list[str]:
    errors = []
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{key}: must be a finite number (got {quote(value)})"]
    if key in CHOICES and value not in CHOICES[key]:
        errors.append(f"{key}: must be one of {', '.join(CHOICES[key])} (got {quote(value)})")
    if key in MINIMUMS and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, inclusive = MINIMUMS[key]
        if value < low or (value == low and not inclusive):
            op = ">=" if inclusive else ">"
            errors.append(f"{key}: must be {op} {low} (got {quote(value)})")
    if key in MAXIMUMS and isinstance(value, (int, float)) and value > MAXIMUMS[key]:
        errors.append(f"{key}: must be <= {MAXIMUMS[key]} (got {quote(value)})")
    return errors


def cross_field_errors(cfg: Config) -> list[str]:
    errors: list[str] = []
    for name in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, name)):
            errors += value_errors(f"{name}.{f.name}", getattr(getattr(cfg, name), f.name))
    m, t, o, d = cfg.model, cfg.training, cfg.optimization, cfg.distributed
    if m.use_moe and m.top_k > m.num_experts:
        errors.append(f"model.top_k: must be <= model.num_experts ({m.num_experts}) (got {m.top_k})")
    if m.use_moe and m.moe_every_n_layers > m.n_layers:
        errors.append(f"model.moe_every_n_layers: no block would be MoE with model.n_layers={m.n_layers} "
                      f"(got {m.moe_every_n_layers})")
    errors += expert_parallel_errors(cfg)
    if cfg.callbacks.early_stopping and not t.validate:
        errors.append("callbacks.early_stopping: needs training.validate=true (it watches a validation metric)")
    if cfg.checkpoint.resume == "auto" and not cfg.checkpoint.enabled:
        errors.append("checkpoint.resume: auto continues from this run's own checkpoints, "
                      "but checkpoint.enabled=false")
    if m.d_model % m.n_heads:
        errors.append(f"model.d_model: must be divisible by model.n_heads ({m.n_heads}) (got {m.d_model})")
    elif m.position == "rope" and (m.d_model // m.n_heads) % 2:
        errors.append("model.position: rope needs an even head size (model.d_model / model.n_heads)")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        errors.append(f"training.betas: must be two numbers in [0, 1) (got {quote(list(t.betas))})")
    if o.amp == "fp16" and t.device == "cpu":
        errors.append("optimization.amp: fp16 needs a CUDA device (use bf16 on CPU)")
    if d.backend == "nccl" and not d.use_gpu and d.launcher != "local":
        errors.append("distributed.backend: nccl needs distributed.use_gpu=true")
    errors += strategy_errors(cfg)
    if d.gpus_per_worker > 0 and not d.use_gpu:
        errors.append("distributed.gpus_per_worker: set distributed.use_gpu=true to reserve GPUs")
    if cfg.data.val_tokens and not cfg.data.train_tokens:
        errors.append("data.val_tokens: needs data.train_tokens (token files are used for both splits or neither)")
    if m.vocab_size == 1:
        errors.append("model.vocab_size: must be >= 2, or 0 to take it from a prepared data.train_tokens (got 1)")
    if cfg.data.train_tokens and t.validate and not cfg.data.val_tokens and not _is_prepared_dir(cfg.data.train_tokens):
        errors.append("data.val_tokens: a validation token file is needed with data.train_tokens "
                      "(or set training.validate=false)")
    if cfg.checkpoint.resume not in ("none", "auto") and not cfg.checkpoint.resume.strip():
        errors.append("checkpoint.resume: must be none, auto or a checkpoint path")
    return errors + tracker_errors(cfg.logging) + folder_errors(cfg)


def expert_parallel_errors(cfg: Config) -> list[str]:
    m, d = cfg.model, cfg.distributed
    ep = d.expert_parallel
    if ep == 1:
        return []
    if not m.use_moe:
        return [f"distributed.expert_parallel: {ep} needs an MoE model (model.use_moe=true)"]
    if d.launcher == "local":
        return [f"distributed.expert_parallel: {ep} needs {ep} or more worker processes; "
                "distributed.launcher=local runs one (use spawn or ray)"]
    errors = []
    if d.num_workers % ep:
        errors.append(f"distributed.expert_parallel: must divide distributed.num_workers ({d.num_workers}) "
                      f"(got {ep})")
    if m.num_experts % ep:
        errors.append(f"distributed.expert_parallel: must divide model.num_experts ({m.num_experts}) (got {ep})")
    if d.strategy == "fsdp" and d.fsdp_cpu_offload:  # the experts would stay on the GPU, outside FSDP
        errors.append(f"distributed.fsdp_cpu_offload: not supported with distributed.expert_parallel={ep} "
                      "(FSDP leaves the sharded experts alone)")
    return errors


def tracker_errors(logging_cfg: LoggingConfig) -> list[str]:
    """Unknown or repeated tracker names, and a chosen tracker whose package is not installed."""
    errors = []
    names = logging_cfg.trackers
    for name in names:
        if name not in TRACKERS:
            errors.append(f"logging.trackers: {name!r} is not one of {', '.join(TRACKERS)}")
        elif name != "tensorboard" and not package_installed(name):
            errors.append(f"logging.trackers: {name} is chosen but its package is not installed "
                          f"(pip install -e '.[{name}]')")
    if len(set(names)) != len(names):
        errors.append(f"logging.trackers: a tracker is listed twice (got {list(names)!r})")
    return errors


def package_installed(name: str) -> bool:
    """Whether `import name` can find the package (without importing it: mlflow takes seconds).
    A module set to None in sys.modules is Python's way of blocking an import: not installed."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def switched_off_keys(cfg: Config) -> dict[str, str]:
    """Keys that another of the engine's own settings switches off under this config, each with
    that setting: a sweep over one of them would train the same model in every trial. Model and
    data keys are the task's to judge (`TrainingTask.inactive_keys`)."""
    off: dict[str, str] = {}
    t, c = cfg.training, cfg.callbacks

    def switched_off(keys, reason: str) -> None:
        off.update({k: reason for k in keys if k not in off})

    if not t.validate:
        switched_off(["training.val_every_n_steps", "training.limit_val_batches"], "training.validate is false")
    if t.nan_policy == "stop":
        switched_off(["training.max_consecutive_skips"], "training.nan_policy is stop")
    if not c.early_stopping:
        switched_off([f"callbacks.{k}" for k in ("early_stopping_patience", "early_stopping_min_delta",
                                                 "monitor", "mode")], "callbacks.early_stopping is false")
    if not c.profile_steps:
        switched_off(["callbacks.profile_start_step"], "callbacks.profile_steps is 0")
    if not cfg.optimization.compile:
        switched_off(["optimization.compile_mode"], "optimization.compile is false")
    switched_off(*strategy_switched_off(cfg.distributed))
    if not cfg.checkpoint.enabled:
        switched_off([f"checkpoint.{k}" for k in ("every_n_steps", "keep_last", "keep_best")],
                     "checkpoint.enabled is false")
    return off


def _is_prepared_dir(path: str) -> bool:
    """A folder written by python -m raytrain_llm.prepare (its manifest names the splits)."""
    return bool(path.strip()) and os.path.isfile(os.path.join(path.strip(), "manifest.json"))


def folder_errors(cfg: Config) -> list[str]:
    """Output folders that cannot be created: caught here, not after a run has trained."""
    errors = []
    if not cfg.logging.dir.strip():
        errors.append("logging.dir: must not be empty (the folder for logs, metrics and checkpoints)")
    for key, path in (("logging.dir", cfg.logging.dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        blocker = _blocking_file(path) if path.strip() else None
        if blocker is not None:
            what = "is a file" if os.path.abspath(path) == blocker else f"is inside {quote(blocker)}, a file"
            errors.append(f"{key}: {quote(path)} {what}, not a folder")
    return errors


def _blocking_file(path: str) -> Optional[str]:
    """The existing non-folder at `path` or at one of its parents, which makes creating it fail."""
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    return None if os.path.isdir(p) else p
