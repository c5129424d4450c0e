"""`EtaEstimator`: the time a run has left, from the pace of its steps after a warm-up.

A run's first steps are slow for reasons that do not recur: start-up, `torch.compile`, the
data pipeline filling, the allocator growing. The pace is therefore measured from a reference
step a few steps in (`warmup_steps`: 2% of the steps this segment runs, at least 2), and no
estimate is given before it. Validations and saves between steps count in the pace: they recur
at their intervals, so the run's remaining time includes them in the same proportion.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

WARMUP_FRACTION = 0.02
MIN_WARMUP_STEPS = 2


class EtaEstimator:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._start_step = 0
        self._warmup = MIN_WARMUP_STEPS
        self._ref: Optional[tuple[int, float]] = None  # (step, clock) where the pace is measured from

    def start(self, step: int, total_steps: int) -> None:
        """A segment starts at `step` (0, or where a resume goes on) of `total_steps`."""
        self._start_step = step
        self._warmup = max(MIN_WARMUP_STEPS, math.ceil(WARMUP_FRACTION * max(total_steps - step, 0)))
        self._ref = None

    def step_done(self, step: int) -> None:
        """After each optimizer step: the reference is taken once the warm-up steps are done."""
        if self._ref is None and step - self._start_step >= self._warmup:
            self._ref = (step, self.clock())

    def seconds_left(self, step: int, total_steps: int) -> Optional[float]:
        """None during the warm-up, the first step after it, and when nothing is left."""
        if self._ref is None or step <= self._ref[0] or step >= total_steps:
            return None
        per_step = (self.clock() - self._ref[1]) / (step - self._ref[0])
        return per_step * (total_steps - step)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
