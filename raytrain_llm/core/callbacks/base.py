"""`Callback`: hooks the engine calls around the loop; every hook is a no-op by default.

Every hook receives the engine first, so a callback can read `engine.global_step`,
`engine.epoch`, `engine.config`, `engine.optimizer`, `engine.dist` (rank, world size),
`engine.logger`, ... Hooks run on every rank, in the order the callbacks were given (the
config's defaults, then the launcher's, then `TrainingTask.configure_callbacks`). To end the
run after the current step, call `engine.request_stop(reason)`; the engine agrees on it across
ranks. Hooks return nothing.

An exception raised by a hook ends the run: `on_exception` is called on every callback and
the exception propagates to the launcher. Raise `UsageError` (exit 2, one line) for a user's
mistake; from `on_load_checkpoint` and `on_train_start` it stops every rank alike, before any
step. A callback with state to survive a resume returns it from `state_dict` (plain Python
values, tensors or NumPy numbers only: checkpoints load with `weights_only=True`, and
anything else is a UsageError at the save naming the callback).
"""
from __future__ import annotations

from typing import Any, Optional

from raytrain_llm.core.errors import UsageError


class Callback:
    def on_train_start(self, engine) -> None:
        """Once, before the first step: after a resume (progress, model and callback state are
        the checkpoint's) and before the first epoch starts."""

    def on_train_end(self, engine) -> None:
        """Once, after the last step and the final validation and save; not after an exception."""

    def on_epoch_start(self, engine, epoch: int) -> None:
        """Before the epoch's first batch; `epoch` counts from 0 (a resumed epoch starts mid-way,
        at `engine.batch_in_epoch`)."""

    def on_epoch_end(self, engine, epoch: int) -> None:
        """After an epoch ran to its end (not one cut short by `max_steps` or a stop), before its
        validation and save."""

    def on_batch_start(self, engine, batch_idx: int) -> None:
        """Before each micro-batch is fetched; `batch_idx` is its index in the epoch (with
        gradient accumulation, several per optimizer step)."""

    def on_batch_end(self, engine, step: int, outputs) -> None:
        """After each optimizer step (also one skipped for a non-finite loss); `step` is
        `engine.global_step` (from 1), `outputs` the last micro-batch's StepOutput."""

    def on_step_agreed(self, engine, step: int, agreed) -> None:
        """At the end of each optimizer step's turn (after its log, validation and save), once the
        ranks agreed (core/step_agreement.StepAgreement: stop, stop signal, preemption notice):
        the same `agreed` on every rank, so a collective here (a save) is called by all of them."""

    def on_log(self, engine, record: dict[str, Any]) -> None:
        """A logged record: `split` ("train" or "val"), `step`, `epoch` (from 1: Progress.epoch_number) and float metrics. Train
        records (window averages, throughput) come every `log_every_n_steps`, at an epoch's and
        the run's last step and before each validation or save; val records (`val/...` keys)
        after each validation."""

    def on_validation_start(self, engine) -> None:
        """Before a validation pass (the model is switched to eval mode right after)."""

    def on_validation_end(self, engine, metrics: dict[str, float]) -> None:
        """After a validation pass; `metrics` are averaged over samples and ranks, `val/...` keys."""

    def on_save_checkpoint(self, engine, path: Optional[str], metrics: dict[str, float]) -> None:
        """On every rank after a save; `path` is the checkpoint folder, None on ranks that did not
        write; `metrics` are the ones the checkpoint is ranked by (this step's train/val values)."""

    def on_load_checkpoint(self, engine, state: dict[str, Any]) -> None:
        """After a resume restored the engine and every callback's `load_state_dict`; `state` is
        the whole checkpoint (model, optimizer, progress, config, callbacks, ...)."""

    def on_exception(self, engine, exc: BaseException) -> None:
        """When the run ends with `exc` (also KeyboardInterrupt); the engine re-raises it after."""

    def state_dict(self) -> Optional[dict[str, Any]]:
        """What to save in each checkpoint under `state_key`; None saves nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """At a resume, with what `state_dict` returned when the checkpoint was saved."""

    @property
    def state_key(self) -> str:
        """The checkpoint slot: the class name (a second callback of a class gets "#2", ...)."""
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
