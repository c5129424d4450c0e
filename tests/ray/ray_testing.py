"""Helpers for the Ray tests: tiny configs with unique run names, fits, checkpoint reads.

A module of its own (not conftest) so test files import it by a name no other test folder uses.
"""
from __future__ import annotations

import os
import uuid

import torch

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Small model, small data, 10 steps over 2 epochs (8 steps each), checkpoints every 2 steps.
TINY_RAY = {
    "distributed.launcher": "ray",
    "distributed.num_workers": "2",
    "distributed.cpus_per_worker": "0.5",
    "logging.progress_bar": "off",
    "logging.log_every_n_steps": "2",
    "data.num_train_samples": "128",
    "data.num_val_samples": "32",
    "training.batch_size": "8",
    "training.epochs": "2",
    "training.max_steps": "10",
    "training.device": "cpu",
    "checkpoint.every_n_steps": "2",
    # Mid-epoch validation that stops after 1 batch: the train stream stays suspended across a
    # validation, and every validation pass is abandoned part-way (as limit_val_batches does).
    "training.val_every_n_steps": "4",
    "training.limit_val_batches": "1",
    "checkpoint.keep_last": "3",
    "model.input_dim": "8",
    "model.hidden_dim": "16",
}


def ray_config(tmp_path, task: str = "regression", **overrides):
    """TINY_RAY with a unique run name and everything under tmp_path; overrides as section__field=value."""
    from raytrain_llm.core.config_loader import load_config

    s = dict(TINY_RAY)
    s["logging.dir"] = str(tmp_path / "run")
    s["distributed.run_name"] = f"t-{uuid.uuid4().hex[:8]}"
    for key, value in overrides.items():
        s[key.replace("__", ".")] = str(value).lower() if isinstance(value, bool) else str(value)
    return load_config(None, [f"{k}={v}" for k, v in s.items()], environ={}, task=task)


def final_params(config) -> dict[str, torch.Tensor]:
    """Model weights of the run's newest engine checkpoint, full or sharded (fsdp, expert
    parallelism: consolidated from its shards)."""
    from raytrain_llm.core.checkpointing import CheckpointManager
    from raytrain_llm.core.sharded.consolidate import consolidate
    from raytrain_llm.core.sharded.layout import PATH_KEY, is_sharded

    path = CheckpointManager(config.checkpoint_dir, is_main=False).latest_path()
    assert path, f"no checkpoint under {config.checkpoint_dir}"
    state = CheckpointManager.load(path)
    return consolidate(state[PATH_KEY]) if is_sharded(state) else state["model"]


def fit(config, **build_kwargs):
    """build_trainer + fit in the current Ray session; returns (result, resolved config)."""
    from raytrain_llm.launchers.ray_train.trainer import build_trainer, resolve_paths

    trainer = build_trainer(config, **build_kwargs)
    return trainer.fit(), resolve_paths(config)


def ensure_local_ray(num_cpus: int = 2) -> None:
    import ray

    if not ray.is_initialized():
        # Workers import the test tasks (rt_helpers) from tests/, as a user's from their folder.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     [TESTS_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}})


