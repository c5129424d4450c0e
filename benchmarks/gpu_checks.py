"""CUDA correctness checks run by gpu.sh before timing: one JSON line each.

- the MoE grouped dispatch equals the per-expert reference loop on CUDA bf16 (forward and grads);
- the MoE model compiles as one graph under bf16 autocast (no graph breaks);
- the engine trains with fp16 + GradScaler and bf16 on CUDA, and the loss goes down;
- each `model.attention_backend` at the GPT-2-small attention shape: which kernel ran, its
  forward+backward time, and its error against the math kernel (a small shape on CPU).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raytrain_llm.core.callbacks import Callback  # noqa: E402
from raytrain_llm.core.config_loader import load_config  # noqa: E402
from raytrain_llm.core.engine import TrainingEngine  # noqa: E402
from raytrain_llm.models import GPT, MoE  # noqa: E402
from raytrain_llm.tasks.lm_task import LanguageModelingTask  # noqa: E402


def emit(name: str, **fields) -> None:
    print(json.dumps({"check": name, **fields}), flush=True)


def moe_dispatch_matches_loop(device: torch.device) -> None:
    torch.manual_seed(0)
    for mlp_type, experts, k in (("gelu", 8, 2), ("gelu", 4, 4), ("swiglu", 8, 2)):
        layer = MoE(256, 512, experts, k, mlp_type=mlp_type, impl="grouped").to(device)
        torch.nn.init.normal_(layer.router.weight, std=0.5)  # confident routing, as after training
        x = torch.randn(2048, 256, device=device, requires_grad=True)
        grads, outs = [], []
        for impl in ("grouped", "loop"):
            layer.impl = impl
            x.grad = None
            layer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                y, _ = layer(x)
            y.float().square().mean().backward()
            outs.append(y.float().detach())
            grads.append([x.grad.clone(), layer.w_in.grad.clone(), layer.w_out.grad.clone()])
        err = (outs[0] - outs[1]).abs().max().item() / outs[1].abs().max().item()
        gerr = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*grads))
        emit("moe_grouped_vs_loop_bf16", device=device.type, mlp=mlp_type, experts=experts, top_k=k, rel_err_out=err, rel_err_grad=gerr,
             ok=err < 2e-2 and gerr < 5e-2)


def moe_compiles_without_breaks(device: torch.device) -> None:
    cfg = load_config(overrides=["model.use_moe=true", "model.num_experts=8", "model.top_k=2", "model.d_model=128",
                                 "model.n_heads=4", "model.vocab_size=512", "model.seq_len=128"], environ={})
    model = GPT(cfg.model).to(device)
    ids = torch.randint(0, 512, (4, 128), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(ids, targets=ids)
    emit("moe_compile_graph_breaks", graph_count=explanation.graph_count,
         graph_break_count=explanation.graph_break_count,
         reasons=[str(b.reason)[:120] for b in explanation.break_reasons][:3],
         ok=explanation.graph_break_count == 0)


def attention_backends(device: torch.device) -> None:
    from raytrain_llm.models.attention import CausalSelfAttention

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    # GPT-2 small on CUDA: 12 heads of 64, seq 1024, batch 16; a small shape for the CPU dry run.
    x = torch.randn(*((16, 1024) if cuda else (2, 128)), 768, device=device)
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    ref = None
    for backend in ("math", "auto", "flash", "cudnn", "efficient"):
        torch.manual_seed(1)  # the same weights for every backend
        layer = CausalSelfAttention(768, 12, x.shape[1], 0.0, rope=False, backend=backend).to(device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                y = layer(x)
            y.float().square().mean().backward()
            return y.float().detach()

        y = step()
        sync(device)
        with torch.profiler.profile(activities=[activity]) as prof:
            step()
            sync(device)
        ran = sorted(((e.device_time_total if cuda else e.cpu_time_total), e.key) for e in prof.key_averages()
                     if not e.key.startswith("autograd::") and any(w in e.key.lower() for w in ("flash", "fmha", "cudnn", "efficient", "math", "sdpa")))
        t0 = time.perf_counter()
        for _ in range(10):
            step()
        sync(device)
        ms = (time.perf_counter() - t0) / 10 * 1e3
        ref = y if ref is None else ref
        err = ((y - ref).abs().max() / ref.abs().max()).item()
        emit("attention_backend", device=device.type, backend=backend, ms_fwd_bwd_with_projections=round(ms, 3),
             kernels=[k[:70] for _, k in ran[::-1][:2]], rel_err_vs_math=err, ok=err < 2e-2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class KeepRecords(Callback):
    def __init__(self):
        self.records = []

    def on_log(self, engine, record) -> None:
        self.records.append(record)


def engine_trains(amp: str, device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides=[
            "model.use_moe=true", "model.num_experts=4", "model.top_k=2", "model.vocab_size=128",
            "training.max_steps=60", "training.epochs=1", "training.lr=3e-3", "training.batch_size=32",
            f"optimization.amp={amp}", f"training.device={device.type}", "logging.tensorboard=false",
            "logging.progress_bar=off", "logging.log_every_n_steps=10", f"logging.dir={tmp}",
            "checkpoint.enabled=false", "data.num_train_samples=2048", "logging.level=WARNING"], environ={},
            task="lm")
        keep = KeepRecords()
        engine = TrainingEngine(cfg, LanguageModelingTask(cfg), callbacks=[keep])
        records = keep.records
        engine.fit()
        train = [r for r in records if r.get("split") == "train"]
        emit(f"engine_{amp}_{device.type}", first_loss=train[0]["loss"], last_loss=train[-1]["loss"],
             val=engine.last_val_metrics.get("val/loss"), ok=train[-1]["loss"] < train[0]["loss"])


def main() -> None:
    # `--cpu` dry-runs the same checks on CPU (bf16 only) before spending GPU time.
    device = torch.device("cpu" if "--cpu" in sys.argv or not torch.cuda.is_available() else "cuda")
    checks = [lambda: moe_dispatch_matches_loop(device), lambda: moe_compiles_without_breaks(device),
              lambda: engine_trains("bf16", device), lambda: attention_backends(device)]
    if device.type == "cuda":
        checks.append(lambda: engine_trains("fp16", device))
    for check in checks:
        try:
            check()
        except Exception as exc:  # report and go on: one broken check must not hide the others
            emit("error", error=f"{type(exc).__name__}: {str(exc)[:400]}", ok=False)


if __name__ == "__main__":
    main()
