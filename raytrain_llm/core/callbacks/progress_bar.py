"""`ProgressBar`: a one-line live view when the console is a terminal; progress lines otherwise.

On a terminal (in-process and spawn: stderr; Ray: the driver's console, which rank 0's bar
reaches through the driver's relay) the bar is redrawn at most every `redraw_every_s`. Without
one (a batch job, output piped to a file, `ray job submit`) and `logging.progress_bar=auto`,
progress is logged as lines (the console and logs/rank0.log): at train records, a line when a
tenth of the run's steps has passed since the last one or `log_every_s` seconds have, whichever
comes first, and at the last step; a line per validation. The ETA leaves out the run's first
steps (`core/eta.py`)."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

from raytrain_llm.core.callbacks.base import Callback
from raytrain_llm.core.eta import EtaEstimator, format_duration

LINES_PER_RUN = 10


class ProgressBar(Callback):
    def __init__(self, enabled: bool | None = None, stream=None, width: int = 30, log_every_s: float = 30.0,
                 clock: Callable[[], float] = time.perf_counter, terminal: Optional[bool] = None,
                 redraw_every_s: float = 0.2):
        """`terminal`: whether `stream` ends at a terminal (None: `stream.isatty()`); under Ray the
        driver knows, the worker's stream is a file it relays."""
        self.stream = stream or sys.stderr
        self.clock = clock  # seconds, monotonic: the line cadence, the redraws and the ETA
        if terminal is None:
            terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = terminal if enabled is None else enabled
        # Lines only when the bar was left to decide (progress_bar=auto) and found no terminal.
        self.log_lines = enabled is None and not self.enabled
        self.width, self.log_every_s, self.redraw_every_s = width, log_every_s, redraw_every_s
        self.eta = EtaEstimator(clock)
        self._t0 = 0.0
        self._start_step = 0
        self._last = ""
        self._logged_at, self._logged_step = float("-inf"), 0
        self._drawn_at = float("-inf")

    def on_train_start(self, engine) -> None:
        self._t0, self._start_step = self.clock(), engine.global_step
        self._logged_at, self._logged_step = float("-inf"), engine.global_step
        self.eta.start(engine.global_step, engine.total_steps)

    def on_log(self, engine, record) -> None:
        if record.get("split") == "train":
            self._last = f"loss {record.get('loss', float('nan')):.4f}"
        elif "val/loss" in record:
            self._last += f" val {record['val/loss']:.4f}"
        if self.log_lines and engine.dist.is_main:
            self._log_line(engine, record)

    def _line_due(self, step: int, total: int) -> bool:
        every_steps = max(1, math.ceil((total - self._start_step) / LINES_PER_RUN))
        return (step >= total or step - self._logged_step >= every_steps or self._logged_step == self._start_step
                or self.clock() - self._logged_at >= self.log_every_s)

    def _log_line(self, engine, record) -> None:
        step, total = record.get("step", engine.global_step), max(engine.total_steps, 1)
        if record.get("split") == "train":
            if not self._line_due(step, total):
                return
            self._logged_at, self._logged_step = self.clock(), step
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
        left = self.eta.seconds_left(step, total)
        return "" if left is None else f"eta {format_duration(left)}"

    def on_batch_end(self, engine, step, outputs) -> None:
        self.eta.step_done(step)
        if not self.enabled or not engine.dist.is_main:
            return
        total = max(engine.total_steps, 1)
        now = self.clock()
        if now - self._drawn_at < self.redraw_every_s and step < total:
            return
        self._drawn_at = now
        bar = "#" * int(min(step / total, 1.0) * self.width)
        rate = (step - self._start_step) / max(now - self._t0, 1e-9)
        eta = self._eta(step, total)
        self.stream.write(f"\r[{bar:<{self.width}}] {step}/{total} ep {engine.progress.epoch_number()} "
                          f"{rate:.1f} it/s {eta + ' ' if eta else ''}{self._last} \x1b[K")
        self.stream.flush()

    def on_train_end(self, engine) -> None:
        if self.enabled and engine.dist.is_main:
            self.stream.write("\n")
            self.stream.flush()
