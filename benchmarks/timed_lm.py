"""`--task benchmarks.timed_lm:TimedLM`: the `lm` task, marking when each start-up stage of a process ends.

Each mark is one JSON line {"event", "pid", "t"} (wall clock) appended to the file named by
RTO_TIMELINE (nothing without it); `ray_overhead.py --timeline` reads them back into stages.
The marks are the task's own hooks, so the engine and launchers run unchanged.
"""
from __future__ import annotations

import json
import os
import time

from raytrain_llm.tasks.lm_task import LanguageModelingTask

TIMELINE_ENV = "RTO_TIMELINE"


def mark(event: str) -> None:
    path = os.environ.get(TIMELINE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": event, "pid": os.getpid(), "t": time.time()}) + "\n")


class TimedLM(LanguageModelingTask):
    def __init__(self, config):
        mark("task_built")  # the driver (after imports and ray.init), then each worker (after its launcher's start-up)
        super().__init__(config)
        self._first_step = True

    def build_data_module(self):
        module = super().build_data_module()
        mark("data_module_built")
        return module

    def build_model(self):
        model = super().build_model()
        mark("model_built")
        return model

    def train_step(self, model, batch, criterion):
        if self._first_step:
            self._first_step = False
            mark("first_batch_in_hand")
        return super().train_step(model, batch, criterion)
