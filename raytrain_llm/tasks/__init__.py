from raytrain_llm.tasks.base_task import StepOutput, TrainingTask
from raytrain_llm.tasks.registry import AVAILABLE_TASKS, register_task, resolve_task

__all__ = ["AVAILABLE_TASKS", "StepOutput", "TrainingTask", "register_task", "resolve_task"]
