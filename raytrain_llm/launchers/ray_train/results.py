"""After `fit()`: the driver's summary of a Ray run, and a readable message when it failed."""
from __future__ import annotations

import math
import os
import re
import shutil
from typing import Any, Optional

from raytrain_llm.core.callbacks.metrics_logger import final_val_metrics, read_summary
from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.config import Config
from raytrain_llm.core.errors import TrainingError, UsageError
from raytrain_llm.launchers.ray_train.checkpoint_pointer import resolve as resolve_pointer
from raytrain_llm.launchers.ray_train.checkpoint_pointer import stores_in_place

ARTIFACTS = ("summary.json", "metrics.jsonl", "config.yaml", "tensorboard")


def last_good_checkpoint(config: Config) -> Optional[str]:
    """Newest engine checkpoint that loads (corrupt ones are skipped, never deleted)."""
    manager = CheckpointManager(config.checkpoint_dir, is_main=False)
    try:
        path, _ = manager.load_latest_valid()
    except UsageError:  # some, but none loads
        return None
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exception_line(exc: BaseException) -> str:
    """`Type: first line` of the innermost cause: a RayTaskError's own text opens with a coloured
    `ray::Actor.method() (pid=...)` banner that says nothing about what went wrong."""
    for _ in range(5):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("ray::")] or lines
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _reason(exc: BaseException) -> str:
    """The root cause in one line: a dead worker first, since its peers then fail in collectives."""
    failures = getattr(exc, "worker_failures", None) or {}
    died = {r: e for r, e in failures.items() if "Died" in type(e).__name__ or "died" in str(e)}
    if died:
        ranks = ", ".join(str(r) for r in sorted(died))
        return (f"worker rank {ranks} died (process killed or crashed: signal, OOM or segfault); "
                f"{exception_line(next(iter(died.values())))}")
    if failures:
        rank, err = sorted(failures.items())[0]
        return f"worker rank {rank} raised {exception_line(err)}"
    cause = getattr(exc, "controller_failure", None)
    return exception_line(cause or exc)


def worker_usage_error(exc: BaseException) -> Optional[str]:
    """The message of a usage/config error a worker raised (every rank raises the same), else None."""
    for _, err in sorted((getattr(exc, "worker_failures", None) or {}).items()):
        cause = getattr(err, "cause", None) or err  # a RayTaskError wraps the worker's exception
        if isinstance(cause, UsageError) or type(cause).__name__ in ("UsageError", "ConfigError"):
            lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
            return lines[0] if lines else type(cause).__name__
    return None


def failure_message(config: Config, exc: BaseException) -> str:
    d = config.distributed
    ckpt = last_good_checkpoint(config)
    # Only worker failures are retried; a controller error ends the run at once.
    how = (f"failed after {d.max_failures} restart(s) (distributed.max_failures)"
           if getattr(exc, "worker_failures", None) else "failed in Ray Train's controller")
    return (f"Ray Train run {d.run_name!r} {how}: {_reason(exc)}. "
            f"Last good checkpoint: {ckpt or 'none'}; logs in {config.logging.dir}")


def _best(result, monitor: str, mode: str) -> Optional[tuple[str, dict[str, Any]]]:
    scored = [(c, m) for c, m in (getattr(result, "best_checkpoints", None) or [])
              if isinstance(m.get(monitor), (int, float)) and math.isfinite(m[monitor])]
    if not scored:
        return None
    c, m = (min if mode == "min" else max)(scored, key=lambda cm: cm[1][monitor])
    return resolve_pointer(c.path), m


def _copy_artifacts(src: str, dst: Optional[str]) -> None:
    """Mirror the rank-0 logs into Ray's run folder (storage elsewhere than logging.dir), so one
    folder holds a run's results."""
    if not dst or "://" in dst or os.path.abspath(src) == os.path.abspath(dst):
        return
    os.makedirs(dst, exist_ok=True)
    for name in ARTIFACTS:
        path = os.path.join(src, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(dst, name), dirs_exist_ok=True)
        elif os.path.exists(path):
            shutil.copy2(path, os.path.join(dst, name))


def summarize(config: Config, result) -> dict[str, Any]:
    log_dir = config.logging.dir
    summary = read_summary(log_dir)
    if summary is not None:
        missing = [n for n in ("metrics.jsonl",) + (("tensorboard",) if config.logging.tensorboard else ())
                   if not os.path.exists(os.path.join(log_dir, n))]
        if missing:
            raise TrainingError(f"Ray run finished but {', '.join(missing)} is missing under {log_dir}")
    elif getattr(result, "metrics", None):
        # Rank 0 ran on another node and logging.dir is not shared storage: report Ray's last metrics.
        print(f"[ray] warning: no summary.json under {log_dir} on this node (rank 0 ran elsewhere?); "
              "put logging.dir on storage every node sees", flush=True)
        m = result.metrics
        summary = {"global_step": int(m.get("step", 0)),
                   "final": {"val": {k: v for k, v in m.items() if k.startswith("val/")}}}
    else:
        raise TrainingError(f"Ray run finished but rank 0 wrote no summary in {log_dir}")
    if not stores_in_place(config):  # Ray's storage elsewhere (e.g. s3://) also gets the run's results
        _copy_artifacts(log_dir, getattr(result, "path", None))
    ck = config.checkpoint
    best = _best(result, ck.monitor, ck.mode)
    final = summary.get("final", {})
    out = {
        "train": final.get("train", {}), "val": final_val_metrics(summary), "step": summary["global_step"],
        # The engine's own best (it prunes checkpoints by the same measure Ray ranks reports by).
        "best_checkpoint": summary.get("best_checkpoint") or (best[0] if best else None),
        "best_metrics": {ck.monitor: best[1][ck.monitor]} if best else {},
        "checkpoint": resolve_pointer(result.checkpoint.path) if getattr(result, "checkpoint", None) else None,
        "run_dir": getattr(result, "path", None), "log_dir": log_dir,
        "interrupted": summary.get("interrupted"),  # the stop signal the workers agreed on, or None
    }
    return out
