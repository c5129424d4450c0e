"""A sweep stopped with Ctrl-C, as a user stops one: exit 130 with the resume hint, and the same
command again finishes it, each trial going on from its own checkpoint (steps logged once)."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rt_testing import train_steps

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "task": "lm",
    "model": {"vocab_size": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16},
    "data": {"num_train_samples": 1024, "num_val_samples": 32},
    "training": {"batch_size": 16, "epochs": 1, "lr": 0.01, "val_every_n_steps": 8, "device": "cpu"},
    "checkpoint": {"every_n_steps": 8, "keep_last": 1, "keep_best": 0},
    "logging": {"log_every_n_steps": 4, "progress_bar": "off", "level": "WARNING"},
    "distributed": {"num_workers": 1, "cpus_per_worker": 0.25},
}


@pytest.mark.timeout(300)
def test_ctrl_c_stops_a_sweep_and_the_same_command_finishes_it(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "ctrlc", "storage_path": str(tmp_path / "sweeps"), "base_config": str(tmp_path / "base.yaml"),
        "search_space": {"training.lr": [0.01, 0.02]}, "max_concurrent_trials": 1, "scheduler": "none"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYTRAIN_"))}
    env.update(OMP_NUM_THREADS="1", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    command = [sys.executable, "train.py", "--tune", str(tmp_path / "sweep.yaml")]
    trials = tmp_path / "sweeps" / "ctrlc" / "tensorboard"

    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        while not any(s >= 12 for s in train_steps(trials / "t000")):  # past its first checkpoint
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the first trial did not get past step 12"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    # t001 never started (one trial at a time); t000 was stopped mid-way, unless it was quicker.
    assert re.search(r"sweep ctrlc interrupted with [12] unfinished trial\(s\) \((t000, )?t001\); run the same "
                     r"command again to resume it", err), err[-3000:]

    # The report of the interrupted sweep lists the trial Tune had not created yet.
    with open(tmp_path / "sweeps" / "ctrlc" / "results.csv", newline="") as fh:
        assert [r["trial"] for r in csv.DictReader(fh) if r["status"] == "unfinished"][-1:] == ["t001"]

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best: t00" in done.stdout
    with open(tmp_path / "sweeps" / "ctrlc" / "results.csv", newline="") as fh:
        assert [(r["trial"], r["status"]) for r in csv.DictReader(fh)] == [("t000", "done"), ("t001", "done")]
    # t000 went on from its checkpoint, not from step 0: every step logged once. Stopped by Ctrl-C
    # after a step, it also logged that step (and saved there), unless it was a multiple of 4.
    every_4th = list(range(4, 65, 4))
    assert train_steps(trials / "t001") == every_4th
    t000 = train_steps(trials / "t000")
    assert t000 == sorted(set(t000)) and set(every_4th) <= set(t000) and len(set(t000) - set(every_4th)) <= 1, t000
