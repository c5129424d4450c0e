"""`resolve_task`: the `TrainingTask` class a `--task` name stands for, imported on demand.

A name is one of `raytrain_llm.tasks.AVAILABLE_TASKS` (the built-in and registered tasks) or a
user's `package.module:Class`. Launchers resolve the name in every process that builds the task
(the driver, spawn and Ray workers), so a task module that a worker cannot import is a usage error
there as well.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import traceback
from typing import Optional

from raytrain_llm.core.errors import UsageError, clip, quote
from raytrain_llm.core.task import TrainingTask
from raytrain_llm.tasks.registry import AVAILABLE_TASKS


def resolve_task(name: str) -> type[TrainingTask]:
    target = AVAILABLE_TASKS.get(name, name)
    if ":" not in target:
        raise UsageError(f"--task: unknown task {quote(name)}{_suggest_task(name)} (known: "
                         f"{', '.join(sorted(AVAILABLE_TASKS))}, or package.module:ClassName)")
    module_name, _, class_name = target.partition(":")
    try:
        module = _import(module_name)
    except (ImportError, ValueError, TypeError) as exc:  # also ":Cls" (empty) and ".mod:Cls" (relative)
        raise UsageError(f"--task: cannot import {quote(module_name)} for task {quote(name)}: {clip(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module itself fails (SyntaxError, NameError, ...)
        raise UsageError(f"--task: importing {quote(module_name)} for task {quote(name)} failed: "
                         f"{type(exc).__name__}: {exc}{_where(exc)}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"--task: {quote(module_name)} has no class {quote(class_name)}{_shadowed(module)}")
    if not (isinstance(cls, type) and issubclass(cls, TrainingTask)):
        raise UsageError(f"--task: {target} is not a TrainingTask subclass")
    if inspect.isabstract(cls):  # else a TypeError deep in the launcher, on every worker
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise UsageError(f"--task: {target} does not implement {missing} (required by TrainingTask)")
    return cls


def _suggest_task(name: str) -> str:
    """" (did you mean 'lm'?)" for a known task name that differs in case or is close to it."""
    known = sorted(AVAILABLE_TASKS)
    same = [k for k in known if k.lower() == name.lower()]
    close = same or difflib.get_close_matches(name.lower(), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _where(exc: BaseException) -> str:
    """' (at file.py:line)' of the innermost frame; a SyntaxError names its place itself."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) or not frames:
        return ""
    return f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"


def _shadowed(module) -> str:
    """Which file was imported, when the current folder has a module of that name that lost to it
    (a `train.py` or `test.py` of the user's: the same name is taken further up sys.path)."""
    top = module.__name__.split(".")[0]
    # The top-level name is what shadowing takes (mypkg.slow lives in whichever mypkg won).
    path = getattr(sys.modules.get(top, module), "__file__", None)
    mine = [os.path.abspath(p) for p in (f"{top}.py", os.path.join(top, "__init__.py")) if os.path.exists(p)]
    if not mine or (path and os.path.abspath(path) in mine):
        return ""
    return f" (that name imported {path or 'a built-in module'}, not {mine[0]}: rename your module)"


def _import(module_name: str):
    """Import, also from the current folder (as `python -m` and uvicorn do): `train.py` may be
    run from elsewhere, and then only its own folder is on sys.path."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != module_name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def import_root(name: str) -> Optional[str]:
    """The sys.path folder a user task's module was imported from (call after resolve_task), so
    that Ray workers started on this machine can import it too; None for the built-in tasks and
    for modules without a file."""
    module_name = AVAILABLE_TASKS.get(name, name).partition(":")[0]
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module_name.split(".")[0] == "raytrain_llm" or not path:
        return None
    root = os.path.dirname(os.path.abspath(path))
    levels = module_name.count(".") + (os.path.basename(path) == "__init__.py")
    for _ in range(levels):
        root = os.path.dirname(root)
    return root
