"""`PerformanceMonitor`: step time, data wait, throughput, memory, TFLOP/s and MFU.

Times come from host clocks. On CUDA the step time is only exact where the engine already
synchronises (it reads the loss once per optimizer step), so no extra syncs are added here.
"""
from __future__ import annotations

import contextlib
import os
import resource
import time
from typing import Callable, Optional

import torch

from raytrain_llm.core.env_settings import env_setting

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched by substring of the device name.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A10G", 70.0), ("A10", 125.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
    ("V100", 125.0), ("T4", 65.0),
)


def peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    override = env_setting("RAYTRAIN_PEAK_TFLOPS")  # a bad value is a ConfigError (exit 2)
    if override is not None:
        return override
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def rss_bytes() -> int:
    """Current resident memory of this process (peak on platforms without /proc)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PerformanceMonitor:
    def __init__(self, device: torch.device, flops_per_token: Optional[float] = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.flops_per_token = flops_per_token
        self.peak = peak_tflops(device)
        self.clock = clock  # seconds, monotonic; every time below is read from it
        self._window_start = self.clock()
        self._data_wait = 0.0
        self._steps = 0
        self._samples = 0
        self._tokens = 0
        self._data_t0 = 0.0
        self._paused = 0.0
        self._pause_start: Optional[float] = None  # inside paused(): when the pause (or its window) began
        self.peak_rss = 0

    # --- timing hooks called by the engine ---
    def data_start(self) -> None:
        self._data_t0 = self.clock()

    def data_end(self) -> None:
        self._data_wait += self.clock() - self._data_t0

    def step_done(self, samples: int, tokens: Optional[int]) -> None:
        self._steps += 1
        self._samples += samples
        self._tokens += tokens or 0

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (validation, checkpoints) is not training time: it leaves the window."""
        self._pause_start = self.clock()
        try:
            yield
        finally:
            self._paused += self.clock() - self._pause_start
            self._pause_start = None

    def reset_window(self) -> None:
        now = self.clock()
        self._window_start = now
        self._data_wait = self._paused = 0.0
        self._steps = self._samples = self._tokens = 0
        if self._pause_start is not None:
            self._pause_start = now  # a window that opens inside a pause loses only the rest of it

    def summary(self) -> dict[str, float]:
        """Averages over the steps since the last call; resets the window."""
        elapsed = max(self.clock() - self._window_start - self._paused, 1e-9)
        steps = max(self._steps, 1)
        out = {
            "step_time": elapsed / steps,
            "data_wait": self._data_wait / steps,
            "data_wait_share": self._data_wait / elapsed,
            "samples_per_s": self._samples / elapsed,
        }
        if self._tokens:
            tps = self._tokens / elapsed
            out["tokens_per_s"] = tps
            if self.flops_per_token:
                tflops = self.flops_per_token * tps / 1e12
                out["tflops"] = tflops
                if self.peak:
                    out["mfu"] = tflops / self.peak
        out.update(self.memory())
        self.reset_window()
        return out

    def memory(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {"memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
        self.peak_rss = max(self.peak_rss, rss_bytes())
        return {"memory_gib": self.peak_rss / 2**30}
