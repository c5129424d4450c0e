"""`TrackerLogger`: what the MLflow and W&B callbacks share. A subclass says how to talk to its
service (`start_run`, `log_metrics`, `log_files`, `log_summary`, `end_run`); this class decides
what is sent and when.

- Rank 0 only. Every call to the service runs on a `BackgroundSender` thread: the loop never
  waits on the network. A failed call stops the tracker for the rest of the run with a warning;
  at the end a second warning lists what was not logged. Training goes on either way.
- At train start: the resolved config as parameters (dotted keys) and tags (task, launcher,
  strategy, git commit). Every record (train and val, the names of metrics.jsonl, without
  step/epoch/split) as metrics at its step. At the end: summary.json, metrics.jsonl and
  config.yaml as files, the summary's numbers, optionally the best (else latest) checkpoint.
- `<logging.dir>/tracker-<name>.json` holds the tracker run's id and the last step sent per
  split. A resumed run continues that tracker run and skips records of steps already sent
  (steps trained again after the checkpoint): MLflow cannot delete metric history, and W&B
  drops steps lower than its current one. A run from step 0 (or from another run's
  checkpoint) starts a new tracker run.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Optional

from raytrain_llm.core import interruption
from raytrain_llm.core.atomic_io import atomic_write_json
from raytrain_llm.core.callbacks.base import Callback
from raytrain_llm.core.callbacks.metrics_logger import METRICS_FILE, SUMMARY_FILE, read_records
from raytrain_llm.core.callbacks.tracker_sender import BackgroundSender

BOOKKEEPING = ("step", "epoch", "split")
CLOSE_TIMEOUT_S = 60.0  # the most the end of a run waits for queued sends (an unreachable server)
EXCEPTION_CLOSE_TIMEOUT_S = 10.0


def flat_params(config_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training.lr": 0.001, ...}: every leaf of the config; lists (and empty dicts) as JSON text."""
    out: dict[str, Any] = {}
    for key, value in config_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value)
    return out


def param_text(value: Any) -> str:
    """A parameter as text (MLflow's params and tags are strings): JSON for anything not a string."""
    return value if isinstance(value, str) else json.dumps(value)


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool)}


def git_commit(cwd: Optional[str] = None) -> Optional[str]:
    """HEAD of the git checkout holding `cwd` (default: this package's code), or None outside
    one or without git. Not the working folder: Ray workers run in a session folder."""
    cwd = cwd or os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags(config) -> dict[str, str]:
    d = config.distributed
    multi = d.launcher != "local" and d.num_workers > 1
    tags = {"task": config.task, "launcher": d.launcher, "strategy": "ddp" if multi else "single",
            "num_workers": str(d.num_workers if d.launcher != "local" else 1)}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


