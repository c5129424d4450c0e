"""FSDP vs DDP on CPU, 2 gloo workers, side by side in one run: step time and per-rank memory.

Both strategies train the same lm model through the engine in the same pair of processes (one
process group), alternating ddp, fsdp, ddp, fsdp, ... so that the machine's load falls on both
alike; each run's first log window (warm-up) is dropped, the median step time of the rest kept.
Per-rank memory: the bytes of parameters, gradients and AdamW state each rank holds
(`core/parallel/memory.py`). (Not the peak RSS: both strategies run in the same processes, so the
peak of one would show in the other's.)

    python benchmarks/fsdp_bench.py                       # d_model 256, 4 layers, seq 128
    python benchmarks/fsdp_bench.py --d-model 512 --repeats 3 --out benchmarks/results/cpu2_fsdp_bench.jsonl

One JSON line: ms per step of each, the ratio fsdp/ddp, the state bytes per rank and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raytrain_llm.core.callbacks import Callback  # noqa: E402
from raytrain_llm.core.config_loader import load_config  # noqa: E402
from raytrain_llm.core.distributed import DistributedManager  # noqa: E402
from raytrain_llm.core.parallel.memory import local_state_bytes  # noqa: E402


class _StateBytes(Callback):
    def __init__(self):
        self.counts = {}

    def on_train_end(self, engine) -> None:
        self.counts = local_state_bytes(engine.raw_model, engine.optimizer)


def _settings(a, strategy: str, folder: str) -> list[str]:
    steps = a.window * (a.windows + 1)
    s = {"distributed.launcher": "local", "distributed.strategy": strategy, "training.device": "cpu",
         "model.d_model": a.d_model, "model.n_layers": a.layers, "model.n_heads": 4, "model.seq_len": a.seq,
         "model.vocab_size": 512, "training.batch_size": a.batch, "training.max_steps": steps, "training.epochs": 1,
         "data.num_train_samples": steps * a.batch * 2, "training.validate": "false", "checkpoint.enabled": "false",
         "logging.log_every_n_steps": a.window, "logging.progress_bar": "off", "logging.tensorboard": "false",
         "logging.dir": folder, "logging.level": "WARNING"}
    return [f"{k}={v}" for k, v in s.items()]


def _worker(rank: int, port: int, a, out_file: str, tmp: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from raytrain_llm.launchers.worker import train_worker

    times: dict[str, list[float]] = {"ddp": [], "fsdp": []}
    state: dict[str, dict] = {}
    for r in range(a.repeats):
        for strategy in ("ddp", "fsdp"):
            folder = os.path.join(tmp, f"{strategy}-{r}")
            cfg = load_config(None, _settings(a, strategy, folder), environ={}, task="lm")
            counter = _StateBytes()
            train_worker(cfg, dist=DistributedManager(), extra_callbacks=[counter], data_checked=True)
            state[strategy] = counter.counts
            if rank == 0:  # rank 0 writes the metrics
                with open(os.path.join(folder, "metrics.jsonl")) as fh:
                    records = [json.loads(line) for line in fh if '"train"' in line]
                times[strategy] += [rec["step_time"] for rec in records[1:]]  # the first window: warm-up
    per_rank = dist.get_rank(), state
    gathered = [None, None]
    dist.all_gather_object(gathered, per_rank)
    if rank == 0:
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        total = {k: [sum(g[1][k].values()) for g in gathered] for k in ("ddp", "fsdp")}
        line = {"bench": "fsdp_vs_ddp", "device": "cpu", "workers": 2, "d_model": a.d_model, "layers": a.layers,
                "seq": a.seq, "batch_per_worker": a.batch, "steps_timed_per_strategy": len(times["ddp"]) * a.window,
                "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
                "fsdp_over_ddp_time": round(ms["fsdp"] / ms["ddp"], 3),
                "state_bytes_per_rank": total, "fsdp_over_ddp_state": round(max(total["fsdp"]) / max(total["ddp"]), 3),
                "loadavg_1m_start_end": [a.load_start, round(os.getloadavg()[0], 2)],
                "torch": torch.__version__}
        print(json.dumps(line))
        if out_file:
            with open(out_file, "a") as fh:
                fh.write(json.dumps(line) + "\n")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="samples per worker per step")
    p.add_argument("--window", type=int, default=5, help="steps per log window (one timing sample)")
    p.add_argument("--windows", type=int, default=3, help="timed windows per run, after one warm-up window")
    p.add_argument("--repeats", type=int, default=2, help="ddp,fsdp pairs, alternating")
    p.add_argument("--out", default="")
    a = p.parse_args()
    a.load_start = round(os.getloadavg()[0], 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(port, a, a.out, tmp), nprocs=2)


if __name__ == "__main__":
    main()
