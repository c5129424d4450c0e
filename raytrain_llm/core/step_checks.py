"""What a task's steps must return, checked where the engine receives it.

A task's mistakes (a detached or per-sample loss, a metric that is a string or a vector, a
metric named like one of the engine's own fields) otherwise surface as torch errors deep in
the engine, or worse, silently: a metric named `loss` used to be summed into the logged loss.
Each check names the hook and the metric, and is a usage error (exit 2). The checks cost a few
attribute reads per step; the metric names are checked once per distinct set of names.
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Iterable, Optional

import numpy as np
import torch

from raytrain_llm.core.errors import UsageError, quote, raised_on_every_rank

# Fields of the engine's train records (monitoring.PerformanceMonitor.summary included): a task
# metric of the same name would be averaged into, or overwrite, the engine's value.
ENGINE_FIELDS = frozenset({
    "loss", "lr", "grad_norm", "split", "step", "epoch", "skipped_steps", "tokens_per_s", "samples_per_s",
    "tflops", "mfu", "step_time", "data_wait", "data_wait_share", "memory_gib"})


def check_loss(loss: Any, hook: str = "train_step") -> None:
    """The loss the engine backpropagates: a one-element float tensor attached to the graph."""
    if not torch.is_tensor(loss):
        raise UsageError(f"{hook} returned a loss of type {type(loss).__name__}: it must be a tensor computed "
                         "from the model's output (backward needs its graph)")
    if loss.numel() != 1:
        raise UsageError(f"{hook} returned a loss of shape {list(loss.shape)}: reduce it to one number "
                         "(e.g. .mean() over the batch)")
    if not loss.requires_grad:
        raise UsageError(f"{hook} returned a loss that does not require grad: it was detached (.detach(), "
                         ".item(), an integer dtype), computed under torch.no_grad(), or the model has no "
                         "trainable parameters")


def check_metric_names(metrics: dict[str, Any], hook: str, training: bool) -> None:
    for name in metrics:
        if not isinstance(name, str):
            raise UsageError(f"{hook} returned a metric named {name!r}: metric names must be strings")
        taken = name in ENGINE_FIELDS or name.startswith("val/") if training else name == "loss"
        if taken:
            raise UsageError(f"{hook} returned a metric named {name!r}, a name the engine logs itself"
                             + (" (train records hold these fields; val/ names are validation's)" if training
                                else " (val/loss is validation_step's loss)") + ": rename it")


def check_metric_values(metrics: dict[str, Any], hook: str) -> None:
    """Each metric is one number: a Python or numpy number, or a one-element tensor."""
    for name, value in metrics.items():
        metric_float(name, value, hook, sync=False)


def metric_float(name: str, value: Any, hook: str, sync: bool = True) -> float:
    """`value` as a float, or a UsageError naming the metric and the hook (sync=False: check only)."""
    if torch.is_tensor(value):
        if value.numel() != 1 or value.is_complex():
            raise UsageError(f"{hook}: metric {name!r} is a tensor of shape {list(value.shape)}, not one "
                             "number (reduce it, e.g. .mean())")
        return float(value) if sync else math.nan
    if isinstance(value, (numbers.Real, np.bool_)):  # Python and numpy numbers, bools
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return float(value.reshape(()))
    raise UsageError(f"{hook}: metric {name!r} is a {type(value).__name__} ({str(value)[:40]!r}), not a number")


def check_monitor(monitor: str, val_metrics: dict[str, float], train_record: dict[str, Any]) -> None:
    """checkpoint.monitor, at the first validation: a misspelt one would leave keep_best keeping
    nothing, summary.json without a best and ReduceLROnPlateau never stepping, all silently.
    `train_record`: the train record of this step (the engine logs one before each validation),
    so a name is accepted only if this run logs it (`mfu` is absent on CPU). The same on every
    rank: both are reduced."""
    train_names = {k for k, v in train_record.items() if isinstance(v, float)}
    if monitor in val_metrics or monitor in train_names:
        return
    known = sorted(val_metrics) + sorted(train_names)
    close = difflib.get_close_matches(monitor, known, n=1)
    raise raised_on_every_rank(UsageError(
        f"checkpoint.monitor: {quote(monitor)} is not a validation or train metric of this run"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + f" (validation: {', '.join(sorted(val_metrics)) or 'none'})"))


def check_monitor_settings(config, declared: Optional[frozenset], task: str) -> None:
    """The monitors of a run that validates, against the names the task declares
    (TrainingTask.validation_metrics), before it starts. checkpoint.monitor may also name a
    train-record field, which depends on the run (mfu on CUDA): only its `val/` names are
    checked here, the rest at the first validation (check_monitor). Early stopping follows
    validation metrics only, so any name of callbacks.monitor is checked."""
    if not config.training.validate:
        return
    problem = unknown_metric(config.checkpoint.monitor, declared, "checkpoint.monitor", task)
    if not problem and config.callbacks.early_stopping:
        problem = unknown_metric(config.callbacks.monitor, declared, "callbacks.monitor", task, any_name=True)
    if problem:
        raise UsageError(problem)


def unknown_metric(name: str, declared: Optional[frozenset], setting: str, task: str,
                   any_name: bool = False) -> Optional[str]:
    """Why a setting's metric name is not among the declared validation metrics, or None when it
    is, or cannot be checked yet (nothing declared; a name without `val/` unless any_name: the
    setting takes validation metrics only)."""
    if declared is None or (not any_name and not name.startswith("val/")) or name in declared:
        return None
    close = difflib.get_close_matches(name, sorted(declared), n=1)
    return (f"{setting}: {quote(name)} is not a validation metric of task {quote(task)}"
            + (f" (did you mean {close[0]!r}?)" if close else "") + f" (validation: {', '.join(sorted(declared))})")


def check_declared_validation(reported: Iterable[str], declared: Optional[frozenset], task: str) -> None:
    """At the first validation: a task's declaration must be what its validation reports, or the
    checks made from it before the run would refuse good names or pass bad ones."""
    reported = set(reported)
    if declared is None or reported == set(declared):
        return
    raise raised_on_every_rank(UsageError(
        f"{task}.validation_metrics() declares {', '.join(sorted(declared))} but validation reported "
        f"{', '.join(sorted(reported)) or 'nothing'}: make them agree, or return None"))
