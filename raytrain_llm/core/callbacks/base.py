"""`Callback`: hooks the engine calls around the loop; every hook is a no-op by default.

Hooks receive the engine, so a callback can read `engine.global_step`, `engine.config`,
`engine.optimizer`, ... and ask the loop to stop with `engine.should_stop = True`.
A callback with state to survive a resume returns it from `state_dict` (plain Python
values only: checkpoints load with `weights_only=True`).
"""
from __future__ import annotations

from typing import Any, Optional

from raytrain_llm.core.errors import UsageError


class Callback:
    def on_train_start(self, engine) -> None: ...
    def on_train_end(self, engine) -> None: ...
    def on_epoch_start(self, engine, epoch: int) -> None: ...
    def on_epoch_end(self, engine, epoch: int) -> None: ...
    def on_batch_start(self, engine, batch_idx: int) -> None: ...
    def on_batch_end(self, engine, step: int, outputs) -> None:
        """After each optimizer step; `outputs` is the last micro-batch's StepOutput."""
    def on_log(self, engine, record: dict[str, Any]) -> None:
        """A logged record of floats: train records every `log_every_n_steps`, and each validation."""
    def on_validation_start(self, engine) -> None: ...
    def on_validation_end(self, engine, metrics: dict[str, float]) -> None: ...
    def on_save_checkpoint(self, engine, path: Optional[str], metrics: dict[str, float]) -> None:
        """On every rank after a save; `path` is None on ranks that did not write."""
    def on_load_checkpoint(self, engine, state: dict[str, Any]) -> None: ...
    def on_exception(self, engine, exc: BaseException) -> None: ...

    def state_dict(self) -> Optional[dict[str, Any]]:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    def state_key(self) -> str:
        return type(self).__name__


class CallbackList:
    """Calls a hook on every callback in order."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise UsageError(f"callbacks: {cb!r} is not a raytrain_llm.core.callbacks.Callback")

    def __getattr__(self, hook: str):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)

        return call

    def state_dict(self) -> dict[str, Any]:
        out = {}
        for key, cb in zip(self._state_keys(), self.callbacks):
            state = cb.state_dict()
            if state is not None:
                out[key] = state
        return out

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for key, cb in zip(self._state_keys(), self.callbacks):
            if key in states:
                cb.load_state_dict(states[key])

    def _state_keys(self) -> list[str]:
        """Each callback's state_key, "#2", "#3"... added from the second of a kind on: two
        EarlyStopping callbacks (the config's and a task's) must not share one checkpoint slot."""
        seen: dict[str, int] = {}
        keys = []
        for cb in self.callbacks:
            n = seen[cb.state_key] = seen.get(cb.state_key, 0) + 1
            keys.append(cb.state_key if n == 1 else f"{cb.state_key}#{n}")
        return keys
