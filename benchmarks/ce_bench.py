"""LM head + cross-entropy, forward and backward, compiled: F.cross_entropy on upcast logits
(what the model does) vs the same loss written as logsumexp minus the target's logit, picked by
a mask or by a gather, in case torch.compile lowers one of them to fewer passes over the
[tokens, vocab] logits. Interleaved repeats, median; the variants' loss and gradients are
compared with F.cross_entropy's before timing. (On an H200 the mask variant was 1.02x, the
gather 0.89x: BENCHMARKS.md; the model keeps F.cross_entropy.)

    python benchmarks/ce_bench.py                    # GPT-2-small head on CUDA (bf16), else a small CPU case
    python benchmarks/ce_bench.py --tokens 65536

One JSON line: ms per variant, the speed-up, and the largest relative differences.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def torch_ce(h, w, t):
    """What the model computes (GPT.forward)."""
    return F.cross_entropy(F.linear(h, w).float(), t)


def masked(h, w, t):
    """logsumexp minus the target's logit picked by a mask: backward is pointwise, no scatter."""
    logits = F.linear(h, w).float()  # [N, V]
    hit = torch.arange(logits.shape[-1], device=logits.device) == t[:, None]
    return (torch.logsumexp(logits, -1) - torch.where(hit, logits, 0.0).sum(-1)).mean()


def gathered(h, w, t):
    logits = F.linear(h, w).float()
    return (torch.logsumexp(logits, -1) - logits.gather(1, t[:, None]).squeeze(1)).mean()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    N, d, V = (a.tokens or 32768, 768, 50304) if cuda else (a.tokens or 2048, 128, 4096)
    torch.manual_seed(0)
    h0 = torch.randn(N, d, device=dev)
    w = torch.nn.Parameter(torch.randn(V, d, device=dev) * 0.02)
    t = torch.randint(0, V, (N,), device=dev)
    variants = {"torch": torch.compile(torch_ce), "logsumexp": torch.compile(masked),
                "logsumexp_gather": torch.compile(gathered)}

    def step(fn):
        h = h0.detach().requires_grad_()
        w.grad = None
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = fn(h, w, t)
        loss.backward()
        return loss.detach(), h.grad, w.grad

    results = {name: step(fn) for name, fn in variants.items()}  # compiles, and the values to compare
    ref = results["torch"]
    diff = {k: max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(v, ref)) for k, v in results.items()}
    times = {name: [] for name in variants}
    for i in range(a.repeats):
        for name, fn in (variants.items() if i % 2 == 0 else list(variants.items())[::-1]):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(fn)
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {k: round(statistics.median(v), 3) for k, v in times.items()}
    print(json.dumps({"case": f"head+ce N={N} d={d} V={V}", "device": dev.type, "ms": ms,
                      "speedup": {k: round(ms["torch"] / v, 3) for k, v in ms.items()}, "max_rel_diff": diff,
                      **({"gpu": torch.cuda.get_device_name()} if cuda else {})}), flush=True)
    if max(diff.values()) > 1e-2:  # bf16 logits round at ~4e-3; more is a different function
        sys.exit(f"ce_bench: a variant differs from F.cross_entropy by {max(diff.values()):.3g}")


if __name__ == "__main__":
    main()
