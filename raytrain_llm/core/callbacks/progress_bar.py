"""`ProgressBar`: a one-line live view for interactive runs. Without a terminal (a batch job,
`ray job submit`, output piped to a file) it logs a progress line instead, at most every
`log_every_s` seconds, and every validation: the console and logs/rank0.log then show how a
run is going without reading metrics.jsonl."""
from __future__ import annotations

import sys
import time
from typing import Callable

from raytrain_llm.core.callbacks.base import Callback


class ProgressBar(Callback):
    def __init__(self, enabled: bool | None = None, stream=None, width: int = 30, log_every_s: float = 30.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.stream = stream or sys.stderr
        self.clock = clock  # seconds, monotonic: the line cadence, the rate and the ETA
        self.enabled = self.stream.isatty() if enabled is None else enabled
        # Lines only when the bar was left to decide (progress_bar=auto) and found no terminal.
        self.log_lines = enabled is None and not self.enabled
        self.width, self.log_every_s = width, log_every_s
        self._t0 = 0.0
        self._start_step = 0
        self._last = ""
        self._logged_at = float("-inf")

    def on_train_start(self, engine) -> None:
        self._t0, self._start_step = self.clock(), engine.global_step

    def on_log(self, engine, record) -> None:
        if record.get("split") == "train":
            self._last = f"loss {record.get('loss', float('nan')):.4f}"
        elif "val/loss" in record:
            self._last += f" val {record['val/loss']:.4f}"
        if self.log_lines and engine.dist.is_main:
            self._log_line(engine, record)

    def _log_line(self, engine, record) -> None:
        step, total = record.get("step", engine.global_step), max(engine.total_steps, 1)
        if record.get("split") == "train":
            now = self.clock()
            if now - self._logged_at < self.log_every_s and step < total:
                return
            self._logged_at = now
            parts = [f"loss {record['loss']:.4f}" if "loss" in record else "",
                     f"lr {record['lr']:.3g}" if "lr" in record else "",
                     f"{record['tokens_per_s']:,.0f} tok/s" if record.get("tokens_per_s") else "",
                     f"mfu {record['mfu']:.1%}" if record.get("mfu") else "",
                     self._eta(step, total)]
        else:
            parts = [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val/") and isinstance(v, float)]
        engine.logger.info(f"step {step}/{total} epoch {record.get('epoch', engine.progress.epoch_number())} "
                           + " ".join(p for p in parts if p))

    def _eta(self, step: int, total: int) -> str:
        """Time left at this run's pace so far (validation and saves included)."""
        done = step - self._start_step
        if done <= 0 or step >= total:
            return ""
        left = (self.clock() - self._t0) / done * (total - step)
        return f"eta {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"

    def on_batch_end(self, engine, step, outputs) -> None:
        if not self.enabled or not engine.dist.is_main:
            return
        total = max(engine.total_steps, 1)
        done = min(step / total, 1.0)
        bar = "#" * int(done * self.width)
        rate = (step - self._start_step) / max(self.clock() - self._t0, 1e-9)
        self.stream.write(f"\r[{bar:<{self.width}}] {step}/{total} ep {engine.progress.epoch_number()} {rate:.1f} it/s {self._last} ")
        self.stream.flush()

    def on_train_end(self, engine) -> None:
        if self.enabled and engine.dist.is_main:
            self.stream.write("\n")
            self.stream.flush()
