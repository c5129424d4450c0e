"""`ProgressBar`: a one-line live view for interactive runs; silent when stderr is not a terminal."""
from __future__ import annotations

import sys
import time

from raytrain_llm.core.callbacks.base import Callback


class ProgressBar(Callback):
    def __init__(self, enabled: bool | None = None, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self._t0 = 0.0
        self._start_step = 0
        self._last = ""

    def on_train_start(self, engine) -> None:
        self._t0, self._start_step = time.perf_counter(), engine.global_step

    def on_log(self, engine, record) -> None:
        if record.get("split") == "train":
            self._last = f"loss {record.get('loss', float('nan')):.4f}"
        elif "val/loss" in record:
            self._last += f" val {record['val/loss']:.4f}"

    def on_batch_end(self, engine, step, outputs) -> None:
        if not self.enabled or not engine.dist.is_main:
            return
        total = max(engine.total_steps, 1)
        done = min(step / total, 1.0)
        bar = "#" * int(done * self.width)
        rate = (step - self._start_step) / max(time.perf_counter() - self._t0, 1e-9)
        self.stream.write(f"\r[{bar:<{self.width}}] {step}/{total} ep {engine.epoch} {rate:.1f} it/s {self._last} ")
        self.stream.flush()

    def on_train_end(self, engine) -> None:
        if self.enabled and engine.dist.is_main:
            self.stream.write("\n")
            self.stream.flush()
