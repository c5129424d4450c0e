"""`AVAILABLE_TASKS`: the task names `--task` accepts, besides a user's `package.module:Class`.

Entries are import paths, not classes, so listing tasks never imports heavy model code; the
launch layer imports the class (`raytrain_llm.launchers.task_resolution.resolve_task`).
"""
from __future__ import annotations

AVAILABLE_TASKS: dict[str, str] = {
    "regression": "raytrain_llm.tasks.regression_task:RegressionTask",
    "lm": "raytrain_llm.tasks.lm_task:LanguageModelingTask",
}


def register_task(name: str, target: str) -> None:
    """`--task name` then imports `target` (`package.module:Class`, a TrainingTask subclass)."""
    AVAILABLE_TASKS[name] = target
