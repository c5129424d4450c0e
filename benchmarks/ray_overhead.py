"""Ray launcher overhead: the same training config in-process, with spawn, and through Ray Train.

    .venv/bin/python benchmarks/ray_overhead.py [--steps 60] [--task lm] [--repeat 1]

Each run is `train.py` in a fresh subprocess (what a user types). Reported per run:
- `to_first_step_s`: from starting the command to the first optimizer step's record in
  metrics.jsonl (imports, Ray start-up, worker group, process group, first batch);
- `step_ms`: median step time over steps after the first 10 (steady state), from the engine's
  monitor, with every step logged (log_every_n_steps=1) in all runs alike;
- `data_wait_share`: mean share of step time spent waiting for the batch after warm-up;
- `wall_s`: the whole command.
Pairs to compare: local x1 vs ray x1 (batch 2B), spawn x2 vs ray x2 (batch B per worker).
Every run gets OMP_NUM_THREADS=--threads (default 1, what Ray gives a worker with a fractional
CPU): otherwise in-process runs use all cores' threads and the comparison measures thread
oversubscription rather than the launcher.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LM = ["model.vocab_size=64", "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.seq_len=64",
      "data.num_train_samples=8192", "data.num_val_samples=64"]
REGRESSION = ["model.hidden_dim=256", "data.num_train_samples=8192", "data.num_val_samples=64"]


def run(name: str, launcher: str, workers: int, batch: int, args, env_extra: dict) -> dict:
    log_dir = tempfile.mkdtemp(prefix=f"rto-{name}-")
    sets = (LM if args.task == "lm" else REGRESSION) + [
        f"distributed.launcher={launcher}", f"distributed.num_workers={workers}",
        f"training.batch_size={batch}", f"training.max_steps={args.steps}", "training.epochs=1",
        "training.device=cpu", "logging.log_every_n_steps=1", "logging.progress_bar=off",
        "logging.tensorboard=false", f"logging.dir={log_dir}", "checkpoint.keep_last=1"]
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--task", args.task]
    for s in sets:
        cmd += ["--set", s]
    metrics = os.path.join(log_dir, "metrics.jsonl")
    env = {**os.environ, **env_extra}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    first = None
    while proc.poll() is None:
        if first is None and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            first = time.perf_counter() - t0
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{out[-3000:]}")
    records = [json.loads(line) for line in open(metrics) if line.strip()]
    train = [r for r in records if r.get("split") == "train" and r["step"] > 10]
    return {"run": name, "launcher": launcher, "workers": workers, "batch_per_worker": batch,
            "to_first_step_s": round(first or float("nan"), 2),
            "step_ms": round(1000 * statistics.median(r["step_time"] for r in train), 2),
            "data_wait_share": round(statistics.mean(r["data_wait_share"] for r in train), 3),
            "wall_s": round(wall, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="lm", choices=["lm", "regression"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8, help="per-worker batch B of the 2-worker runs")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every run")
    args = p.parse_args()
    b = args.batch
    plan = [("local-x1", "local", 1, 2 * b), ("ray-x1", "ray", 1, 2 * b),
            ("spawn-x2", "spawn", 2, b), ("ray-x2", "ray", 2, b)]
    load = os.getloadavg()[0]
    for _ in range(args.repeat):
        for name, launcher, workers, batch in plan:
            env = {"OMP_NUM_THREADS": str(args.threads)}
            print(json.dumps({**run(name, launcher, workers, batch, args, env), "task": args.task,
                              "cpus": os.cpu_count(), "load_avg_1m_at_start": round(load, 1)}), flush=True)


if __name__ == "__main__":
    main()
