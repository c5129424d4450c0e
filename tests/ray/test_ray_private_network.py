"""A private single-machine Ray run (launcher=ray, no cluster) listens on loopback only, but for
what cluster/README.md documents: torch's process-group store on rank 0 (no bind option)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netstat import descendants, is_loopback, listening

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


@pytest.mark.timeout(300)
def test_a_private_ray_run_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYTRAIN_", "RAY_ENABLE_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]), RT_STEP_SLEEP="0.5",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    args = ["--task", "rt_helpers:SlowTask", "--set", "distributed.launcher=ray", "--set", "distributed.num_workers=2",
            "--set", "distributed.cpus_per_worker=0.5", "--set", f"logging.dir={tmp_path}",
            "--set", "logging.progress_bar=off", "--set", "training.device=cpu", "--set", "training.max_steps=16",
            "--set", "data.num_train_samples=256", "--set", "training.batch_size=8"]
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        placed = tmp_path / "logs" / "ray_worker_rank1.json"
        deadline = time.time() + 200
        while not placed.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert placed.exists(), "the Ray workers did not start"
        time.sleep(2)  # the workers are training: every Ray process of the run is up
        sockets = listening(descendants(proc.pid))
        commands = {command for _, command, _, _ in sockets}
        assert "gcs_server" in commands and "raylet" in commands, sockets  # not vacuous
        exposed = [s for s in sockets if not is_loopback(s[2])]
        # Documented: torch.distributed's TCPStore, one port on one Train worker (rank 0), binds all
        # interfaces whatever MASTER_ADDR says. Nothing of Ray itself does.
        store = [s for s in exposed if s[1].startswith("ray::RayTrainWo")]
        assert len(store) <= 1 and exposed == store, f"listening beyond loopback: {exposed}"
        out, _ = proc.communicate(timeout=200)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
