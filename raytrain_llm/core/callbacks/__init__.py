"""Callbacks shipped with the engine, and the default set a run gets from its config."""
from __future__ import annotations

from raytrain_llm.core.callbacks.base import Callback, CallbackList
from raytrain_llm.core.callbacks.early_stopping import EarlyStopping
from raytrain_llm.core.callbacks.graceful_stop import GracefulStop
from raytrain_llm.core.callbacks.lr_scheduler import LRSchedulerCallback
from raytrain_llm.core.callbacks.metrics_logger import MetricsLogger
from raytrain_llm.core.callbacks.mlflow_logger import MLflowLogger
from raytrain_llm.core.callbacks.profiler import Profiler
from raytrain_llm.core.callbacks.progress_bar import ProgressBar
from raytrain_llm.core.callbacks.tensorboard_logger import TensorBoardLogger
from raytrain_llm.core.callbacks.wandb_logger import WandbLogger


def default_callbacks(config, logger=None, console=None, console_is_terminal=None) -> list[Callback]:
    log_dir = config.logging.dir
    cbs: list[Callback] = [
        GracefulStop(),  # first: the agreed stop signal is acted on before other callbacks see it
        MetricsLogger(log_dir, monitor=config.checkpoint.monitor, mode=config.checkpoint.mode),
        LRSchedulerCallback(monitor=config.checkpoint.monitor, logger=logger),
    ]
    trackers = config.logging.trackers
    if config.logging.tensorboard or "tensorboard" in trackers:
        cbs.append(TensorBoardLogger(log_dir, logger=logger))
    # After MetricsLogger: at train end they send the summary.json it has just written.
    if "mlflow" in trackers:
        cbs.append(MLflowLogger(config, logger=logger))
    if "wandb" in trackers:
        cbs.append(WandbLogger(config, logger=logger))
    c = config.callbacks
    if c.early_stopping:
        cbs.append(EarlyStopping(monitor=c.monitor, mode=c.mode, patience=c.early_stopping_patience,
                                 min_delta=c.early_stopping_min_delta, setting="callbacks.monitor"))
    if c.profile_steps:
        cbs.append(Profiler(log_dir, start_step=c.profile_start_step, num_steps=c.profile_steps, logger=logger))
    bar = config.logging.progress_bar
    if bar != "off":
        cbs.append(ProgressBar(enabled=True if bar == "on" else None, stream=console, terminal=console_is_terminal,
                               log_every_s=config.logging.progress_every_s))
    return cbs


__all__ = ["Callback", "CallbackList", "EarlyStopping", "GracefulStop", "LRSchedulerCallback", "MetricsLogger",
           "MLflowLogger", "Profiler", "ProgressBar", "TensorBoardLogger", "WandbLogger", "default_callbacks"]
