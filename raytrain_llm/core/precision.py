"""Mixed precision: autocast context and GradScaler from `optimization.amp`."""
from __future__ import annotations

import contextlib

import torch

from raytrain_llm.core.errors import UsageError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """bf16 autocast keeps fp32 master weights and needs no scaler; fp16 needs a GradScaler."""

    def __init__(self, amp: str, device: torch.device):
        if amp == "fp16" and device.type != "cuda":
            # The config check only sees training.device=cpu; `auto` resolves to CPU on a machine
            # without CUDA, where fp16 autocast is slow or unsupported and GradScaler is pointless.
            raise UsageError(f"optimization.amp: fp16 needs a CUDA device, but this run trains on "
                             f"{device.type} (no CUDA device here, or distributed.use_gpu=false on Ray); "
                             f"use bf16 or none")
        self.amp, self.device = amp, device
        self.dtype = _DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def skip(self) -> None:
        if self.scaler:
            self.scaler.update()


def configure_matmul(tf32: bool) -> None:
    """TF32 tensor cores for fp32 matmuls (Ampere+): ~free speed, fp32 range."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def to_device(batch, device: torch.device, non_blocking: bool = False):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch
