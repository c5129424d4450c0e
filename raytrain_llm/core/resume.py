"""`Resumer`: which checkpoint a run starts from, and a run's state restored from it.

A killed run continues exactly (same weights, optimizer moments, LR, RNG streams and next
batch). A run resumed with a changed config follows the config where it can: the schedule is
planned for the new length, the optimizer's settings are the new ones, a changed global batch
converts the data position; each such change is logged as a warning.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import TYPE_CHECKING, Any, Optional

import torch

from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.config import Config
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.errors import CheckpointError, UsageError
from raytrain_llm.core.logger import Logger
from raytrain_llm.core.progress import Progress, planned_total_steps
from raytrain_llm.core.rng_state import restore_rng
from raytrain_llm.core.task import LRSchedule, TrainingTask

if TYPE_CHECKING:
    from raytrain_llm.core.parallel.expert_checkpoint import ExpertShards


@dataclasses.dataclass
class Schedule:
    """The LR scheduler a run steps (None: the task has none) and the run's length in optimizer
    steps it is planned for."""
    scheduler: Any
    total_steps: int


class Resumer:
    """`find()` the checkpoint to start from (checkpoint.resume, or a launcher's `resume_from`),
    then `restore(...)` it into a run's progress, model, optimizer, scheduler and scaler.

    Callback state is the caller's to restore (`state["callbacks"]`). After `find()`,
    `resumed_from_elsewhere` says the run continues another run's checkpoint, named by the user:
    this run's folder holds none of that run's history.
    """

    def __init__(self, config: Config, task: TrainingTask, dist: DistributedManager, logger: Logger,
                 checkpoint_manager: Optional[CheckpointManager] = None, resume_from: Optional[str] = None):
        self.config, self.task, self.dist, self.logger = config, task, dist, logger
        self.checkpoint_manager = checkpoint_manager
        self.resume_from = resume_from
        self.resumed_from_elsewhere = False

    # ------------------------------------------------------------------ finding
    def find(self) -> tuple[Optional[str], Optional[dict[str, Any]]]:
        """(path, state) of the checkpoint to resume, or (None, None) for a fresh run. A UsageError
        for a named checkpoint that is missing or unreadable, or a folder holding another run's."""
        explicit, mode, manager = self.resume_from, self.config.checkpoint.resume, self.checkpoint_manager
        if explicit is None and mode == "none":
            if manager is not None:
                manager.refuse_earlier_run()
            return None, None
        if explicit is None and mode == "auto":
            return manager.load_latest_valid() if manager is not None else (None, None)
        path = explicit or mode
        # The user's pick from another run's folder: this folder's logs are not that run's.
        self.resumed_from_elsewhere = explicit is None and not _inside(path, self.config.checkpoint_dir)
        if not os.path.exists(path):
            raise UsageError(f"checkpoint.resume: no checkpoint at {path}")
        try:
            state = CheckpointManager.load(path)
        except CheckpointError as exc:
            raise UsageError(f"checkpoint.resume: {exc}") from None
        if explicit is None and manager is not None:
            if self.resumed_from_elsewhere:
                # A branch of another run: checkpoints already here are some other run's, which
                # rotation would delete (or keep in place of this run's), as for a fresh run.
                manager.refuse_earlier_run()
            else:
                # A user's choice of an older step. A launcher's restore point (a Ray restart) may
                # trail this folder by a save that was never reported; that run re-creates those steps.
                manager.refuse_later_checkpoints(int(state["progress"]["global_step"]))
        return path, state

    # ------------------------------------------------------------------ restoring
    def restore(self, state: dict[str, Any], *, progress: Progress, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, schedule: Schedule, scaler=None, num_batches: int,
                experts: Optional[ExpertShards] = None) -> Schedule:
        """Load `state` into `progress`, `model` (unwrapped), `optimizer` and `scaler` in place;
        returns the schedule to go on with. `schedule` is the one built for this run's config
        (from step 0), `num_batches` the micro-batches of an epoch at this run's global batch,
        `experts` the MoE experts `model` holds a slice of (expert parallelism)."""
        from raytrain_llm.core.sharded.checkpoint import load_model_and_optimizer  # DCP: only on a resume

        planned = _group_settings(optimizer)  # from this run's config, before the load
        try:
            load_model_and_optimizer(state, model, optimizer, experts)  # full or sharded, into whole or sharded
        except (RuntimeError, ValueError, KeyError) as exc:
            # The user's config no longer describes the saved run: a usage error (exit 2), and
            # the checkpoint folder is left as it is.
            raise UsageError(f"checkpoint does not match this run's model/optimizer: "
                             f"{mismatch_cause(state, self.config.to_dict(), exc)}") from None
        saved = state["progress"]
        progress.load(Progress.from_state_dict(saved, self._resume_position(state)))
        schedule = self._fit_length(schedule, progress, num_batches)
        if schedule.scheduler is not None and state.get("scheduler") is not None:
            schedule = self._load_scheduler(schedule, optimizer, progress, state["scheduler"],
                                            saved.get("total_steps"))
        self._keep_config_settings(optimizer, schedule.scheduler, planned, state)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") or []
        if len(rng) == self.dist.world_size:
            restore_rng(rng[self.dist.rank])
        elif rng and self.dist.is_main:
            self.logger.warning(f"checkpoint was written by {len(rng)} ranks, now {self.dist.world_size}: "
                                "RNG streams (dropout, ...) are reseeded")
        return schedule

    def _resume_position(self, state: dict[str, Any]) -> int:
        """The micro-batch of the epoch to go on from, in this run's global batch (workers x batch).

        The epoch's sample order does not depend on the batch, and global batch i is the i-th
        slice of it, so the samples already trained on are the order's first batch_in_epoch x
        (the saved global batch). With another global batch the position is converted, rounding
        down: a few samples are then seen twice in this epoch rather than never."""
        progress = state["progress"]
        done = int(progress["batch_in_epoch"])
        saved_batch = (state.get("config") or {}).get("training", {}).get("batch_size")
        if not done or saved_batch is None:
            return done
        saved_global = int(saved_batch) * int(progress.get("world_size", self.dist.world_size))
        now_global = self.config.training.batch_size * self.dist.world_size
        if saved_global == now_global:
            return done
        samples = done * saved_global
        position, repeated = divmod(samples, now_global)
        if self.dist.is_main:
            self.logger.warning(
                f"the global batch (workers x training.batch_size) changed from {saved_global} to {now_global}: "
                f"epoch {int(progress['epoch']) + 1} goes on after sample {position * now_global} of its order"
                + (f"; {repeated} samples already trained on in this epoch are seen again" if repeated else ""))
        return position

    def _fit_length(self, schedule: Schedule, progress: Progress, num_batches: int) -> Schedule:
        """The length differs from the set-up's when the global batch changed mid-run; our
        schedules (not yet loaded) are then planned to end where the run ends."""
        total = planned_total_steps(self.config, progress, num_batches)
        if progress.epoch >= self.config.training.epochs or total == schedule.total_steps:
            return schedule
        for fn in getattr(schedule.scheduler, "lr_lambdas", None) or []:
            if isinstance(fn, LRSchedule):
                fn.decay_steps = max(1, total - fn.warmup)
        return Schedule(schedule.scheduler, total)

    def _load_scheduler(self, schedule: Schedule, optimizer: torch.optim.Optimizer, progress: Progress,
                        saved: dict[str, Any], saved_total: Optional[int]) -> Schedule:
        """Restore the scheduler's position, but keep the schedule's length from this run's config.

        LambdaLR saves a callable object's attributes, so loading would bring back the old run's
        decay length: a run resumed with more epochs or a larger max_steps would finish its decay
        at the old end and then sit at the floor. The length is what the user just asked for.
        """
        scheduler, total = schedule.scheduler, schedule.total_steps
        planned = _schedule_shapes(scheduler)
        # Only for a run that goes on (a shorter one, or a finished one re-reported, has no steps
        # left to schedule, and a fixed-length schedule could not even be stepped to the position).
        if planned is None and saved_total not in (None, total) and progress.global_step < total \
                and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return Schedule(self._replan_task_scheduler(optimizer, progress, total, int(saved_total)), total)
        scheduler.load_state_dict(saved)
        if planned is None or _schedule_shapes(scheduler) == planned:
            return schedule
        before = scheduler.lr_lambdas[0].decay_steps
        for fn, shape in zip(scheduler.lr_lambdas, planned):
            fn.__dict__.update(shape)
        _reapply_schedule(optimizer, scheduler)
        if self.dist.is_main:
            self.logger.warning(f"LR schedule follows this run's config, not the checkpoint's: decay over "
                                f"{planned[0]['decay_steps']} steps (the checkpoint's run: {before})")
        return schedule

    def _replan_task_scheduler(self, optimizer: torch.optim.Optimizer, progress: Progress, total: int,
                               saved_total: int):
        """A task's own scheduler, for a run whose length changed: built again for this run's
        length (as the task planned it, e.g. OneCycleLR(total_steps=...)) and stepped to the
        position, instead of loading one that would end, or fail, at the old length."""
        for group in optimizer.param_groups:  # chainable schedulers start from the peak
            group["lr"] = group.get("initial_lr", group["lr"])
        scheduler = self.task.build_scheduler(optimizer, total)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore")
            for _ in range(progress.global_step - progress.skipped_steps):
                scheduler.step()
        if self.dist.is_main:
            self.logger.warning(f"{type(scheduler).__name__} was planned again for {total} steps "
                                f"(the checkpoint's run: {saved_total}) and stepped to step {progress.global_step}")
        return scheduler

    def _keep_config_settings(self, optimizer: torch.optim.Optimizer, scheduler, planned: list[dict[str, Any]],
                              state: dict[str, Any]) -> None:
        """The optimizer's settings (peak LR, weight decay, betas, fused, ...) follow this run's
        config, as config.yaml says; its moments and the schedule's position are the checkpoint's.
        torch's load would bring back the saved run's settings and silently ignore the new ones.
        Only when the config changed: otherwise the groups are the checkpoint's, exactly, including
        values a scheduler moves (OneCycleLR cycles the betas)."""
        saved, current = state.get("config") or {}, self.config.to_dict()
        if all(saved.get(section) == current[section] for section in ("training", "optimization")):
            return
        groups = optimizer.param_groups
        cycled = _momentum_keys(scheduler)
        if cycled:  # the scheduler owns beta1 (and momentum); beta2 still follows the config
            planned = [{**mine, "betas": (group["betas"][0], *mine["betas"][1:])} if "betas" in mine else mine
                       for group, mine in zip(groups, planned)]
        owned = _LR_KEYS + cycled
        changed = sorted({key for group, mine in zip(groups, planned) for key, value in mine.items()
                          if key not in owned and _differs(group.get(key), value)})
        for group, mine in zip(groups, planned):
            group.update({k: v for k, v in mine.items() if k not in owned})
        peaks = [mine.get("initial_lr", mine["lr"]) for mine in planned]
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            if [float(b) for b in scheduler.base_lrs] != [float(p) for p in peaks]:
                scheduler.base_lrs = list(peaks)
                for group, peak in zip(groups, peaks):
                    group["initial_lr"] = peak
                _reapply_schedule(optimizer, scheduler)
                changed.append("lr")
        elif scheduler is None:
            if any(_differs(group["lr"], peak) for group, peak in zip(groups, peaks)):
                for group, peak in zip(groups, peaks):
                    group["lr"] = peak
                changed.append("lr")
        elif saved.get("training", {}).get("lr") not in (None, self.config.training.lr) and self.dist.is_main:
            self.logger.warning(f"training.lr changed, but {type(scheduler).__name__} keeps the checkpoint's LR")
        if changed and self.dist.is_main:
            self.logger.warning(f"optimizer settings follow this run's config, not the checkpoint's: "
                                f"{', '.join(changed)} changed")

    # ------------------------------------------------------------------ checks
    def warn_about_run_length(self, progress: Progress, schedule: Schedule) -> None:
        """Settings that make a run do nothing, or never reach its LR: legal, rarely meant."""
        t = self.config.training
        if not self.dist.is_main:
            return
        total = schedule.total_steps
        if progress.global_step and (progress.global_step >= total or progress.epoch >= t.epochs):
            self.logger.warning(f"nothing to train: resumed at step {progress.global_step} (epoch {progress.epoch_number()}), "
                                f"where a run of training.epochs={t.epochs}, training.max_steps={t.max_steps} ends; "
                                "raise them to train on")
        elif any(isinstance(fn, LRSchedule) for fn in getattr(schedule.scheduler, "lr_lambdas", None) or []) \
                and t.warmup_steps >= total:
            self.logger.warning(f"training.warmup_steps={t.warmup_steps} is not shorter than the run "
                                f"({total} steps): the LR never reaches training.lr={t.lr:g}")


def mismatch_cause(state: dict[str, Any], config: dict[str, Any], exc: Exception) -> str:
    """The config keys that differ from the checkpoint's run, else torch's first concrete reason
    (its message leads with a bare "Error(s) in loading state_dict for GPT:" header)."""
    saved = state.get("config") or {}
    saved_model = saved.get("model") if isinstance(saved.get("model"), dict) else {}
    diffs = [f"model.{key} is {value!r} here, {saved_model[key]!r} in the checkpoint"
             for key, value in config["model"].items() if key in saved_model and saved_model[key] != value]
    if saved.get("task") not in (None, config["task"]):
        diffs.insert(0, f"task is {config['task']!r} here, {saved['task']!r} in the checkpoint")
    if diffs:
        return "; ".join(diffs[:4]) + (f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else "")
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith("Error(s) in loading")), None)
    return (detail or type(exc).__name__)[:300]


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def _schedule_shapes(scheduler) -> Optional[list[dict[str, Any]]]:
    """The shape of each of our LR multipliers, or None for a scheduler that is not ours."""
    fns = getattr(scheduler, "lr_lambdas", None)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) or not all(
            isinstance(fn, LRSchedule) for fn in fns):
        return None
    return [dict(vars(fn)) for fn in fns]


def _reapply_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """LambdaLR's LR at its current position, after its peak or shape changed."""
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


_LR_KEYS = ("lr", "initial_lr")  # the schedule owns these


def _momentum_keys(scheduler) -> tuple[str, ...]:
    """Group settings a scheduler moves besides the LR (OneCycleLR and CyclicLR cycle momentum)."""
    if getattr(scheduler, "cycle_momentum", False):
        return ("momentum", "max_momentum", "base_momentum")
    return ()


def _group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _differs(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.as_tensor(a).tolist() != torch.as_tensor(b).tolist()
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b
