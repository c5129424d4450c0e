"""Test-only tasks for the tracker tests, used as `--task rt_tracker_tasks:Name`."""
from __future__ import annotations

import json
import os
import signal
import time

from raytrain_llm.tasks.regression_task import RegressionTask


class KillWhenSentTask(RegressionTask):
    """SIGKILLs its process after optimizer step $RT_KILL_AT_STEP, once the tracker named by
    $RT_TRACKER has sent the train record of step $RT_KILL_AT_STEP - 2 (its state file says so;
    at most 60 s): the kill then lands with a run id kept and some steps sent, some not.
    With $RT_KILL_PGID it kills that process group instead (a tracking server) and trains on."""

    def __init__(self, config):
        super().__init__(config)
        self.kill_at = int(os.environ["RT_KILL_AT_STEP"])
        self.state = os.path.join(config.logging.dir, f"tracker-{os.environ['RT_TRACKER']}.json")
        self.steps = 0

    def on_optimizer_step(self, model) -> None:
        self.steps += 1
        if not self.kill_at or self.steps != self.kill_at:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self._sent() < self.kill_at - 2:
            time.sleep(0.05)
        if os.environ.get("RT_KILL_PGID"):
            os.killpg(int(os.environ["RT_KILL_PGID"]), signal.SIGKILL)
        else:
            os.kill(os.getpid(), signal.SIGKILL)

    def _sent(self) -> int:
        try:
            with open(self.state, encoding="utf-8") as fh:
                return int(json.load(fh)["sent"].get("train", 0))
        except (OSError, ValueError, KeyError):
            return 0
