"""The launcher without Ray or extra processes: one run in this process (`distributed.launcher=local`)."""
from __future__ import annotations

import sys
from typing import Any

from raytrain_llm.core import interruption
from raytrain_llm.core.config import Config
from raytrain_llm.launchers.task_resolution import resolve_task
from raytrain_llm.launchers.worker import train_worker


def run_in_process(config: Config) -> dict[str, Any]:
    workers = config.distributed.num_workers
    if config.distributed.launcher == "local" and workers > 1:  # spawn with 1 worker also lands here
        print(f"warning: distributed.launcher=local trains in this one process; distributed.num_workers={workers} "
              f"is ignored (launcher=spawn or ray runs {workers} workers)", file=sys.stderr)
    with interruption.handling():  # SIGTERM / Ctrl-C: finish the step, save, then return
        result = train_worker(config)
    agreed = interruption.agreed()  # the stop the run took, not a signal that came after its last step
    return {**result, "interrupted": interruption.signal_name(agreed) if agreed else None}


def check_data_up_front(config: Config) -> None:
    """The data module's check (e.g. every token id of a token file), once, before any worker
    starts: a long pass inside a worker would keep the other ranks waiting in a collective,
    which times out on files of hundreds of GB."""
    resolve_task(config.task)(config).build_data_module().check_data()
