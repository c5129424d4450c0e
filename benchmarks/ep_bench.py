"""Expert parallelism on 2 CPU workers (gloo): an MoE LM with 8 experts trained with its experts
split over the 2 workers (ep=2) against replicated experts (ep=1), side by side in one run.

    python benchmarks/ep_bench.py                  # 2 workers, interleaved repeats, median
    python benchmarks/ep_bench.py --repeats 7 --steps 4

Both layouts live in the same 2 processes and take turns (`--steps` optimizer steps each, per
repeat), so drift on a shared machine hits both alike. Each step is what the engine does:
forward + backward under DDP (experts kept out of DDP at ep=2), the expert gradients averaged
and the global-norm clip (`ExpertParallel.finish_gradients`), an AdamW step. Per worker it
reports the median step time, the share of the ep=2 step spent in the all-to-all exchanges
(wall time inside them, waiting for the other worker included), and the bytes of parameters,
gradients and AdamW moments (experts and all). One JSON line per layout, then the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raytrain_llm.core.config import Config  # noqa: E402
from raytrain_llm.core.distributed import DistributedManager  # noqa: E402
from raytrain_llm.core.parallel.expert_parallel import ExpertParallel  # noqa: E402
from raytrain_llm.models import (
    GPT,  # noqa: E402
    moe_expert_parallel,  # noqa: E402
)

MODEL = {"vocab_size": 256, "d_model": 128, "n_layers": 2, "n_heads": 4, "seq_len": 128, "mlp_type": "swiglu",
         "use_moe": True, "num_experts": 8, "top_k": 2, "expert_hidden_dim": 512, "dropout": 0.0}
BATCH = 8  # sequences per worker


class ExchangeClock:
    """Wall time spent inside the all-to-all exchanges of the expert-parallel dispatch."""

    def __init__(self):
        self.seconds = 0.0
        self._exchange = moe_expert_parallel._exchange

    def __call__(self, *args):
        t0 = time.perf_counter()
        try:
            return self._exchange(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def build(ep: int, config: Config):
    config.distributed.expert_parallel = ep
    torch.manual_seed(0)
    model = GPT(config.model)
    parallel = ExpertParallel(config, DistributedManager())
    parallel.split(model, None, torch.device("cpu"))
    parallel.exclude_from_ddp(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, ddp, parallel, optimizer


def train_step(ddp, parallel, optimizer, params, batch) -> None:
    _, aux = ddp(batch[:, :-1], targets=batch[:, 1:])
    (aux["ce_loss"] + 0.01 * aux["aux_loss"]).backward()
    if parallel.sharded:
        parallel.finish_gradients(params, 1.0)
    else:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def state_bytes(model, optimizer) -> dict[str, int]:
    experts = {id(p) for layer in model.moe_layers for p in (layer.w_in, layer.w_out)}

    def size(params) -> int:  # parameter + gradient + AdamW's two moments
        return sum(4 * p.numel() * p.element_size() for p in params)
    return {"expert_bytes": size(p for p in model.parameters() if id(p) in experts),
            "model_bytes": size(model.parameters())}


def worker(rank: int, store: str, args, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    config = Config()
    for k, v in MODEL.items():
        setattr(config.model, k, v)
    layouts = {ep: build(ep, config) for ep in (1, 2)}
    clock = ExchangeClock()
    moe_expert_parallel._exchange = clock
    g = torch.Generator().manual_seed(rank)
    batch = torch.randint(0, MODEL["vocab_size"], (BATCH, MODEL["seq_len"] + 1), generator=g)
    times: dict[int, list[float]] = {1: [], 2: []}
    exchange: list[float] = []
    for repeat in range(args.repeats + 1):  # the first round warms up
        for ep, (model, ddp, parallel, optimizer) in layouts.items():
            params = list(model.parameters())
            dist.barrier()
            clock.seconds = 0.0
            t0 = time.perf_counter()
            for _ in range(args.steps):
                train_step(ddp, parallel, optimizer, params, batch)
            dt = (time.perf_counter() - t0) / args.steps
            if repeat:
                times[ep].append(dt)
                if ep == 2:
                    exchange.append(clock.seconds / args.steps / dt)
    lines = []
    for ep, (model, _, _, optimizer) in layouts.items():
        lines.append({"bench": "ep_bench", "rank": rank, "expert_parallel": ep, "workers": 2,
                      "repeats": args.repeats, "steps": args.steps, "step_ms": round(1e3 * statistics.median(times[ep]), 2), **state_bytes(model, optimizer),
                      **({"all_to_all_share": round(statistics.median(exchange), 3)} if ep == 2 else {})})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(lines, fh)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "store"), args, tmp), nprocs=2, join=True)
        lines = [line for r in (0, 1) for line in json.load(open(os.path.join(tmp, f"rank{r}.json")))]
    load = os.getloadavg()[0]
    for line in lines:
        print(json.dumps({**line, "load_avg_1m": round(load, 1), "cpus": os.cpu_count()}))
    for rank in (0, 1):
        one, two = (next(x for x in lines if x["rank"] == rank and x["expert_parallel"] == ep) for ep in (1, 2))
        print(json.dumps({"bench": "ep_bench", "rank": rank, "model": MODEL, "batch_per_worker": BATCH,
                          "step_time_ep2_over_ep1":
                          round(two["step_ms"] / one["step_ms"], 3),
                          "expert_bytes_ep2_over_ep1": round(two["expert_bytes"] / one["expert_bytes"], 3),
                          "model_bytes_ep2_over_ep1": round(two["model_bytes"] / one["model_bytes"], 3),
                          "all_to_all_share_ep2": two["all_to_all_share"], "load_avg_1m": round(load, 1)}))


if __name__ == "__main__":
    main()
