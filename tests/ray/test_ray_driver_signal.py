"""SIGTERM to the driver of a Ray run (`train.py ... launcher=ray`), as Kubernetes or Slurm send it
to a job's main process: the workers finish their step, save and report a checkpoint there, the
run ends with summary.json marked interrupted and the driver exits 143."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_testing import TESTS_DIR, TINY_RAY
from rt_testing import train_steps

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_sigterm_to_the_driver_stops_every_worker_after_a_step_saves_and_exits_143(tmp_path):
    run = tmp_path / "run"
    # No periodic saves: the stop's own checkpoint is the only one before epoch 0 ends (step 8).
    settings = {**TINY_RAY, "logging.dir": str(run), "distributed.run_name": "driver-sigterm",
                "checkpoint.every_n_steps": "0", "logging.log_every_n_steps": "1"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYTRAIN_"))}
    env.update(OMP_NUM_THREADS="1", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", RT_STEP_SLEEP="0.5",
               PYTHONPATH=os.pathsep.join([TESTS_DIR, str(REPO)]))
    command = [sys.executable, "train.py", "--task", "rt_helpers:SlowTask",
               *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe: Ray's worker logs would fill a pipe nobody reads yet
    with open(stderr, "w", encoding="utf-8") as err_file:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            deadline = time.time() + 150
            while not train_steps(run):  # the workers are training
                assert proc.poll() is None, stderr.read_text()[-3000:]
                assert time.time() < deadline, "no train step within 150 s"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = stderr.read_text()
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted by SIGTERM" in err and "again: exiting now" not in err
    summary = json.loads((run / "summary.json").read_text())
    stopped = summary["global_step"]
    assert summary["interrupted"] == "SIGTERM" and 1 <= stopped < 8, summary
    # Both ranks stopped after the same whole step, saved there (the only checkpoint) and logged no step after it.
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == \
        [f"step-{stopped:08d}"]
    assert train_steps(run)[-1] == stopped
