"""Decoding speed: our KV-cached generation vs recomputing the whole sequence each step, and vs
`transformers` `generate` on the same weights exported to the Hugging Face layout.

    PYTHONPATH=. python benchmarks/generate_bench.py [--new-tokens 256] [--repeats 3] \
        [--out benchmarks/results/cpu2_generate_bench.jsonl]

Model: the CPU benchmark shape of engine_overhead.py's cpu-small (vocab 2048, d 128, 4 layers,
4 heads) with seq_len 512 so that 256 new tokens fit; dense is the GPT-2 shape (learned
positions, LayerNorm, GELU: exported as GPT-2), MoE is 4 SwiGLU experts top-2 with RoPE and
RMSNorm (exported as Mixtral). Batch 1, a 16-token prompt, greedy, no end-of-document token (all
256 tokens are generated). The three ways run alternately, `--repeats` times each; each line
reports the median tokens/s and the ratios, and whether the three produced the same tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raytrain_llm.core.config import Config, ModelConfig  # noqa: E402
from raytrain_llm.data.text_codec import TokenIdCodec  # noqa: E402
from raytrain_llm.inference.checkpoint_source import TrainedModel  # noqa: E402
from raytrain_llm.inference.hf_export.writer import export  # noqa: E402
from raytrain_llm.models import GPT  # noqa: E402
from raytrain_llm.models.generation import SamplingConfig, generate  # noqa: E402

SHAPE = {"vocab_size": 2048, "d_model": 128, "n_layers": 4, "n_heads": 4, "seq_len": 512}
MODELS = {
    "dense": {"position": "learned", "norm": "layernorm", "mlp_type": "gelu"},
    "moe": {"mlp_type": "swiglu", "use_moe": True, "num_experts": 4, "top_k": 2},
}


def timed(fn) -> tuple[float, list[int]]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def bench(name: str, a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = GPT(ModelConfig(**SHAPE, **MODELS[name])).eval()
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, a.prompt_len), generator=torch.Generator().manual_seed(1))
    s = SamplingConfig(max_new_tokens=a.new_tokens, temperature=0)
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        export(TrainedModel(model, Config(task="lm", model=model.cfg), "", None, None), TokenIdCodec(2048),
               os.path.join(tmp, "hf"), "hf")
        hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "hf")).eval()
    ways = {
        "cached": lambda: generate(model, prompt.tolist(), s)[0],
        "recompute": lambda: generate(model, prompt.tolist(), s, use_cache=False)[0],
        "hf_generate": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                           max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                           pad_token_id=0)[0, a.prompt_len:].tolist(),
    }
    with torch.no_grad():
        for fn in ways.values():  # warm-up: first-call dispatch and allocations
            fn()
        times: dict[str, list[float]] = {k: [] for k in ways}
        outputs = {}
        for _ in range(a.repeats):
            for key, fn in ways.items():
                seconds, outputs[key] = timed(fn)
                times[key].append(seconds)
    tps = {k: a.new_tokens / statistics.median(v) for k, v in times.items()}
    return {"model": name, "new_tokens": a.new_tokens, "prompt_len": a.prompt_len, "batch": 1,
            "threads": torch.get_num_threads(), **{f"{k}_tokens_per_s": round(v, 1) for k, v in tps.items()},
            "cached_over_recompute": round(tps["cached"] / tps["recompute"], 2),
            "cached_over_hf": round(tps["cached"] / tps["hf_generate"], 2),
            "same_tokens_cached_recompute": outputs["cached"] == outputs["recompute"],
            "same_tokens_cached_hf": outputs["cached"] == outputs["hf_generate"],
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, 1-min load {os.getloadavg()[0]:.1f}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared box)")
    p.add_argument("--models", default="dense,moe")
    p.add_argument("--out", help="append the result lines to this .jsonl")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for name in a.models.split(","):
        line = json.dumps(bench(name, a))
        print(line, flush=True)
        if a.out:
            with open(a.out, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
