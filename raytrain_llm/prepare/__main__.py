"""`python -m raytrain_llm.prepare`: text files -> tokenizer + token shards for `lm` training.

    python -m raytrain_llm.prepare --input 'corpus/*.txt' --tokenizer train:8192 --out data/corpus
    python -m raytrain_llm.prepare --input data.jsonl.zst --format jsonl --text-field text \\
        --tokenizer tokenizer.json --out data/corpus --launcher ray

Exit status: 0 done (or already done), 2 a usage mistake (one line naming it; nothing written),
1 any other failure.
"""
from __future__ import annotations

import argparse
import sys

from raytrain_llm.core.command_exit import run_command
from raytrain_llm.prepare.documents import FORMATS
from raytrain_llm.prepare.pipeline import PrepareOptions, prepare


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raytrain_llm.prepare",
        description="Tokenize a text corpus into token shards (manifest.json, <split>-NNNNN.bin, tokenizer.json) "
                    "that data.train_tokens reads. Rerunning the same command does nothing once it has finished.")
    p.add_argument("--input", action="append", required=True, metavar="PATH_OR_GLOB",
                   help="a file, a glob (quote it) or a pyarrow-filesystem URI (s3://, gs://, file://); repeatable. "
                        "Files are read in the order given, a glob's matches sorted by name; .gz and .zst are "
                        "decompressed")
    p.add_argument("--format", default="text", choices=FORMATS,
                   help="text: each file is one document; jsonl: one JSON object per line; parquet: one row per "
                        "document (default: text)")
    p.add_argument("--text-field", default="text", help="the document's field (jsonl) or column (parquet)")
    p.add_argument("--tokenizer", required=True, metavar="train:VOCAB|tokenizer.json",
                   help="train:VOCAB trains a byte-level BPE of VOCAB tokens on the training documents; "
                        "or the path of an existing Hugging Face tokenizer.json")
    p.add_argument("--out", required=True,
                   help="the folder to create (written to OUT.tmp-prepare, then renamed); a path, not a URI: with "
                        "--launcher ray on a cluster, on storage every node mounts at the same path")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of documents in the val split, chosen by a hash of (seed, file, record) (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--shard-tokens", type=int, default=1 << 26,
                   help="most tokens per shard; shards hold whole documents (default 67108864)")
    p.add_argument("--eod-token", default="<|endoftext|>", help="end-of-document token appended after each document")
    p.add_argument("--tokenizer-train-bytes", type=int, default=1 << 30,
                   help="train the tokenizer on at most this many bytes of text (default 1 GiB)")
    p.add_argument("--launcher", default="local", choices=("local", "ray"),
                   help="local: processes on this machine, this process writes the shards; ray: Ray tasks on a "
                        "local Ray or the cluster in --ray-address / RAY_ADDRESS tokenize and write the shards "
                        "(the output is the same byte for byte)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes (local) or concurrent Ray tasks (ray); 0: this machine's CPU count")
    p.add_argument("--ray-address", default="", help="Ray cluster to use (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress line on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: _prepare(build_parser().parse_args(argv)),
                       interrupted="interrupted: nothing was published; rerun the same command to finish")


def _prepare(args: argparse.Namespace) -> int:
    prepare(PrepareOptions(
        inputs=args.input, out=args.out, tokenizer=args.tokenizer, fmt=args.format, text_field=args.text_field,
        val_fraction=args.val_fraction, seed=args.seed, shard_tokens=args.shard_tokens, eod_token=args.eod_token,
        tokenizer_train_bytes=args.tokenizer_train_bytes, launcher=args.launcher, workers=args.workers,
        ray_address=args.ray_address, progress={"auto": None, "on": True, "off": False}[args.progress]))
    return 0

if __name__ == "__main__":
    sys.exit(main())
