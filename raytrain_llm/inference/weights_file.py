"""One file of a model's weights: `.pt` (a plain state dict for torch.load(weights_only=True))
or `.safetensors`, written under a temporary name and renamed into place, never over a file."""
from __future__ import annotations

import os
from typing import Any

import torch

from raytrain_llm.core.errors import UsageError

SUFFIXES = (".pt", ".safetensors")


def check_out(out: str) -> str:
    """`out` as an absolute path a weights file may be written to; UsageError otherwise."""
    out = os.path.abspath(out)
    if not out.endswith(SUFFIXES):
        raise UsageError(f"--out {out}: name the file .pt (a torch state dict) or .safetensors")
    if os.path.lexists(out):
        raise UsageError(f"--out {out} already exists: choose a new file")
    make_parent_folder(out)
    return out


def make_parent_folder(out: str) -> str:
    """The folder `--out` goes into, created if missing; UsageError naming it if it cannot be."""
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot create {parent}: {exc.strerror}") from None
    return parent


def write_weights(weights: dict[str, Any], out: str) -> None:
    """Writes `weights` ({name: tensor}) to `out` (see check_out), as its suffix says."""
    out = check_out(out)
    others = [k for k, v in weights.items() if not torch.is_tensor(v)]
    if others and out.endswith(".safetensors"):
        raise UsageError(f"--out {out}: safetensors holds tensors only, and the weights hold {others[0]!r} "
                         f"(a {type(weights[others[0]]).__name__}): write a .pt file")
    tmp = os.path.join(os.path.dirname(out), f".tmp-{os.path.basename(out)}-{os.getpid()}")
    try:
        if out.endswith(".safetensors"):
            from safetensors.torch import save_file

            # Tied weights share storage, which safetensors refuses: each tensor gets its own copy.
            save_file({k: v.detach().cpu().clone().contiguous() for k, v in weights.items()}, tmp,
                      metadata={"format": "pt"})
        else:
            with open(tmp, "wb") as fh:
                torch.save(weights, fh)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
