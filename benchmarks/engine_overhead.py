"""Engine vs a minimal hand-written loop over the same model and data, side by side in one run.

    python benchmarks/engine_overhead.py --preset cpu-tiny
    python benchmarks/engine_overhead.py --preset gpt2-small --amp bf16 --compile
    python benchmarks/engine_overhead.py --preset gpt2-small --moe --amp bf16 --batch 8

Prints one JSON line per preset: tokens/s, TFLOP/s, MFU (CUDA) and peak memory of both, and
`ratio` = engine tokens/s / hand tokens/s of the best run of each (goal >= 0.97 on GPU; engine
overhead <= 1.03 on CPU), the median / min / max of the per-pair ratios, and (CPU) the ratio of
the median single-step times.
By default the hand loop trains on batches generated up front on the device, so any
data-pipeline cost the engine pays shows up in the ratio instead of being hidden;
`--hand-data sampled` makes it sample every batch from the same dataset instead, which leaves
the engine's own machinery (DataLoader, bookkeeping, callbacks, NaN check) as the difference.
`--data tokens` feeds the engine from a token file (memory-mapped windows, the data path of
real training) instead of the synthetic Markov generator, whose sampling costs ~0.5 ms a batch
on CPU; the hand loop's batches come from the same file (made up front, or read each step
with `--hand-data sampled`).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raytrain_llm.core.callbacks import Callback, Profiler  # noqa: E402
from raytrain_llm.core.config import CHOICES  # noqa: E402
from raytrain_llm.core.config_loader import load_config  # noqa: E402
from raytrain_llm.core.engine import TrainingEngine  # noqa: E402
from raytrain_llm.core.host_memory import keep_freed_host_memory  # noqa: E402
from raytrain_llm.core.monitoring import peak_tflops  # noqa: E402
from raytrain_llm.models import GPT, flops_per_token  # noqa: E402
from raytrain_llm.tasks.lm_task import LanguageModelingTask  # noqa: E402

PRESETS = {
    # name: (vocab, d_model, n_layers, n_heads, seq_len, batch)
    "cpu-tiny": (256, 64, 2, 4, 64, 8),
    "cpu-small": (2048, 128, 4, 4, 128, 8),
    "gpt2-small": (50304, 768, 12, 12, 1024, 16),
}


def write_token_file(a, out_dir: str) -> str:
    """Random token ids for every step of a run, as nanoGPT's prepare scripts lay them out (raw
    uint16): the data path real training takes, memory-mapped windows instead of a generator."""
    vocab, _, _, _, T, B = PRESETS[a.preset]
    B = a.batch or B
    path = os.path.join(out_dir, "train.bin")
    ids = np.random.default_rng(0).integers(0, vocab, size=B * (a.warmup + a.steps + 2) * T + 1)
    ids.astype(np.uint16).tofile(path)
    return path


def make_config(a, out_dir: str):
    vocab, d, L, h, T, B = PRESETS[a.preset]
    B = a.batch or B
    steps = a.warmup + a.steps
    tokens = [f"data.train_tokens={write_token_file(a, out_dir)}"] if a.data == "tokens" else []
    sets = [*tokens, 
        f"model.vocab_size={vocab}", f"model.d_model={d}", f"model.n_layers={L}", f"model.n_heads={h}",
        f"model.seq_len={T}", "model.mlp_type=gelu", "model.position=learned", "model.norm=layernorm",
        f"model.attention_backend={a.attention}",
        f"model.use_moe={a.moe}", f"model.num_experts={a.experts}", f"model.top_k={a.top_k}",
        f"training.batch_size={B}", f"training.max_steps={steps}", "training.epochs=1", "training.lr=3e-4",
        "training.grad_clip=1.0", "training.validate=false", "training.lr_schedule=constant",
        f"training.device={a.device}", f"data.num_train_samples={B * (steps + 2)}", f"data.num_val_samples={B}",
        f"data.num_workers={a.data_workers}", f"optimization.amp={a.amp}", f"optimization.compile={a.compile}",
        f"optimization.compile_mode={a.compile_mode}",
        "checkpoint.enabled=false", "logging.tensorboard=false", "logging.progress_bar=off",
        f"logging.log_every_n_steps={steps}", f"logging.dir={out_dir}", "logging.level=WARNING",
        "distributed.launcher=local", f"optimization.keep_host_memory={not a.default_malloc}",
    ]
    return load_config(overrides=sets, environ={}, task="lm")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer(Callback):
    """The end time of every step from warm-up step `warmup` to the last timed step."""

    def __init__(self, warmup: int, last: int, device: torch.device):
        self.warmup, self.last, self.device = warmup, last, device
        self.ends: list[float] = []

    def on_batch_end(self, engine, step, outputs) -> None:
        if self.warmup <= step <= self.last:
            if step in (self.warmup, self.last):  # a sync per step would stall a GPU's queue
                sync(self.device)
            self.ends.append(time.perf_counter())


def run_engine(cfg, a) -> list[float]:
    task = LanguageModelingTask(cfg)
    device = torch.device(a.device)
    timer = StepTimer(a.warmup, a.warmup + a.steps, device)
    engine = TrainingEngine(cfg, task, callbacks=[timer])
    engine.fit()
    return timer.ends


def profile_engine(cfg, a) -> list[str]:
    """One more engine run, untimed, tracing two steps after warm-up (callbacks.Profiler)."""
    cfg = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, dir=a.profile))
    profiler = Profiler(a.profile, start_step=a.warmup + 1, num_steps=2)
    TrainingEngine(cfg, LanguageModelingTask(cfg), callbacks=[profiler]).fit()
    return profiler.files


def run_hand(cfg, a) -> list[float]:
    """The loop a user would write by hand: same model, optimizer, precision and clipping."""
    device = torch.device(a.device)
    torch.manual_seed(cfg.training.seed)
    model = GPT(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.lr, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model, mode=cfg.optimization.compile_mode) if cfg.optimization.compile else model
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.optimization.amp)
    dm = LanguageModelingTask(cfg).build_data_module()
    B = cfg.training.batch_size

    def load(i: int) -> dict:
        rows = dm.train_dataset.rows(np.arange(i * B, (i + 1) * B))
        return {k: torch.from_numpy(v).to(device) for k, v in rows.items()}

    data = [load(i) for i in range(4)]
    m = cfg.model
    ends = []
    for i in range(a.warmup + a.steps + 1):
        if i >= a.warmup:  # as StepTimer: the end of step `warmup` (counted from 1) starts the clock
            if i in (a.warmup, a.warmup + a.steps):
                sync(device)
            ends.append(time.perf_counter())
        if i == a.warmup + a.steps:
            break
        batch = load(i) if a.hand_data == "sampled" else data[i % 4]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            _, aux = fwd(batch["input_ids"], targets=batch["targets"])
            loss = aux["ce_loss"] + m.aux_loss_coef * aux["aux_loss"] + m.z_loss_coef * aux["z_loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return ends


def prepare(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def summarize(seconds: float, peak_mem: float, cfg, a) -> dict:
    device = torch.device(a.device)
    tokens = cfg.training.batch_size * cfg.model.seq_len * a.steps
    tps = tokens / seconds
    out = {"tokens_per_s": round(tps, 1), "tflops": round(flops_per_token(cfg.model) * tps / 1e12, 3)}
    peak = peak_tflops(device)
    if peak:
        out["mfu"] = round(out["tflops"] / peak, 4)
    if device.type == "cuda":
        out["peak_mem_gib"] = round(peak_mem / 2**30, 2)
    return out


def measure_side_by_side(cfg, a) -> tuple[dict, dict, dict]:
    """Hand and engine runs in pairs, the order alternating from pair to pair so neither always
    runs on a warmer (or quieter) machine. Returns the best run of each and the spread of the
    per-pair ratios: on a shared machine one pair can be off by several percent either way. Also
    the ratio of the median single-step times over all runs: another process's burst slows some
    steps, not the typical one, so that statistic moves least with the machine's load."""
    device = torch.device(a.device)
    seconds = {"hand": [], "engine": []}
    steps = {"hand": [], "engine": []}
    mem = {"hand": 0.0, "engine": 0.0}
    runs = (("hand", run_hand), ("engine", run_engine))
    for i in range(a.repeats):
        for name, fn in runs if i % 2 == 0 else runs[::-1]:
            prepare(device)
            ends = fn(cfg, a)
            seconds[name].append(ends[-1] - ends[0])
            steps[name] += [t1 - t0 for t0, t1 in zip(ends, ends[1:])]
            if device.type == "cuda":
                mem[name] = max(mem[name], torch.cuda.max_memory_allocated())
    pair_ratios = sorted(h / e for h, e in zip(seconds["hand"], seconds["engine"]))
    spread = {"pair_ratio_median": round(statistics.median(pair_ratios), 4),
              "pair_ratio_min": round(pair_ratios[0], 4), "pair_ratio_max": round(pair_ratios[-1], 4),
              "step_median_ratio": round(statistics.median(steps["hand"]) / statistics.median(steps["engine"]), 4)}
    return (summarize(min(seconds["hand"]), mem["hand"], cfg, a),
            summarize(min(seconds["engine"]), mem["engine"], cfg, a), spread)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="cpu-tiny", choices=PRESETS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default", choices=CHOICES["optimization.compile_mode"])
    p.add_argument("--attention", default="auto", choices=CHOICES["model.attention_backend"],
                   help="model.attention_backend (the SDPA kernel tried first), for both loops")
    p.add_argument("--moe", action="store_true")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data-workers", type=int, default=0)
    p.add_argument("--data", choices=["synthetic", "tokens"], default="synthetic",
                   help="the engine's data: the synthetic Markov generator, or a token file (memory-mapped "
                        "windows, as real training reads)")
    p.add_argument("--hand-data", choices=["pregenerated", "sampled"], default="pregenerated",
                   help="hand loop trains on 4 batches made up front (the engine's data cost shows in the "
                        "ratio), or samples each batch from the same dataset, as the engine does")
    p.add_argument("--profile", metavar="DIR",
                   help="afterwards, trace two engine steps into DIR/profiler (not timed)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc malloc as is (the engine's CPU default keeps freed memory)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(a, tmp)
        if a.device == "cpu" and cfg.optimization.keep_host_memory:
            keep_freed_host_memory()  # up front, so that both loops run under the same allocator
        hand, engine, spread = measure_side_by_side(cfg, a)
        profile = profile_engine(cfg, a) if a.profile else None
    result = {
        "preset": a.preset, "device": a.device, "amp": a.amp, "compile": a.compile,
        "compile_mode": a.compile_mode if a.compile else None, "attention": a.attention, "moe": a.moe,
        "experts": a.experts if a.moe else None, "top_k": a.top_k if a.moe else None,
        "batch": cfg.training.batch_size, "seq_len": cfg.model.seq_len,
        "keep_host_memory": cfg.optimization.keep_host_memory, "data": a.data, "hand_data": a.hand_data,
        "hand": hand, "engine": engine, "ratio": round(engine["tokens_per_s"] / hand["tokens_per_s"], 4),
        **spread, "repeats": a.repeats,
    }
    if profile is not None:
        result["profile"] = profile
    if a.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    result["torch"] = torch.__version__
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
