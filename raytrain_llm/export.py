"""`python -m raytrain_llm.export --checkpoint PATH --out DIR [--format hf|safetensors]`.

hf: a folder that `transformers`' AutoModelForCausalLM / AutoTokenizer .from_pretrained load
without custom code (GPT-2, Llama, Mixtral or Qwen2-MoE, whichever computes exactly what the
model computes; a model none of them expresses is refused naming the config key).
safetensors: our own state dict with the run's config.yaml beside it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from raytrain_llm.inference.command import Parser, run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m raytrain_llm.export", description="Export a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="run folder (best, else latest checkpoint) or checkpoint folder")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--format", choices=("hf", "safetensors"), default="hf",
                   help="hf: Hugging Face transformers layout (default); safetensors: our state dict + config.yaml")
    return p


def main(args: argparse.Namespace) -> int:
    from raytrain_llm.data.text_codec import codec_for
    from raytrain_llm.inference.checkpoint_source import load_trained_model
    from raytrain_llm.inference.hf_export.writer import export

    trained = load_trained_model(args.checkpoint, "cpu")
    codec = codec_for(trained.config, trained.checkpoint_dir, trained.run_dir)
    what = export(trained, codec, args.out, args.format)
    print(f"exported {trained.checkpoint_dir} as {what} to {args.out}"
          + (f" (tokenizer: {codec.kind})" if args.format == "hf" else ""))
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
