"""`train_worker`: the per-process entry. Every launcher (in-process, spawn, Ray Train) calls it.

It builds the task, data module, callbacks and engine from a `Config` and runs them. Launchers
add what only they know (a Ray Data module, a callback that reports to Ray, a checkpoint to
resume from) through the keyword arguments; nothing here knows which launcher called.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from raytrain_llm.core.callbacks import Callback, default_callbacks
from raytrain_llm.core.config import Config
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.engine import TrainingEngine
from raytrain_llm.core.logger import Logger
from raytrain_llm.core.output_dirs import check_output_dirs
from raytrain_llm.launchers.task_resolution import resolve_task


def train_worker(config: Config, *, dist: Optional[DistributedManager] = None,
                 data_module_factory: Optional[Callable[[Any], Any]] = None,
                 extra_callbacks: Optional[list[Callback]] = None,
                 resume_from: Optional[str] = None, data_checked: bool = False, console=None,
                 console_is_terminal: Optional[bool] = None) -> dict[str, Any]:
    """`data_checked`: the launcher ran the data module's `check_data` before the workers started.
    `console`: where rank 0's lines and progress bar go (default stderr), and
    `console_is_terminal` whether what shows it is a terminal (default: `console.isatty()`)."""
    dist = dist or DistributedManager()
    with dist.usage_errors_on_every_rank():  # before the first step, not at the first save
        check_output_dirs(config, writes_checkpoints=dist.is_main)
    logger = Logger(level=config.logging.level, log_dir=config.logging.dir, rank=dist.rank, console=console)
    try:
        with dist.usage_errors_on_every_rank():  # e.g. a task module a worker cannot import
            task = resolve_task(config.task)(config)
            data_module = task.build_data_module()
            if data_module_factory is not None:
                data_module = data_module_factory(data_module)
            callbacks = default_callbacks(config, logger, console=console, console_is_terminal=console_is_terminal) \
                + list(extra_callbacks or [])
        engine = TrainingEngine(config, task, data_module=data_module, callbacks=callbacks, dist=dist,
                                logger=logger, resume_from=resume_from, check_data=not data_checked)
        return engine.fit()
    finally:
        logger.close()
