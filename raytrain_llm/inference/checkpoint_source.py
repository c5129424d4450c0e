"""A trained model from what a user points at: a run folder (its best checkpoint, else the latest),
one checkpoint folder, written by any launcher, compiled or not, or a folder that
`export --format safetensors` wrote (model.safetensors + config.yaml).

`read_checkpoint` is the one place that turns a checkpoint folder into (config, model state
dict) on one process; a sharded checkpoint (state.pt's "format": "sharded") has its model
consolidated there from the DCP folder beside state.pt, through the safe reader.
Every problem is a UsageError (exit 2): the user pointed at the wrong thing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import torch

from raytrain_llm.core.checkpointing import STATE_FILE, CheckpointManager, clean_state_dict
from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import config_from_mapping
from raytrain_llm.core.errors import CheckpointError, UsageError
from raytrain_llm.core.sharded import SHARDED_DIR, is_sharded
from raytrain_llm.core.sharded.consolidate import consolidate
from raytrain_llm.models import GPT

SAFETENSORS_FILE = "model.safetensors"


@dataclass
class TrainedModel:
    model: GPT  # eval mode, on the requested device
    config: Config  # the run's config, as saved in the checkpoint
    checkpoint_dir: str
    run_dir: Optional[str]  # the run's logging.dir when it exists (tokenizer, summary.json)
    task: object  # the run's task instance (its validation_step evaluates)


def resolve_checkpoint(path: str) -> str:
    """The checkpoint folder `path` names: itself, or for a run folder the best checkpoint named in
    its summary.json, else the newest under <path>/checkpoints."""
    if not os.path.exists(path):
        raise UsageError(f"--checkpoint: {path} does not exist")
    if os.path.isfile(os.path.join(path, STATE_FILE)) or _is_safetensors_export(path):
        return path
    if not os.path.isdir(path):
        raise UsageError(f"--checkpoint: {path} is not a folder (give a run folder or a checkpoint folder)")
    try:
        with open(os.path.join(path, "summary.json"), encoding="utf-8") as fh:
            summary = json.load(fh)
    except (OSError, ValueError):
        summary = {}
    for key in ("best_checkpoint", "latest_checkpoint"):
        named = summary.get(key) if isinstance(summary, dict) else None
        if isinstance(named, str) and os.path.isfile(os.path.join(named, STATE_FILE)):
            return named
    latest = CheckpointManager(os.path.join(path, "checkpoints"), is_main=False).latest_path()
    if latest is None:
        raise UsageError(f"--checkpoint: no checkpoint in {path} (neither a checkpoint folder with {STATE_FILE} "
                         "nor a run folder with checkpoints/step-*)")
    return latest


def _is_safetensors_export(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in (SAFETENSORS_FILE, "config.yaml"))


def read_checkpoint(checkpoint_dir: str) -> tuple[Config, dict[str, torch.Tensor]]:
    """The run's config and the model's full state dict (no `module.`/`_orig_mod.` prefixes), on CPU."""
    if not os.path.isfile(os.path.join(checkpoint_dir, STATE_FILE)) and _is_safetensors_export(checkpoint_dir):
        return _read_safetensors_export(checkpoint_dir)
    try:
        state = CheckpointManager.load(checkpoint_dir, map_location="cpu")
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"checkpoint {checkpoint_dir} holds no config")
        weights = consolidate(os.path.join(checkpoint_dir, SHARDED_DIR)) if is_sharded(state) else state["model"]
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    return config_from_mapping(state["config"]), clean_state_dict(weights)


def _read_safetensors_export(folder: str) -> tuple[Config, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from raytrain_llm.core.config_loader import load_config

    config = load_config(os.path.join(folder, "config.yaml"), environ={})
    try:
        return config, load_file(os.path.join(folder, SAFETENSORS_FILE))
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{folder}/{SAFETENSORS_FILE} is corrupt or unreadable: {str(exc)[:200]}") from None


def run_dir_of(checkpoint_dir: str, config: Config) -> Optional[str]:
    """The run folder: logging.dir as the run saw it, else the folder above checkpoints/."""
    for candidate in (config.logging.dir, os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_dir)))):
        if candidate and os.path.isdir(candidate):
            return candidate
    return None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None


def load_trained_model(path: str, device: str = "cpu") -> TrainedModel:
    """The run's model (built by its task, so a subclass of the lm task works too) with the
    checkpoint's weights, in eval mode."""
    from raytrain_llm.launchers.task_resolution import resolve_task
    from raytrain_llm.models.wrappers import unwrap

    checkpoint_dir = resolve_checkpoint(path)
    config, weights = read_checkpoint(checkpoint_dir)
    config.model.dropout = 0.0
    task = resolve_task(config.task)(config)
    model = unwrap(task.build_model())
    if not isinstance(model, GPT):
        raise UsageError(f"checkpoint {checkpoint_dir}: task {config.task!r} builds a {type(model).__name__}, "
                         "not the lm task's GPT: only language models can be sampled, evaluated or exported")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UsageError(f"checkpoint {checkpoint_dir}: its weights do not fit its config's model "
                         f"({' '.join(first[1:2] or first[:1]).strip()[:200]})") from None
    model = model.to(pick_device(device)).eval()
    return TrainedModel(model, config, checkpoint_dir, run_dir_of(checkpoint_dir, config), task)
