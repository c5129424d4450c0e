"""`python -m raytrain_llm.sample --checkpoint PATH --prompt TEXT`: text from a trained model.

PATH is a run folder (its best checkpoint, else the latest) or a checkpoint folder. Prompts
go through the model's tokenizer (see data/text_codec.py); each prompt is sampled
--num-samples times, all of them in one KV-cached batch.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from raytrain_llm.core.errors import UsageError
from raytrain_llm.inference.command import Parser, positive_int, run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m raytrain_llm.sample", description="Generate text from a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="run folder (best, else latest checkpoint) or checkpoint folder")
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    p.add_argument("--prompt-file", action="append", default=[], metavar="F",
                   help="a file whose whole text is one prompt (repeatable)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: keep the smallest set of mass >= p (1: all)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (same seed, same samples)")
    p.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0 (got {args.temperature})")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (got {args.top_k})")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1] (got {args.top_p})")


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    for path in args.prompt_file:
        try:
            with open(path, encoding="utf-8") as fh:
                prompts.append(fh.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompt-file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not prompts:
        raise UsageError("give a prompt: --prompt TEXT or --prompt-file F")
    return prompts


def encode_prompts(codec, texts: list[str], vocab_size: int) -> list[list[int]]:
    out = []
    for text in texts:
        ids = codec.encode(text)
        if not ids:
            if codec.eod_id is None:
                raise UsageError("an empty prompt needs an end-of-document token to start from, and this model's "
                                 f"{codec.kind} has none: give at least one token")
            ids = [codec.eod_id]  # generation starts a new document
        if max(ids) >= vocab_size:
            raise UsageError(f"the tokenizer gave id {max(ids)}, outside model.vocab_size ({vocab_size}): "
                             "the tokenizer is not the model's")
        out.append(ids)
    return out


def main(args: argparse.Namespace) -> int:
    check_args(args)
    texts = read_prompts(args)
    import torch

    from raytrain_llm.data.text_codec import codec_for
    from raytrain_llm.inference.checkpoint_source import load_trained_model
    from raytrain_llm.models.generation import SamplingConfig, generate, max_new_tokens

    trained = load_trained_model(args.checkpoint, args.device)
    codec = codec_for(trained.config, trained.checkpoint_dir, trained.run_dir)
    prompts = encode_prompts(codec, texts, trained.config.model.vocab_size)
    seq_len = trained.config.model.seq_len
    if max(len(p) for p in prompts) >= seq_len:
        raise UsageError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room in the model's "
                         f"context of model.seq_len={seq_len} tokens")
    steps = max_new_tokens(trained.model, prompts, args.max_new_tokens)
    if steps < args.max_new_tokens:
        print(f"note: at most {steps} new tokens fit the model's context (model.seq_len={seq_len})", file=sys.stderr)
    batch = [p for p in prompts for _ in range(args.num_samples)]
    s = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, codec.eod_id)
    generator = torch.Generator(device=trained.model.tok_emb.weight.device).manual_seed(args.seed)
    outputs = generate(trained.model, batch, s, generator)
    print(f"# {trained.checkpoint_dir} ({codec.kind}), seed {args.seed}", file=sys.stderr)
    for i, (prompt, new) in enumerate(zip(batch, outputs)):
        sys.stdout.write(f"--- sample {i % args.num_samples + 1} of prompt {i // args.num_samples + 1}\n")
        sys.stdout.write(codec.decode(prompt + new) + "\n")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
