"""`Progress`: where a run stands, as one object the engine's parts pass around and a checkpoint
saves and restores as a whole.

`global_step` counts optimizer steps (skipped ones included); `(epoch, batch_in_epoch)` is the
data position, in micro-batches of this run's global batch (workers x training.batch_size).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from raytrain_llm.core.config import Config


@dataclasses.dataclass
class Progress:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    skipped_steps: int = 0  # nan_policy=skip: steps counted but not applied (the LR schedule skips them too)
    skips_in_a_row: int = 0  # a run that only skips has diverged; not saved: a resumed run counts afresh
    val_step: int = -1  # the global_step of the last validation (-1: none yet)
    val_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # that validation's metrics
    should_stop: bool = False  # the loop ends after the current step (a callback or request_stop set it)
    stopped_early: bool = False  # stopped by request_stop, before epochs/max_steps ran out
    stop_reason: str = ""

    def request_stop(self, reason: str) -> None:
        """End after this step; the first reason given stands (a later one in the same step is
        a consequence, e.g. early stopping after an interruption)."""
        if not self.stop_reason:
            self.stop_reason = reason
        self.should_stop, self.stopped_early = True, True

    def epoch_number(self) -> int:
        """The epoch the last step trained in, counted from 1: the one number the console,
        metrics.jsonl, summary.json, checkpoints' meta.json and Ray reports show (a 3-epoch run
        ends in epoch 3). `epoch` is the data position's 0-based index; it moves on when an
        epoch ends, before that epoch's validation and save."""
        return self.epoch if self.batch_in_epoch == 0 and self.epoch > 0 else self.epoch + 1

    def validated_now(self) -> bool:
        return self.val_step == self.global_step

    def current_val_metrics(self) -> dict[str, float]:
        """The last validation's metrics if it validated the weights of this step, else {}."""
        return dict(self.val_metrics) if self.validated_now() else {}

    def save_key(self) -> tuple:
        """Equal for two moments with nothing new to save. A save made at a step goes stale when
        the epoch ends or a validation runs after it (e.g. every_n_steps lands on the epoch's last
        step): it would resume inside a finished epoch and lack the val metric keep_best ranks
        by, so the step is saved again."""
        return self.global_step, self.epoch, self.batch_in_epoch, self.val_step

    def state_dict(self, *, world_size: int, total_steps: int) -> dict[str, Any]:
        """The checkpoint's `progress` entry. `world_size` and `total_steps` (the length the
        scheduler was planned for) are the run's, saved beside the progress for a resume to
        convert the data position and re-plan the schedule."""
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "skipped_steps": self.skipped_steps, "world_size": world_size, "val_step": self.val_step,
                "total_steps": total_steps,
                # a resumed run that has nothing left to train reports these, not a re-run
                "val_metrics": self.current_val_metrics()}

    @classmethod
    def from_state_dict(cls, saved: dict[str, Any], batch_in_epoch: int) -> "Progress":
        """The progress a checkpoint's `progress` entry describes; `batch_in_epoch` is its data
        position converted to this run's global batch (`Resumer`)."""
        return cls(global_step=int(saved["global_step"]), epoch=int(saved["epoch"]), batch_in_epoch=batch_in_epoch,
                   skipped_steps=int(saved.get("skipped_steps", 0)), val_step=int(saved.get("val_step", -1)),
                   val_metrics={k: float(v) for k, v in (saved.get("val_metrics") or {}).items()})

    def load(self, other: "Progress") -> None:
        """Take every field of `other`, in place: the parts holding this object see the change."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(other, field.name))


def planned_total_steps(config: Config, progress: Progress, num_batches: int) -> int:
    """The run's length in optimizer steps: the steps done plus the steps left from the data
    position at this run's batch (epochs x steps per epoch from the start), cut by max_steps.
    `num_batches`: micro-batches in an epoch at this run's global batch."""
    t = config.training
    steps_per_epoch = math.ceil(num_batches / t.grad_accum_steps)
    left_in_epoch = math.ceil(max(0, num_batches - progress.batch_in_epoch) / t.grad_accum_steps)
    total = progress.global_step + left_in_epoch + max(0, t.epochs - progress.epoch - 1) * steps_per_epoch
    return min(total, t.max_steps) if t.max_steps else total


class ProgressField:
    """`engine.<name>` reads and writes `engine.progress.<field>`: the attributes callbacks and
    launchers use (`engine.global_step`, `engine.should_stop = True`, ...)."""

    def __init__(self, field: str = ""):
        self.field = field

    def __set_name__(self, owner, name: str) -> None:
        self.field = self.field or name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj.progress, self.field)

    def __set__(self, obj, value) -> None:
        setattr(obj.progress, self.field, value)
