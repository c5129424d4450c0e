"""`TensorBoardLogger`: scalars under `<logging.dir>/tensorboard` via tensorboardX, and at the
end the config as an HParams session of the same run.

Events are written synchronously and flushed at every log: tensorboardX's SummaryWriter queues
them for a background thread, and its flush() does not wait for that queue, so a run killed
(or stopped by ASHA) right after a validation lost it, and up to 2 minutes of events before.
A log is a few scalars every `log_every_n_steps`: writing them in the loop costs microseconds.

tensorboardX is optional (GPU boxes may lack it): without it the callback says so once and
does nothing, instead of failing the run.
"""
from __future__ import annotations

import os
import time
from typing import Any

from raytrain_llm.core.callbacks.base import Callback

_SKIP = {"step", "epoch", "split"}


def flat_hparams(config_dict: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, body in config_dict.items():
        if isinstance(body, dict):
            for k, v in body.items():
                if isinstance(v, (int, float, str, bool)):
                    out[f"{section}.{k}"] = v
        elif isinstance(body, (int, float, str, bool)):
            out[section] = body
    return out


def _scalar_tags(split: str, record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers under their TensorBoard tags: `val/loss` as it is, `loss` as `train/loss`."""
    return {key if "/" in key else f"{split}/{key}": float(value) for key, value in record.items()
            if key not in _SKIP and isinstance(value, (int, float)) and not isinstance(value, bool)}


class EventFile:
    """One TensorBoard event file, written in the caller's thread (see the module docstring)."""

    def __init__(self, directory: str):
        from tensorboardX.event_file_writer import EventsWriter

        os.makedirs(directory, exist_ok=True)
        # The pid keeps two files opened in the same second (a quick rerun) apart.
        self._file = EventsWriter(os.path.join(directory, "events"), f".{os.getpid()}")

    def add(self, summary, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._file.write_event(Event(summary=summary, wall_time=time.time(), step=step))

    def restart_at(self, step: int) -> None:
        """Tells readers that events from `step` on in earlier files are void (a resumed run
        trains those steps again): TensorBoard drops them rather than drawing both."""
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._file.write_event(Event(session_log=SessionLog(status=SessionLog.START), wall_time=time.time(),
                                     step=step))
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger(Callback):
    def __init__(self, log_dir: str, logger=None):
        self.dir = os.path.join(log_dir, "tensorboard")
        self.logger = logger
        self.events = None
        self.available = True

    def _open(self, engine):
        if self.events is not None or not self.available or not engine.dist.is_main:
            return self.events
        try:
            self.events = EventFile(self.dir)
        except ImportError:
            self.available = False
            if self.logger:
                self.logger.warning("TensorBoard logging is off: tensorboardX is not installed")
        return self.events

    def on_train_start(self, engine) -> None:
        # A run from step 0 (or from another run's checkpoint) into a folder holding an earlier
        # run's events (a rerun without checkpoints): TensorBoard would draw both as one
        # zig-zagging run. They become a run of their own, `earlier-<time>` (metrics.jsonl is
        # moved aside the same way).
        if not engine.dist.is_main:
            return
        if engine.global_step and not engine.resumed_from_elsewhere:
            # Resumed: metrics.jsonl is rewound to the checkpoint; the events after it are voided.
            events = self._open(engine)
            if events is not None:
                events.restart_at(engine.global_step + 1)
            return
        if not os.path.isdir(self.dir):
            return
        events = [n for n in os.listdir(self.dir) if n.startswith("events.out.tfevents.")]
        if events:
            aside = os.path.join(self.dir, f"earlier-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            os.makedirs(aside)
            for name in events:
                os.replace(os.path.join(self.dir, name), os.path.join(aside, name))
            if self.logger:
                self.logger.info(f"an earlier run's TensorBoard events were moved to tensorboard/{os.path.basename(aside)}")

    def on_log(self, engine, record) -> None:
        events = self._open(engine)
        if events is None:
            return
        from tensorboardX.summary import scalar

        step = int(record.get("step", engine.global_step))
        for tag, value in _scalar_tags(record.get("split", "train"), record).items():
            events.add(scalar(tag, value), step)
        events.flush()

    def on_train_end(self, engine) -> None:
        events = self._open(engine)
        if events is None:
            return
        from tensorboardX.summary import hparams

        # The HParams dashboard's metrics are this run's own scalar tags (it shows their last
        # values), and the session goes into this run's file: one run per training run. (Writer.
        # add_hparams would open a second run, `<run>/hparams`, holding copies of the values.)
        metrics = [tag for split, record in (("train", engine.last_train_record), ("val", engine.last_val_metrics))
                   for tag in _scalar_tags(split, record or {})]
        for summary in hparams(flat_hparams(engine.config.to_dict()), dict.fromkeys(metrics, 0.0)):
            events.add(summary, engine.global_step)
        self._close()

    def on_exception(self, engine, exc) -> None:
        self._close()

    def _close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
