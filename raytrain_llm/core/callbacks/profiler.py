"""`Profiler`: a torch.profiler trace of a few optimizer steps, for finding where a step's time goes.

The steps are chosen by number, after warm-up (compilation, allocator growth, cuDNN autotuning),
because the first steps say little about the steady state. Each rank writes its own files under
`<logging.dir>/profiler/`: a Chrome/Perfetto trace (`.trace.json`, open it in ui.perfetto.dev or
chrome://tracing) and the operators ranked by their own time (`.txt`).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from raytrain_llm.core.callbacks.base import Callback

TABLE_ROWS = 30


class Profiler(Callback):
    def __init__(self, log_dir: str, start_step: int = 5, num_steps: int = 3, logger=None):
        self.out_dir = os.path.join(log_dir, "profiler")
        self.first, self.last = start_step, start_step + num_steps - 1
        self.logger = logger
        self._prof: Optional[torch.profiler.profile] = None
        self._span = None  # the open "optimizer step N" range
        self._start_step = 0  # global_step when this run (or resume) began
        self.files: list[str] = []

    def on_train_start(self, engine) -> None:
        self._start_step = engine.global_step

    def on_batch_start(self, engine, batch_idx: int) -> None:
        # The step about to run is global_step + 1; its first micro-batch starts the trace.
        step = engine.global_step + 1
        if self._prof is None and not self.files and step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if engine.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=activities, record_shapes=True)
            self._prof.start()
        if self._prof is not None and self._span is None:  # one range per step, over its micro-batches
            self._span = torch.profiler.record_function(f"optimizer step {step}")
            self._span.__enter__()

    def on_batch_end(self, engine, step: int, outputs) -> None:
        if self._prof is None:
            return
        self._close_span()
        if step >= self.last:
            self._finish(engine, step)

    def _close_span(self) -> None:
        if self._span is not None:
            self._span.__exit__(None, None, None)
            self._span = None

    def on_train_end(self, engine) -> None:
        if self._prof is not None:  # the run ended inside the profiled range
            self._finish(engine, engine.global_step)
        elif not self.files:  # asked for a trace and got none: say so rather than stay silent
            why = (f"the run resumed after step {self._start_step}, past it" if self._start_step >= self.first
                   else f"the run ended after step {engine.global_step}, before it")
            (self.logger or engine.logger).warning(
                f"profiler: no steps were profiled: callbacks.profile_start_step={self.first}, but {why}")

    def on_exception(self, engine, exc: BaseException) -> None:
        if self._prof is not None:
            self._stop()

    def _stop(self) -> torch.profiler.profile:
        self._close_span()
        prof, self._prof = self._prof, None
        prof.stop()
        return prof

    def _finish(self, engine, step: int) -> None:
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        prof = self._stop()
        os.makedirs(self.out_dir, exist_ok=True)
        stem = os.path.join(self.out_dir, f"rank{engine.dist.rank}_steps{self.first}-{step}")
        prof.export_chrome_trace(stem + ".trace.json")
        sort_by = "self_device_time_total" if engine.device.type == "cuda" else "self_cpu_time_total"
        with open(stem + ".txt", "w", encoding="utf-8") as fh:
            fh.write(prof.key_averages().table(sort_by=sort_by, row_limit=TABLE_ROWS) + "\n")
        self.files = [stem + ".trace.json", stem + ".txt"]
        if self.logger is not None:
            self.logger.info(f"profiled steps {self.first}-{step}: {stem}.trace.json, {stem}.txt")
