"""`AVAILABLE_TASKS`: task names for `--task`, plus `package.module:Class` for user tasks.

Entries are import paths, not classes, so listing tasks never imports heavy model code.
"""
from __future__ import annotations

import importlib

from raytrain_llm.core.errors import UsageError
from raytrain_llm.tasks.base_task import TrainingTask

AVAILABLE_TASKS: dict[str, str] = {
    "regression": "raytrain_llm.tasks.regression_task:RegressionTask",
    "lm": "raytrain_llm.tasks.lm_task:LanguageModelingTask",
}


def register_task(name: str, target: str) -> None:
    AVAILABLE_TASKS[name] = target


def resolve_task(name: str) -> type[TrainingTask]:
    target = AVAILABLE_TASKS.get(name, name)
    if ":" not in target:
        raise UsageError(f"--task: unknown task {name!r} (known: {', '.join(sorted(AVAILABLE_TASKS))}, "
                         "or package.module:ClassName)")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as exc:  # also ":Cls" (empty) and ".mod:Cls" (relative)
        raise UsageError(f"--task: cannot import {module_name!r} for task {name!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"--task: {module_name!r} has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, TrainingTask)):
        raise UsageError(f"--task: {target} is not a TrainingTask subclass")
    return cls
