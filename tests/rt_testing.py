"""Shared helpers for the core tests: tiny configs, the real CLI in a subprocess, checkpoint reads.

A uniquely named module rather than `conftest`: tests/ray/conftest.py is also importable as
`conftest`, so `from conftest import ...` would pick whichever directory is first on sys.path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from raytrain_llm.core.callbacks import Callback

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# Small enough that a run takes a fraction of a second on 2 CPU cores.
TINY = {
    "distributed.launcher": "local",
    "logging.progress_bar": "off",
    "logging.tensorboard": "false",
    "logging.log_every_n_steps": "1",
    "data.num_train_samples": "256",
    "data.num_val_samples": "64",
    "training.batch_size": "16",
    "training.epochs": "1",
    "training.device": "cpu",
    "model.input_dim": "8",
    "model.hidden_dim": "16",
}


def settings(tmp_path, **overrides) -> dict[str, str]:
    """TINY plus `logging.dir` under tmp_path plus overrides (`training__lr=...` or {'training.lr': ...})."""
    out = dict(TINY)
    out["logging.dir"] = str(tmp_path)
    for key, value in overrides.items():
        out[key.replace("__", ".")] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def make_config(tmp_path, task: str = "regression", **overrides):
    from raytrain_llm.core.config_loader import load_config

    s = settings(tmp_path, **overrides)
    return load_config(None, [f"{k}={v}" for k, v in s.items()], environ={}, task=task)


def train(tmp_path, task: str = "regression", extra_callbacks=None, **overrides):
    """One in-process run (the config's callbacks plus `extra_callbacks`); returns (result, config)."""
    from raytrain_llm.launchers.worker import train_worker

    cfg = make_config(tmp_path, task, **overrides)
    # One intra-op thread, like the subprocesses (cli_env): no oversubscription on small CPU
    # boxes, and in-process, subprocess and spawned runs compute alike. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_worker(cfg, extra_callbacks=extra_callbacks), cfg
    finally:
        torch.set_num_threads(threads)


def cli_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYTRAIN_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO)])
    env["OMP_NUM_THREADS"] = "1"  # also inherited by spawned workers
    env.update(extra)
    return env


def run_cli(args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from the repo root, as a user would run it."""
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def set_args(s: dict[str, str]) -> list[str]:
    return [a for k, v in s.items() for a in ("--set", f"{k}={v}")]


def checkpoints(run_dir) -> list[Path]:
    d = Path(run_dir) / "checkpoints"
    return sorted(p for p in d.iterdir() if p.name.startswith("step-")) if d.exists() else []


def ckpt_step(path) -> int:
    return int(Path(path).name.split("-")[1])


def load_state(path) -> dict:
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)


def final_state(run_dir) -> dict:
    """The newest checkpoint's state of a run."""
    return load_state(checkpoints(run_dir)[-1])


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def train_steps(run) -> list[int]:
    """The steps of a run folder's train records in metrics.jsonl ([] before the file exists)."""
    path = Path(run) / "metrics.jsonl"
    return [r["step"] for r in read_jsonl(path) if r.get("split") == "train"] if path.exists() else []


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_token_files_with_a_bad_id(folder) -> tuple[str, str]:
    """train.bin with token id 77 at position 1500 (ids < 50 elsewhere) and a clean val.bin."""
    import numpy as np

    from raytrain_llm.data.token_file import write_tokens

    tokens = np.arange(2000) % 50
    tokens[1500] = 77  # far from the first batches
    train, val = str(Path(folder) / "train.bin"), str(Path(folder) / "val.bin")
    write_tokens(train, tokens)
    write_tokens(val, np.arange(200) % 50)
    return train, val


class ManualClock:
    """A clock that moves only when told (seconds): timing rules checked without the machine's speed."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tick(Callback):
    """Moves `clock` on by `per_batch` s at each micro-batch, and by `per_pause` s in each validation
    and save; with `monitor=True` the engine's PerformanceMonitor reads `clock`."""

    def __init__(self, clock, per_batch=0.0, per_pause=0.0, monitor=False):
        self.clock, self.per_batch, self.per_pause, self.monitor = clock, per_batch, per_pause, monitor

    def on_train_start(self, engine):
        if self.monitor:
            engine.monitor.clock = self.clock

    def on_batch_start(self, engine, batch_idx):
        self.clock.now += self.per_batch

    def on_validation_start(self, engine):
        self.clock.now += self.per_pause

    def on_save_checkpoint(self, engine, path, metrics):
        self.clock.now += self.per_pause
