"""`MetricsLogger`: one JSON object per logged record in metrics.jsonl, and summary.json at the end."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional

from raytrain_llm.core import interruption
from raytrain_llm.core.atomic_io import atomic_write_json, atomic_write_text
from raytrain_llm.core.callbacks.base import Callback

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"


def read_summary(log_dir: str) -> Optional[dict[str, Any]]:
    """The summary.json a run's MetricsLogger wrote, or None if there is none (yet)."""
    path = os.path.join(log_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def final_val_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The last validation's metrics from a summary.json, without the record's bookkeeping keys:
    the same shape as an in-process run's result, whichever launcher wrote the summary."""
    record = (summary.get("final") or {}).get("val") or {}
    return {k: v for k, v in record.items() if k not in ("split", "step", "epoch")}


def read_records(log_dir: str) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl ([] if there is none); lines cut short are skipped."""
    try:
        with open(os.path.join(log_dir, METRICS_FILE), encoding="utf-8") as fh:
            return [record for line in fh if (record := _parse(line)) is not None]
    except OSError:
        return []


def _parse(line: str) -> Optional[dict[str, Any]]:
    """One metrics.jsonl record; None for a blank line or one cut short by a crash mid-write."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def is_better(value: float, best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class MetricsLogger(Callback):
    def __init__(self, log_dir: str, monitor: str = "val/loss", mode: str = "min"):
        self.path = os.path.join(log_dir, METRICS_FILE)
        self.summary_path = os.path.join(log_dir, SUMMARY_FILE)
        self.monitor, self.mode = monitor, mode
        self.best_value: Optional[float] = None
        self.best_record: dict[str, Any] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self._t0 = time.time()
        self._earlier_s = 0.0  # wall time of the segments before a resume

    def on_load_checkpoint(self, engine, state) -> None:
        # Records written after the checkpoint (by a run that was then killed) will be
        # written again by the resumed run: drop them so every step appears once. The last
        # ones kept are the run's final records until it logs new ones (it may have none left).
        if not engine.dist.is_main or not os.path.exists(self.path):
            return
        if engine.resumed_from_elsewhere:  # another run's checkpoint: this file is not its history
            self._move_aside(engine)
            return
        step = state["progress"]["global_step"]
        with open(self.path, encoding="utf-8") as fh:
            records = [(line, record) for line in fh
                       if (record := _parse(line)) is not None and record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line if line.endswith("\n") else line + "\n" for line, _ in records))
        for _, record in records:
            self.last[record.get("split", "train")] = record

    def on_train_start(self, engine) -> None:
        # A run from step 0 starts its own file; an earlier run's records (a rerun into the same
        # logging.dir without checkpoints, or a restart before the first one) are moved aside.
        if not engine.global_step and engine.dist.is_main and os.path.exists(self.path):
            self._move_aside(engine)

    def _move_aside(self, engine) -> None:
        if os.path.getsize(self.path):
            aside = f"{self.path[:-len('.jsonl')]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
            os.replace(self.path, aside)
            engine.logger.info(f"an earlier run's metrics.jsonl was moved to {os.path.basename(aside)}")

    def on_log(self, engine, record: dict[str, Any]) -> None:
        split = record.get("split", "train")
        self.last[split] = record
        value = record.get(self.monitor)
        if isinstance(value, (int, float)) and is_better(value, self.best_value, self.mode):
            self.best_value, self.best_record = float(value), dict(record)
        if engine.dist.is_main:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, allow_nan=True) + "\n")

    def on_train_end(self, engine) -> None:
        if not engine.dist.is_main:
            return
        manager = engine.checkpoint_manager
        atomic_write_json(self.summary_path, {
            "task": engine.config.task,
            "global_step": engine.global_step,
            "epoch": engine.progress.epoch_number(),  # the last step's, from 1 (Progress.epoch_number)
            "epochs_completed": engine.epoch,
            "stopped_early": engine.stopped_early,
            "stop_reason": engine.stop_reason or None,
            # the stop signal (SIGTERM, SIGINT) the run stopped on, saved at its last step; else null
            "interrupted": interruption.signal_name(interruption.agreed()) if interruption.agreed() else None,
            "skipped_steps": engine.skipped_steps,
            "final": self.last,
            "best": {"monitor": self.monitor, "mode": self.mode, "value": self.best_value,
                     "record": self.best_record},
            "best_checkpoint": manager.best_path() if manager else None,
            "latest_checkpoint": manager.latest_path() if manager else None,
            "wall_time_s": self._wall_time(),  # summed over the run's segments (to each one's last save)
        })

    def _wall_time(self) -> float:
        return self._earlier_s + time.time() - self._t0

    def state_dict(self):
        return {"best_value": self.best_value, "best_record": json.dumps(self.best_record),
                "wall_time_s": self._wall_time()}

    def load_state_dict(self, state) -> None:
        self.best_value = state.get("best_value")
        self.best_record = json.loads(state.get("best_record") or "{}")
        self._earlier_s = float(state.get("wall_time_s", 0.0))
        self._t0 = time.time()
