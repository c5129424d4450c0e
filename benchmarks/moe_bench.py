"""MoE layer forward+backward: sorted dispatch backends vs the per-expert reference loop
vs a dense MLP with the same active FLOPs, measured side by side (interleaved repeats,
median) so that the ratios are immune to drift on a shared machine.

    python benchmarks/moe_bench.py                 # CPU cases, plus CUDA bf16 when available
    python benchmarks/moe_bench.py --device cpu --repeats 9

One JSON line per case: milliseconds per impl and `speedup_vs_loop` per impl (loop / impl).
`dense` is an MLP of hidden width top_k * expert_hidden: the FLOP floor a dispatch can reach.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raytrain_llm.core.host_memory import keep_freed_host_memory  # noqa: E402
from raytrain_llm.models.mlp import MLP  # noqa: E402
from raytrain_llm.models.moe import MoE  # noqa: E402

CPU_CASES = [
    # name, d_model, experts, top_k, expert hidden, tokens
    ("cpu-d256-e8-k2", 256, 8, 2, 1024, 4096),
    ("cpu-d128-e8-k2", 128, 8, 2, 512, 4096),
    ("cpu-d256-e32-k4-fine", 256, 32, 4, 256, 4096),
    ("cpu-d128-e64-k8-fine", 128, 64, 8, 64, 4096),
    ("cpu-d128-e32-k4-1k-tokens", 128, 32, 4, 128, 1024),  # one cpu-small batch (8 x 128)
    # Small layers, few rows per expert: where the loop's per-expert work (not FLOPs) dominates.
    ("cpu-d64-e16-k2-512-tokens", 64, 16, 2, 128, 512),
    ("cpu-d64-e32-k4-512-tokens", 64, 32, 4, 64, 512),
]
CUDA_CASES = [("cuda-gpt2s-e8-k2", 768, 8, 2, 3072, 16384), ("cuda-gpt2s-e64-k8-fine", 768, 64, 8, 384, 16384)]


def make_step(module: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype):
    r = torch.randn_like(x)

    def step():
        xi = x.detach().requires_grad_()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = module(xi)
            y, aux = out if isinstance(out, tuple) else (out, None)
            loss = (y.float() * r).sum() + (aux["aux_loss"] if aux is not None else 0.0)
        loss.backward()
        module.zero_grad(set_to_none=True)
    return step


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall ms, process CPU ms). CPU time is the steadier yardstick on a shared machine."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def bench_case(name, d, E, k, h, N, device, dtype, impls, repeats, warmup) -> dict:
    torch.manual_seed(0)
    x = torch.randn(N, d, device=device)
    steps = {}
    for impl in impls:
        moe = MoE(d, h, E, k, impl=impl).to(device)
        for p in moe.parameters():
            torch.nn.init.normal_(p, std=0.02)
        steps[impl] = make_step(moe, x, device, dtype)
    steps["dense"] = make_step(MLP(d, k * h).to(device), x, device, dtype)
    wall, cpu = {key: [] for key in steps}, {key: [] for key in steps}
    for i in range(warmup + repeats):
        for key, fn in steps.items():  # interleaved: every impl sees the same machine state
            w, c = timed(fn, device)
            if i >= warmup:
                wall[key].append(w)
                cpu[key].append(c)
    med = {key: round(statistics.median(v), 2) for key, v in wall.items()}
    out = {
        "case": name, "device": device.type, "dtype": "bf16" if dtype else "fp32", "d_model": d, "experts": E,
        "top_k": k, "expert_hidden": h, "tokens": N, "threads": torch.get_num_threads(), "ms": med,
        "speedup_vs_loop": {key: round(med["loop"] / v, 2) for key, v in med.items() if key != "loop"},
        "auto_backend": MoE(d, h, E, k).to(device).backend(x.to(dtype) if dtype else x),
    }
    if device.type == "cpu":
        cpu_med = {key: round(statistics.median(v), 2) for key, v in cpu.items()}
        out["cpu_ms"] = cpu_med
        out["cpu_speedup_vs_loop"] = {key: round(cpu_med["loop"] / v, 2) for key, v in cpu_med.items() if key != "loop"}
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc malloc as is")
    a = p.parse_args()
    if not a.default_malloc:
        keep_freed_host_memory()  # as the engine does for CPU training: no per-step page faults
    wanted = set(filter(None, a.cases.split(",")))
    runs = []
    if a.device in ("cpu", "all"):
        runs += [(c, torch.device("cpu"), None, ["loop", "split", "grouped", "padded"]) for c in CPU_CASES]
    if a.device in ("cuda", "all") and torch.cuda.is_available():
        runs += [(c, torch.device("cuda"), torch.bfloat16, ["loop", "split", "grouped"]) for c in CUDA_CASES]
    for case, device, dtype, impls in runs:
        if wanted and case[0] not in wanted:
            continue
        result = bench_case(*case, device, dtype, impls, a.repeats, a.warmup)
        if device.type == "cuda":
            result["gpu"] = torch.cuda.get_device_name()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
