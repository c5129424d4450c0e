"""`RecordingASHA`: Tune's ASHA that also records which trials it stopped early.

Tune marks a trial stopped by a scheduler TERMINATED with `done=True`, exactly like a trial that
ran to its end, so the results table could not tell them apart. This scheduler appends each trial
it stops before `max_t` to a JSON-lines file in the sweep folder; it runs in the driver, and the
file survives a resumed sweep.

It also never stops a trial for reaching `max_t` (see `on_trial_result`).
"""
from __future__ import annotations

import json
import math
import os

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


class RecordingASHA(AsyncHyperBandScheduler):
    def __init__(self, record_path: str, **kwargs):
        super().__init__(**kwargs)
        self.record_path = record_path

    def on_trial_result(self, tune_controller, trial, result):
        value = result.get(self._metric)
        if not isinstance(value, (int, float)) or math.isnan(value):
            # A report without a validation (a checkpoint between two) carries NaN: ASHA would
            # record it at a rung and pass the trial there (NaN < cutoff is False), so a bad
            # trial could pass every rung. Judge it on its next validated report instead.
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        at = result.get(self._time_attr)
        if decision == TrialScheduler.STOP and at is not None and at >= self._max_t:
            # ASHA stops every trial that reaches max_t. Our trials end on their own, and a stop
            # here kills the Train controller during its own shutdown, leaving its workers'
            # placement group to Train's cleaner (which needs the State API): let it finish.
            return TrialScheduler.CONTINUE
        if decision == TrialScheduler.STOP and at is not None:
            os.makedirs(os.path.dirname(self.record_path), exist_ok=True)
            with open(self.record_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"trial": trial.trial_id, "name": str(trial), self._time_attr: at,
                                     self._metric: result.get(self._metric)}) + "\n")
        return decision


def read_stopped(record_path: str) -> dict[str, dict]:
    """Trial id -> the record written when it was stopped."""
    out: dict[str, dict] = {}
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    out[rec["trial"]] = rec
    return out
