"""The balance loss's load fractions per micro-batch vs over the global batch
(`model.aux_loss_scope`), on the MoE LM trained by 2 spawned CPU workers: the same tokens, seeds
and steps, side by side in one run.

    python benchmarks/aux_scope_bench.py                  # 300 steps per scope, seed 0
    python benchmarks/aux_scope_bench.py --steps 600 --seeds 0 1

One JSON line per (seed, scope): final validation loss and the expert load of the last logged
train steps (max and min load over experts, relative to an even share: 1.0 is balanced; the
micro-batch's own load, as each rank sees it), then the differences global - micro per seed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = {"model.vocab_size": 64, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4, "model.seq_len": 64,
         "model.mlp_type": "swiglu", "model.use_moe": True, "model.num_experts": 8, "model.top_k": 2,
         "model.dropout": 0.0}
RUN = {"distributed.launcher": "spawn", "distributed.num_workers": 2, "distributed.backend": "gloo",
       "training.batch_size": 8, "training.epochs": 1, "training.lr": 3e-3, "training.device": "cpu",
       "training.warmup_steps": 20, "data.num_val_samples": 256, "checkpoint.enabled": False,
       "logging.progress_bar": "off", "logging.tensorboard": False, "logging.log_every_n_steps": 10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(folder: Path, steps: int, seed: int, scope: str) -> dict:
    sets = {**MODEL, **RUN, "training.max_steps": steps, "data.num_train_samples": steps * 16,
            "training.seed": seed, "model.aux_loss_scope": scope, "logging.dir": str(folder),
            "distributed.master_port": free_port()}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "train.py", "--task", "lm", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=3600)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    records = [json.loads(line) for line in open(folder / "metrics.jsonl") if line.strip()]
    train = [r for r in records if r.get("split") == "train"][-3:]  # the last 30 steps
    val = [r for r in records if r.get("split") == "val"][-1]
    return {"val_loss": round(val["val/loss"], 4),
            "max_load": round(sum(r["moe_max_load"] for r in train) / len(train), 3),
            "min_load": round(sum(r["moe_min_load"] for r in train) / len(train), 3),
            "aux_loss": round(sum(r["aux_loss"] for r in train) / len(train), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            result = {}
            for scope in ("micro_batch", "global_batch"):
                result[scope] = run(Path(tmp) / f"{seed}-{scope}", args.steps, seed, scope)
                print(json.dumps({"bench": "aux_scope_bench", "seed": seed, "scope": scope, "steps": args.steps,
                                  "workers": 2, "batch_per_worker": 8, **result[scope],
                                  "load_avg_1m": round(os.getloadavg()[0], 1)}), flush=True)
            g, m = result["global_batch"], result["micro_batch"]
            print(json.dumps({"bench": "aux_scope_bench", "seed": seed, "global_minus_micro": {
                k: round(g[k] - m[k], 4) for k in g}}), flush=True)


if __name__ == "__main__":
    main()
