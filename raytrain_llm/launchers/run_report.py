"""The block every launcher's run ends with (in-process, spawn, Ray Train): where the run's
folder is, its best and last checkpoints, its final metrics, and the commands to view it in
TensorBoard and to resume it.

It is built from the run's own files (summary.json in `logging.dir`, written by rank 0's
`MetricsLogger`), so it names the project's checkpoint folders whichever launcher ran, and the
paths it prints exist when it is printed.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Optional

from raytrain_llm.core.callbacks.metrics_logger import read_summary
from raytrain_llm.core.config import Config

LABEL_WIDTH = 13


def shown_path(path: str) -> str:
    """A path as the user can paste it from the current folder: relative below it, else absolute."""
    full = os.path.abspath(path)
    rel = os.path.relpath(full)
    return rel if not rel.startswith("..") else full


def python_command() -> str:
    """How this run was started, for commands to copy: the same Python and entry point."""
    python = shown_path(sys.executable) if sys.executable else "python"
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    entry = shown_path(script) if os.path.basename(script) == "train.py" else "-m raytrain_llm.cli"
    return f"{shlex.quote(python)} {entry if entry.startswith('-m') else shlex.quote(entry)}"


def tensorboard_command(log_dir: str) -> str:
    """`tensorboard --logdir ...` with the tensorboard next to this Python when there is one."""
    beside = os.path.join(os.path.dirname(sys.executable or ""), "tensorboard")
    exe = shown_path(beside) if os.path.exists(beside) else "tensorboard"
    return f"{shlex.quote(exe)} --logdir {shlex.quote(shown_path(os.path.join(log_dir, 'tensorboard')))}"


def resume_command(log_dir: str) -> str:
    """Continues this run from its newest checkpoint: its own config.yaml (every setting it ran
    with, its logging.dir and Ray run name included) and checkpoint.resume=auto."""
    config_yaml = shlex.quote(shown_path(os.path.join(log_dir, "config.yaml")))
    return f"{python_command()} --config {config_yaml} --set checkpoint.resume=auto"


def _metrics_text(record: dict[str, Any], keys: Optional[list[str]] = None) -> str:
    skip = ("split", "step", "epoch")
    items = [(k, v) for k, v in record.items() if k not in skip and isinstance(v, (int, float))
             and not isinstance(v, bool) and (keys is None or k in keys)]
    return " ".join(f"{k} {v:.4g}" for k, v in items)


def _headline(summary: dict[str, Any], epochs: int) -> str:
    step = summary.get("global_step", 0)
    epoch = summary.get("epoch")  # the last step's, counted from 1 (Progress.epoch_number)
    where = f"step {step}" + (f", epoch {epoch}/{epochs}" if epoch is not None else "")
    if summary.get("interrupted"):
        return f"run stopped at {where}: interrupted by {summary['interrupted']}, checkpoint saved"
    if summary.get("stopped_early"):
        return f"run stopped at {where}: {summary.get('stop_reason') or 'stopped early'}"
    return f"run finished at {where}"


def end_of_run_lines(config: Config, result: Optional[dict[str, Any]] = None) -> list[str]:
    """The block's lines. `result` (a launcher's return value) stands in for what summary.json
    lacks, e.g. a Ray run whose rank 0 wrote it on another node."""
    log_dir = config.logging.dir
    result = result or {}
    summary = read_summary(log_dir) or {
        "global_step": result.get("step", 0), "best_checkpoint": result.get("best_checkpoint"),
        "final": {"train": result.get("train") or {}, "val": result.get("val") or {}}}
    final = summary.get("final") or {}

    def row(label: str, text: str) -> str:
        return f"  {label:<{LABEL_WIDTH}}{text}"

    lines = [_headline(summary, config.training.epochs),
             row("run folder", f"{shown_path(log_dir)}  (summary.json, metrics.jsonl, tensorboard/, logs/)")]
    best, last = summary.get("best_checkpoint"), summary.get("latest_checkpoint")
    best_value = (summary.get("best") or {}).get("value")
    monitor = (summary.get("best") or {}).get("monitor", config.checkpoint.monitor)
    if best:
        lines.append(row("best", shown_path(best) + (f"  ({monitor} {best_value:.4g})"
                                                      if isinstance(best_value, (int, float)) else "")))
    if last:
        lines.append(row("last", shown_path(last)))
    if not (best or last):
        lines.append(row("checkpoints", "none (checkpoint.enabled=false)" if not config.checkpoint.enabled
                         else "none saved"))
    train = _metrics_text(final.get("train") or {}, ["loss"])
    val = _metrics_text(final.get("val") or {})
    if train or val:
        lines.append(row("final", "  ".join(p for p in (f"train {train}" if train else "", val) if p)))
    if config.logging.tensorboard or "tensorboard" in config.logging.trackers:
        lines.append(row("tensorboard", tensorboard_command(log_dir)))
    if config.checkpoint.enabled and (best or last):
        lines.append(row("resume", resume_command(log_dir)))
    return lines


def print_end_of_run(config: Config, result: Optional[dict[str, Any]] = None, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write("\n".join(end_of_run_lines(config, result)) + "\n")
    stream.flush()


def interrupted_line(config: Optional[Config], signal_name: str) -> str:
    """What a stopped run tells the user: the step it reached, its newest checkpoint and the
    command that continues from it (from the run's files, whatever stopped it)."""
    if config is None:
        return f"interrupted by {signal_name} before the run started"
    from raytrain_llm.core.callbacks.metrics_logger import read_records
    from raytrain_llm.core.checkpointing import CheckpointManager

    log_dir = config.logging.dir
    records = read_records(log_dir)
    reached = f" at step {records[-1]['step']}" if records and "step" in records[-1] else ""
    newest = CheckpointManager(config.checkpoint_dir, is_main=False).checkpoints() if config.checkpoint.enabled \
        else []
    if not newest:
        return f"interrupted by {signal_name}{reached}; no checkpoint saved, nothing to resume (run folder " \
               f"{shown_path(log_dir)})"
    saved = newest[-1]
    resume = resume_command(log_dir) if os.path.exists(os.path.join(log_dir, "config.yaml")) else \
        f"{python_command()} <the same arguments> --set logging.dir={shlex.quote(shown_path(log_dir))} " \
        "--set checkpoint.resume=auto"
    return (f"interrupted by {signal_name}{reached}; checkpoint of step {saved['step']} in "
            f"{shown_path(saved['path'])}; resume with: {resume}")
