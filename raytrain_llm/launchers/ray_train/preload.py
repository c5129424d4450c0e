"""The driver's imports for building a Ray run, made on a thread while `ray.init` starts the node.

`ray.init` of a local node mostly waits for the processes it started (GCS, raylet, agents) to
come up; the driver's next step, `build_trainer`, first imports Ray Train, Ray Data and the
task (1-2 s of CPU). Made during that wait they are off the command's critical path. The
imports themselves are the same; an import that fails here fails again, with its message,
where the module is used.
"""
from __future__ import annotations

import importlib
import threading

# What build_trainer and fit import after ray.init (measured with `python -X importtime`).
MODULES = ("ray.train", "ray.train.torch", "ray.data", "raytrain_llm.launchers.ray_train.data_shards",
           "raytrain_llm.launchers.ray_train.private_cluster", "raytrain_llm.launchers.ray_train.early_split",
           "raytrain_llm.core.checkpointing")


def _import_all(task: str) -> None:
    from raytrain_llm.launchers.task_resolution import resolve_task

    try:
        for name in MODULES:
            importlib.import_module(name)
        resolve_task(task)
    except Exception:  # noqa: BLE001 - raised again where the module is used
        pass


def import_in_background(task: str) -> threading.Thread:
    """Starts the imports of a Ray run's driver on a daemon thread; `join()` it before using them."""
    thread = threading.Thread(target=_import_all, args=(task,), name="raytrain-preload", daemon=True)
    thread.start()
    return thread
