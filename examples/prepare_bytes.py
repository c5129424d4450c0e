"""Token files from text, one token per byte (vocab 256): real data without a tokenizer.

    python examples/prepare_bytes.py README.md docs/*.md --out runs/bytes
    python train.py --task lm --set model.vocab_size=256 \
        --set data.train_tokens=runs/bytes/train.bin --set data.val_tokens=runs/bytes/val.bin

The files are raw uint16 arrays (nanoGPT's train.bin/val.bin layout), so a corpus tokenized
with any tokenizer (e.g. tiktoken's GPT-2 BPE, vocab 50257) can be written the same way with
`raytrain_llm.data.token_file.write_tokens`.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from raytrain_llm.data.token_file import write_tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="text files, concatenated in order")
    parser.add_argument("--out", required=True, help="folder for train.bin and val.bin")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the tail that becomes val.bin")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must be in (0, 1)")
    try:
        data = b"".join(open(path, "rb").read() for path in args.files)
    except OSError as exc:
        parser.exit(2, f"error: cannot read {exc.filename}: {exc.strerror}\n")
    tokens = np.frombuffer(data, dtype=np.uint8)
    split = int(len(tokens) * (1 - args.val_fraction))
    os.makedirs(args.out, exist_ok=True)
    for name, part in (("train.bin", tokens[:split]), ("val.bin", tokens[split:])):
        write_tokens(os.path.join(args.out, name), part)
    print(f"{split:,} train and {len(tokens) - split:,} val tokens in {args.out} (vocab 256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
