"""`python -m raytrain_llm.consolidate --checkpoint PATH --out FILE`: a model's full weights as
one file, from a sharded checkpoint (its DCP shards reassembled on this process, through the
safe reader) or from a full one.

FILE.safetensors: a safetensors file; FILE.pt: a plain state dict for
torch.load(FILE, weights_only=True). Names as the model's state_dict() (no `module.` or
`_orig_mod.` prefixes). Nothing is built, so any task's model works; for a folder that
sample/evaluate read back, with config and tokenizer, use `raytrain_llm.export`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from raytrain_llm.inference.command import Parser, run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m raytrain_llm.consolidate",
               description="Write a checkpoint's full model weights to one .pt or .safetensors file.")
    p.add_argument("--checkpoint", required=True, help="run folder (best, else latest checkpoint) or checkpoint folder")
    p.add_argument("--out", required=True, help="the file to write, ending .pt or .safetensors (must not exist)")
    return p


def main(args: argparse.Namespace) -> int:
    from raytrain_llm.inference.checkpoint_source import read_checkpoint, resolve_checkpoint
    from raytrain_llm.inference.weights_file import check_out, write_weights

    out = check_out(args.out)  # before the (possibly long) read
    checkpoint_dir = resolve_checkpoint(args.checkpoint)
    _, weights = read_checkpoint(checkpoint_dir)
    write_weights(weights, out)
    values = sum(v.numel() for v in weights.values() if hasattr(v, "numel"))
    print(f"wrote {len(weights)} tensors ({values:,} values) of {checkpoint_dir} to {out}")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
