"""The built-in tasks (regression, lm), built on the task contract of `raytrain_llm.core.task`.

`TrainingTask` and `StepOutput` are re-exported here: what a user's task imports.
"""
from raytrain_llm.core.task import StepOutput, TrainingTask
from raytrain_llm.tasks.registry import AVAILABLE_TASKS, register_task

__all__ = ["AVAILABLE_TASKS", "StepOutput", "TrainingTask", "register_task"]
