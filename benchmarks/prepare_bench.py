"""Corpus preparation throughput and the training data wait on prepared shards, side by side.

    python benchmarks/prepare_bench.py [--mb 24] [--vocab 2048] [--parts local,ray,train]

Corpus: Python standard-library sources (on every machine), the first --mb MB of *.py files by
path. A tokenizer is trained first (not timed). Then, one JSON line each:
- `bare`: a bare `tokenizers` loop: read every file, `encode_batch` in batches of 64 documents
  (the library's own threads on all cores), no output; run before and after `local`;
- `local`: `python -m raytrain_llm.prepare` in-process with --workers = CPU count (read, parse,
  tokenize, split, shards, manifest), with `ratio` = its MB/s over the mean of the two bare loops' (goal >= 0.9);
- `ray1` / `ray2`: the same with --launcher ray on a local Ray of 2 CPUs, 1 and 2 concurrent tasks
  (Ray started before timing), with `ratio` = ray2 / ray1 (goal >= 1.6), each pair followed by `pool1` /
  `pool2`: the local path with 1 and 2 processes (no Ray), the same scaling on the same cores as a
  yardstick; `driver_cpu_s` is the CPU time of the driver process (local: it receives the ids and writes
  the shards; ray: the workers write, the driver reads counts and lays out the shards). Ray starts its
  workers at niceness 15 (`RAY_worker_niceness`): on a machine shared with other work, run with
  `RAY_worker_niceness=0` to compare Ray with the pool (niceness 0) on equal terms;
- `train`: the lm task on the prepared shards (the cpu-small model of engine_overhead.py:
  d_model 128, 4 layers, seq 128, batch 8, vocabulary --vocab), with the median `data_wait_share`
  of its logged windows (goal <= 0.02).
Each timed preparation writes to a fresh folder (no rerun skipping). Timings vary with the load of
the machine: compare ratios measured in one run.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raytrain_llm.data.tokenizer import TextTokenizer  # noqa: E402
from raytrain_llm.prepare.pipeline import PrepareOptions, prepare  # noqa: E402

STDLIB = os.path.dirname(os.__file__)


def corpus(mb: float) -> list[str]:
    files, total = [], 0
    for path in sorted(glob.glob(os.path.join(STDLIB, "**", "*.py"), recursive=True)):
        try:
            with open(path, "rb") as fh:
                fh.read().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test files are deliberately not UTF-8: keep the corpus clean for the bare loop
        files.append(path)
        total += os.path.getsize(path)
        if total >= mb * 1e6:
            break
    return files


def bare_loop(files: list[str], tokenizer_path: str, batch: int = 64) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    t0 = time.perf_counter()
    tokens = nbytes = 0
    for i in range(0, len(files), batch):
        texts = []
        for path in files[i:i + batch]:
            with open(path, "rb") as fh:
                data = fh.read()
            nbytes += len(data)
            texts.append(data.decode("utf-8"))
        tokens += sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "mb": nbytes / 1e6}


def run_prepare(files: list[str], tokenizer_path: str, out: str, **kw) -> dict:
    options = PrepareOptions(inputs=files, out=out, tokenizer=tokenizer_path, val_fraction=0.01, progress=False, **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    manifest = prepare(options, log=lambda _: None)
    seconds, driver_cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(out)
    tokens = sum(manifest["splits"][s]["tokens"] for s in ("train", "val")) - manifest["documents"]  # without EODs
    return {"seconds": seconds, "tokens": tokens, "mb": manifest["text_bytes"] / 1e6, "manifest": manifest,
            "driver_cpu_s": round(driver_cpu, 2)}


def line(name: str, r: dict, **extra) -> dict:
    out = {"bench": name, "seconds": round(r["seconds"], 3), "mb": round(r["mb"], 2),
           "mb_per_s": round(r["mb"] / r["seconds"], 3), "tokens_per_s": round(r["tokens"] / r["seconds"]),
           "cpus": os.cpu_count(), **extra}
    print(json.dumps(out), flush=True)
    return out


def train_wait_share(data_dir: str, run_dir: str, vocab: int, steps: int) -> dict:
    import torch

    from raytrain_llm.core.config_loader import load_config
    from raytrain_llm.launchers.worker import train_worker

    sets = {"distributed.launcher": "local", "logging.progress_bar": "off", "logging.tensorboard": "false",
            "logging.dir": run_dir, "logging.log_every_n_steps": "10", "training.device": "cpu",
            "model.vocab_size": "0", "model.d_model": "128", "model.n_layers": "4", "model.n_heads": "4",
            "model.seq_len": "128", "training.batch_size": "8", "training.max_steps": str(steps),
            "training.epochs": "100", "training.validate": "false", "checkpoint.enabled": "false",
            "data.train_tokens": data_dir}
    config = load_config(None, [f"{k}={v}" for k, v in sets.items()], environ={}, task="lm")
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    train_worker(config)
    seconds = time.perf_counter() - t0
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        records = [json.loads(x) for x in fh if x.strip()]
    shares = [r["data_wait_share"] for r in records if r.get("split") == "train" and "data_wait_share" in r][1:]
    out = {"bench": "train", "steps": steps, "seconds": round(seconds, 2), "vocab": vocab,
           "data_wait_share_median": round(statistics.median(shares), 4), "data_wait_share_max": round(max(shares), 4),
           "windows": len(shares), "cpus": os.cpu_count()}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=24.0)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--parts", default="local,ray,train")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--repeat", type=int, default=1, help="ray1/ray2 pairs, interleaved")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    files = corpus(args.mb)
    work = tempfile.mkdtemp(prefix="prepare_bench-")
    try:
        tok_path = os.path.join(work, "tokenizer.json")
        sample = []
        for path in files[: max(1, len(files) // 4)]:
            with open(path, encoding="utf-8") as fh:
                sample.append(fh.read())
        TextTokenizer.train(iter(sample), args.vocab).save(tok_path)
        print(json.dumps({"bench": "corpus", "files": len(files), "mb": round(sum(map(os.path.getsize, files)) / 1e6, 2),
                          "vocab": args.vocab}), flush=True)
        if "local" in parts:
            bare_loop(files[:50], tok_path)  # warm the page cache and the library
            bare = line("bare", bare_loop(files, tok_path))
            local = run_prepare(files, tok_path, os.path.join(work, "local"), workers=os.cpu_count() or 1)
            bare2 = line("bare_again", bare_loop(files, tok_path))  # the bare loop before and after: load drifts
            line("local", local, ratio=round((local["mb"] / local["seconds"]) / statistics.mean(
                [bare["mb_per_s"], bare2["mb_per_s"]]), 3))
        if "ray" in parts:
            import ray

            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
            run_prepare(files[:20], tok_path, os.path.join(work, "warm"), launcher="ray", workers=2)  # workers up
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # pool1: one thread, as one Ray task has
            for _ in range(args.repeat):  # interleaved: load drifts between calls
                for name, launcher in (("ray", "ray"), ("pool", "local")):  # pool: the same scaling without Ray
                    one = run_prepare(files, tok_path, os.path.join(work, "r1"), launcher=launcher, workers=1)
                    two = run_prepare(files, tok_path, os.path.join(work, "r2"), launcher=launcher, workers=2)
                    r1 = line(f"{name}1", one, driver_cpu_s=one["driver_cpu_s"])
                    line(f"{name}2", two, ratio=round((two["mb"] / two["seconds"]) / r1["mb_per_s"], 3),
                         driver_cpu_s=two["driver_cpu_s"], load=round(os.getloadavg()[0], 2))
            ray.shutdown()
        if "train" in parts:
            data = os.path.join(work, "data")
            prepare(PrepareOptions(inputs=files, out=data, tokenizer=tok_path, val_fraction=0.01, progress=False,
                                   shard_tokens=1 << 20), log=lambda _: None)
            train_wait_share(data, os.path.join(work, "run"), args.vocab, args.train_steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
