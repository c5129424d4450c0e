"""`python -m raytrain_llm.evaluate --checkpoint PATH [--data FILE|DIR]`: loss and perplexity of a
trained model, the numbers the run's validation reports on the same data.

--data: a token file (.bin in the run's data.token_dtype, or .npy), a prepared directory, or a
text file (tokenized with the model's tokenizer, or as bytes for a byte-level model); left out,
the run's own validation split, limited as the run limited it (training.limit_val_batches) unless
--limit-batches says otherwise, so the loss is the run's last val/loss. Prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from raytrain_llm.inference.command import Parser, positive_int, run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m raytrain_llm.evaluate", description="Loss and perplexity of a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="run folder (best, else latest checkpoint) or checkpoint folder")
    p.add_argument("--data", help="token file (.bin/.npy), prepared directory or text file; default: the run's "
                                  "validation data")
    p.add_argument("--batch-size", type=positive_int, help="default: the run's training.batch_size")
    p.add_argument("--limit-batches", type=positive_int, default=0,
                   help="evaluate this many batches only; default: all of --data, or without --data the run's "
                        "training.limit_val_batches")
    p.add_argument("--token-dtype", choices=("uint8", "uint16", "uint32", "int32", "int64"),
                   help="dtype of a raw .bin file (default: the run's data.token_dtype)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p


def main(args: argparse.Namespace) -> int:
    from raytrain_llm.inference.checkpoint_source import load_trained_model
    from raytrain_llm.inference.evaluation import evaluate

    trained = load_trained_model(args.checkpoint, args.device)
    if args.token_dtype:
        trained.config.data.token_dtype = args.token_dtype
    # Without --data the default is the batches the run's own validation read (0: all of them).
    limit = args.limit_batches or (0 if args.data else trained.config.training.limit_val_batches)
    metrics = evaluate(trained, args.data, args.batch_size, limit)
    report = {"checkpoint": trained.checkpoint_dir, "data": args.data or "the run's validation split",
              **{k.removeprefix("val/"): v for k, v in metrics.items()}}  # loss, perplexity, tokens, ...
    print(json.dumps(report))
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
