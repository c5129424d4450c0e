"""The engine owns backward: a task whose train_step calls `loss.backward()` gets a usage error
saying what to return instead, not torch's "backward through the graph a second time" (or, with
retain_graph=True, silently doubled gradients).

Three checks, all free on an ordinary step:
- the run's first train_step: no parameter had a gradient before it, one has after it. No other
  code runs between the two looks, so only the task's own backward (or its own `.grad` writes)
  can cause it; `torch.autograd.grad` (gradient penalties) fills no `.grad`. One walk over the
  parameters before and after, once per run. It holds alike under DDP (every rank runs the same
  train_step), AMP (the GradScaler scales only the engine's backward), gradient accumulation (the
  first micro-batch) and torch.compile (grads land on the parameters).
- a train_step raising from inside torch's backward (e.g. a compiled graph refusing
  retain_graph=True): only the task calls backward there.
- any later step: the engine's backward failing on a graph the task already freed.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional

import torch

from raytrain_llm.core.errors import UsageError

_FREED_GRAPH = "backward through the graph a second time"  # torch's message for a freed graph
# Where torch's backward runs: Tensor.backward and torch.autograd.backward.
_BACKWARD_FILES = (os.path.join("torch", "_tensor.py"), os.path.join("torch", "autograd", "__init__.py"))


def backward_in_step_error(cause: Optional[BaseException] = None) -> UsageError:
    torch_says = f" (torch: {str(cause).strip().splitlines()[0][:200]})" if cause and str(cause).strip() else ""
    return UsageError("train_step called backward(): the engine owns backward (and AMP loss scaling, gradient "
                      "accumulation, DDP gradient sync, clipping and the optimizer step); return the loss "
                      "instead, as a StepOutput(loss=...), the loss tensor or (loss, metrics), without calling "
                      f"backward(){torch_says}")


def any_grad(params: Iterable[torch.nn.Parameter]) -> bool:
    return any(p.grad is not None for p in params)


def check_first_step(params: Iterable[torch.nn.Parameter], grads_before: bool) -> None:
    """After the run's first train_step: `grads_before` is any_grad(params) just before it."""
    if not grads_before and any_grad(params):
        raise backward_in_step_error()


def run_step(train_step: Callable[..., Any], *args) -> Any:
    """`train_step(*args)`, an error raised inside torch's backward reported as the task's backward."""
    try:
        return train_step(*args)
    except RuntimeError as exc:
        if _raised_in_backward(exc):
            raise backward_in_step_error(exc) from None
        raise


def backward(run_backward: Callable[[torch.Tensor], None], loss: torch.Tensor) -> None:
    """`run_backward(loss)` (the precision's backward), a freed graph reported as the task's
    backward."""
    try:
        run_backward(loss)
    except RuntimeError as exc:
        if _FREED_GRAPH in str(exc):
            raise backward_in_step_error() from None
        raise


def _raised_in_backward(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "backward" and code.co_filename.endswith(_BACKWARD_FILES):
            return True
        tb = tb.tb_next
    return False