class TrackerLogger(Callback):
    name = "tracker"  # the service's name in logging.trackers, warnings and tracker-<name>.json

    def __init__(self, config, logger=None):
        self.settings = config.logging
        self.log_dir = config.logging.dir
        self.logger = logger
        self.state_path = os.path.join(self.log_dir, f"tracker-{self.name}.json")
        self.sender: Optional[BackgroundSender] = None
        self.run_id: Optional[str] = None
        self.sent: dict[str, int] = {}  # split -> last step sent to the service
        self.skip_through: dict[str, int] = {}  # split -> last step an earlier segment sent

    # ---------------------------------------------------------- the service (on the sender thread)
    def start_run(self, run_id: Optional[str], params: dict[str, Any], tags: dict[str, str]) -> str:
        """Create a run (run_id None) or continue `run_id`; return its id. Params only for a new run."""
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_records(self, records: list[tuple[dict[str, float], int]]) -> None:
        """Several records' (metrics, step), in order; a service with a batch call overrides it."""
        for metrics, step in records:
            self.log_metrics(metrics, step)

    def log_files(self, paths: list[str]) -> None:
        """Files and folders (a checkpoint) as the run's artifacts, under their base names."""
        raise NotImplementedError

    def log_summary(self, summary: dict[str, Any]) -> None: ...

    def end_run(self, status: str) -> None:
        """`status`: FINISHED, FAILED or KILLED (Ctrl-C)."""
        raise NotImplementedError

    # ---------------------------------------------------------- hooks (the training loop)
    def on_train_start(self, engine) -> None:
        if not engine.dist.is_main:
            return
        self.logger = self.logger or engine.logger
        earlier = self._read_state() if engine.global_step and not engine.resumed_from_elsewhere else {}
        run_id = earlier.get("run_id")
        self.skip_through = {k: int(v) for k, v in (earlier.get("sent") or {}).items()} if run_id else {}
        self.sent = dict(self.skip_through)
        params = flat_params(engine.config.to_dict())
        tags = run_tags(engine.config)
        if run_id:
            tags["resumed_at_step"] = str(engine.global_step)
        self.sender = BackgroundSender(self.name, self._failed, send_records=self._send)
        self.sender.submit(lambda: self._begin(run_id, params, tags),
                           "the run's start (config as parameters, tags)" if not run_id else "the resumed run's start")
        if engine.global_step and not engine.resumed_from_elsewhere:
            # Records up to the checkpoint that never reached the service (killed before they
            # were sent, or a new tracker run): metrics.jsonl, rewound to the checkpoint, has them.
            for record in read_records(self.log_dir):
                self.on_log(engine, record)

    def on_log(self, engine, record: dict[str, Any]) -> None:
        if self.sender is None:
            return
        split = str(record.get("split", "train"))
        step = int(record.get("step", engine.global_step))
        if step <= self.skip_through.get(split, 0):
            return  # sent by the segment before the resume
        self.sender.submit_record((record_metrics(record), step, split), split, step)

    def on_train_end(self, engine) -> None:
        if self.sender is None:
            return
        files = [os.path.join(self.log_dir, n) for n in (SUMMARY_FILE, METRICS_FILE, "config.yaml")]
        summary = self.read_json(os.path.join(self.log_dir, SUMMARY_FILE))
        if self.settings.tracker_log_checkpoint:
            manager = engine.checkpoint_manager
            checkpoint = manager and (manager.best_path() or manager.latest_path())
            if checkpoint:
                files.append(checkpoint)
        files = [f for f in files if os.path.exists(f)]
        self.sender.submit(lambda: self.log_summary(summary), "the summary")
        self.sender.submit(lambda: self.log_files(files), "files " + ", ".join(os.path.basename(f) for f in files))
        # A run stopped by SIGTERM / Ctrl-C ends normally (saved), but was not finished.
        status = "KILLED" if interruption.agreed() else "FINISHED"
        self.sender.submit(lambda: self.end_run(status), "the run's end")
        self._close(CLOSE_TIMEOUT_S)

    def on_exception(self, engine, exc) -> None:
        if self.sender is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.sender.submit(lambda: self.end_run(status), "the run's end (failed)")
            self._close(EXCEPTION_CLOSE_TIMEOUT_S)

    # ---------------------------------------------------------- internals
    def _begin(self, run_id: Optional[str], params: dict[str, Any], tags: dict[str, str]) -> None:
        self.run_id = self.start_run(run_id, params, tags)
        self._write_state()

    def _send(self, records: list[tuple[dict[str, float], int, str]]) -> None:
        self.log_records([(metrics, step) for metrics, step, _ in records])
        for _, step, split in records:
            self.sent[split] = step
        self._write_state()

    def _close(self, timeout_s: float) -> None:
        sender, self.sender = self.sender, None
        finished = sender.close(timeout_s)
        if sender.not_logged:
            why = f"{type(sender.error).__name__}: {_first_line(sender.error)}" if sender.error else \
                "the service did not answer in time" if not finished else "the queue was full"
            self._warn(f"{self.name}: not logged ({why}): {sender.not_logged.describe()}; "
                       f"metrics.jsonl and summary.json in {self.log_dir} hold everything")

    def _failed(self, what: str, exc: BaseException) -> None:
        self._warn(f"{self.name}: sending {what} failed ({type(exc).__name__}: {_first_line(exc)}); training goes "
                   f"on without {self.name} (a list of what was not logged follows at the end)")

    def _warn(self, message: str) -> None:
        if self.logger is not None:
            self.logger.warning(message)

    def _read_state(self) -> dict[str, Any]:
        return self.read_json(self.state_path)

    @staticmethod
    def read_json(path: str) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self) -> None:
        atomic_write_json(self.state_path, {"run_id": self.run_id, "sent": self.sent})


def _first_line(exc: Optional[BaseException]) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
