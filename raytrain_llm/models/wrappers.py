"""`unwrap`: the model itself under the wrappers training puts around it."""
from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (`.module`) and/or torch.compile (`._orig_mod`), in either order."""
    for _ in range(3):
        model = getattr(model, "module", model)
        model = getattr(model, "_orig_mod", model)
    return model
