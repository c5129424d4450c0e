"""What reading one micro-batch from a Ray Data shard costs the training process, per layout.

    .venv/bin/python benchmarks/ray_read_cost.py [--slots 512] [--repeat 3]

The tiny lm's train slots (16 x 64 tokens each) are generated and materialized first, so only
the read is timed: `streaming_split(1)` then, in this process,
- `rows`: `iter_torch_batches(batch_size=1)`, one slot per Ray Data batch (the layout before issue 23);
- `blocks`: `read_slots`, a block of SLOTS_PER_BLOCK slots per Ray Data batch, numpy made tensors here.
Per slot: wall time and this process's CPU time (all its threads: Ray's prefetch and format
threads included), both modes side by side, alternating, --repeat times.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, as the launcher

TINY = ["model.vocab_size=64", "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.seq_len=64",
        "data.num_train_samples=16384", "training.batch_size=16"]


def read(shard, mode: str) -> int:
    from raytrain_llm.launchers.ray_train.data_shards import read_slots

    n = 0
    if mode == "rows":
        for row in shard.iter_torch_batches(batch_size=1, prefetch_batches=2, drop_last=False):
            _ = {k: v[0, :int(row["_count"][0])] for k, v in row.items() if not k.startswith("_")}
            n += 1
    else:
        for _ in read_slots(shard, prefetch=2):
            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slots", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import ray.data  # binds `ray` too
    from ray.data import ExecutionOptions

    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.launchers.ray_train.data_shards import SLOTS_PER_BLOCK, SlotGenerator
    from raytrain_llm.launchers.task_resolution import resolve_task

    cfg = load_config(None, TINY, environ={}, task="lm")
    module = resolve_task("lm")(cfg).build_data_module()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _node_ip_address="127.0.0.1")
    ray.data.DataContext.get_current().execution_options = ExecutionOptions(preserve_order=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    gen = SlotGenerator(cfg, "train", len(module.train_dataset), batch_size=16, world_size=1,
                        batches_per_epoch=len(module.train_dataset) // 16, total_batches=args.slots,
                        seed=0, shuffle=True)
    ds = ray.data.range(gen.num_rows, override_num_blocks=gen.num_rows // gen.g).map_batches(
        gen, batch_size=None, batch_format="numpy").materialize()
    load = os.getloadavg()[0]
    for rep in range(args.repeat):
        for mode in (("rows", "blocks") if rep % 2 == 0 else ("blocks", "rows")):
            shard = ds.streaming_split(1, equal=True)[0]
            wall0, cpu0 = time.perf_counter(), time.process_time()
            n = read(shard, mode)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            print(json.dumps({"mode": mode, "slots": n, "slots_per_block": SLOTS_PER_BLOCK, "repeat": rep,
                              "wall_ms_per_slot": round(1000 * wall / n, 3),
                              "cpu_ms_per_slot": round(1000 * cpu / n, 3),
                              "load_1m": round(os.getloadavg()[0], 1), "load_1m_at_start": round(load, 1),
                              "cpus": os.cpu_count()}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
