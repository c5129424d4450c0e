"""A real corpus on every machine: Python standard-library source files, copied to a test folder."""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import numpy as np

STDLIB = os.path.dirname(os.__file__)


def stdlib_corpus(folder: Path, count: int = 36, max_bytes: int = 40_000) -> list[Path]:
    """`count` small stdlib modules (the first by name under `max_bytes`), copied into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    picked = [p for p in sorted(glob.glob(os.path.join(STDLIB, "*.py"))) if 2_000 < os.path.getsize(p) < max_bytes]
    out = []
    for src in picked[:count]:
        dst = folder / os.path.basename(src)
        shutil.copyfile(src, dst)
        out.append(dst)
    return out


def prepare_args(inputs, out, *extra) -> list[str]:
    args = []
    for spec in inputs:
        args += ["--input", str(spec)]
    return args + ["--out", str(out), "--progress", "off", *map(str, extra)]


def split_tokens(folder: Path, split: str, manifest: dict) -> np.ndarray:
    shards = manifest["splits"][split]["shards"]
    parts = [np.fromfile(folder / s["file"], dtype=manifest["dtype"]) for s in shards]
    return np.concatenate(parts) if parts else np.zeros(0, manifest["dtype"])
