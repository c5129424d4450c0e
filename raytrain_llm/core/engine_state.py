"""What a checkpoint holds for the engine, when it is written, and how a run picks up from one.

Kept apart from the loop: this is the contract that lets a killed run continue exactly
(same weights, optimizer moments, LR, RNG streams, callback state and next batch).
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Optional

import torch

from raytrain_llm.core.checkpointing import CheckpointManager, clean_state_dict, loadable_state
from raytrain_llm.core.config_loader import dump_yaml
from raytrain_llm.core.errors import CheckpointError, UsageError
from raytrain_llm.core.rng_state import capture_rng, restore_rng
from raytrain_llm.core.task import LRSchedule


class EngineStateMixin:
    def state_dict(self) -> dict[str, Any]:
        """The full training state. Collective: gathers every rank's RNG streams."""
        rng = self.dist.gather_objects(capture_rng())
        # What user code puts in a checkpoint, checked on every rank alike (a save is collective).
        with self.dist.usage_errors_on_every_rank():
            callbacks = loadable_state(self.callbacks.state_dict(), "callbacks")
            scheduler = loadable_state(self.scheduler.state_dict(), "scheduler") \
                if self.scheduler is not None else None
        return {
            "model": clean_state_dict(self.raw_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler,
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "progress": {"global_step": self.global_step, "epoch": self.epoch,
                         "batch_in_epoch": self.batch_in_epoch, "skipped_steps": self.skipped_steps,
                         "world_size": self.dist.world_size, "val_step": self._val_step,
                         "total_steps": self.total_steps,  # the length the scheduler was planned for
                         # a resumed run that has nothing left to train reports these, not a re-run
                         "val_metrics": dict(self.last_val_metrics) if self._val_step == self.global_step else {}},
            "rng": rng,
            "callbacks": callbacks,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        planned = _group_settings(self.optimizer)  # from this run's config, before the load
        try:
            self.raw_model.load_state_dict(clean_state_dict(state["model"]))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            # The user's config no longer describes the saved run: a usage error (exit 2), and
            # the checkpoint folder is left as it is.
            raise UsageError(f"checkpoint does not match this run's model/optimizer: "
                             f"{_mismatch_cause(state, self.config.to_dict(), exc)}") from None
        progress = state["progress"]
        self.global_step = int(progress["global_step"])
        self.epoch = int(progress["epoch"])
        self.batch_in_epoch = self._resume_position(state)
        self.skipped_steps = int(progress.get("skipped_steps", 0))  # before the scheduler: its position
        self._fit_total_steps()
        if self.scheduler is not None and state.get("scheduler") is not None:
            self._load_scheduler(state["scheduler"], progress.get("total_steps"))
        self._keep_config_settings(planned, state)
        if self.precision.scaler and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self._val_step = int(progress.get("val_step", -1))
        self.last_val_metrics = {k: float(v) for k, v in (progress.get("val_metrics") or {}).items()}
        self._saved_at = self._progress_key()
        rng = state.get("rng") or []
        if len(rng) == self.dist.world_size:
            restore_rng(rng[self.dist.rank])
        elif rng and self.dist.is_main:
            self.logger.warning(f"checkpoint was written by {len(rng)} ranks, now {self.dist.world_size}: "
                                "RNG streams (dropout, ...) are reseeded")
        self.callbacks.load_state_dict(state.get("callbacks") or {})
        self.callbacks.on_load_checkpoint(self, state)

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
                f"epoch {int(progress['epoch'])} goes on after sample {position * now_global} of its order"
                + (f"; {repeated} samples already trained on in this epoch are seen again" if repeated else ""))
        return position

    def _planned_total_steps(self) -> int:
        """The run's length: the steps done plus the steps left from the data position at this
        run's batch (epochs x steps per epoch from the start), cut by max_steps."""
        t = self.config.training
        left_in_epoch = math.ceil(max(0, self._num_batches() - self.batch_in_epoch) / t.grad_accum_steps)
        total = self.global_step + left_in_epoch + max(0, t.epochs - self.epoch - 1) * self.steps_per_epoch
        return min(total, t.max_steps) if t.max_steps else total

    def _warn_about_run_length(self) -> None:
        """Settings that make a run do nothing, or never reach its LR: legal, rarely meant."""
        t = self.config.training
        if not self.dist.is_main:
            return
        if self.global_step and (self.global_step >= self.total_steps or self.epoch >= t.epochs):
            self.logger.warning(f"nothing to train: resumed at step {self.global_step} (epoch {self.epoch}), where a "
                                f"run of training.epochs={t.epochs}, training.max_steps={t.max_steps} ends; raise "
                                "them to train on")
        elif any(isinstance(fn, LRSchedule) for fn in getattr(self.scheduler, "lr_lambdas", None) or []) \
                and t.warmup_steps >= self.total_steps:
            self.logger.warning(f"training.warmup_steps={t.warmup_steps} is not shorter than the run "
                                f"({self.total_steps} steps): the LR never reaches training.lr={t.lr:g}")

    def _fit_total_steps(self) -> None:
        """After a resume: the length differs from the set-up's when the global batch changed
        mid-run; our schedules (not yet loaded) are then planned to end where the run ends."""
        total = self._planned_total_steps()
        if self.epoch >= self.config.training.epochs or total == self.total_steps:
            return
        self.total_steps = total
        for fn in getattr(self.scheduler, "lr_lambdas", None) or []:
            if isinstance(fn, LRSchedule):
                fn.decay_steps = max(1, total - fn.warmup)

    def _load_scheduler(self, saved: dict[str, Any], saved_total: Optional[int]) -> None:
        """Restore the scheduler's position, but keep the schedule's length from this run's config.

        LambdaLR saves a callable object's attributes, so loading would bring back the old run's
        decay length: a run resumed with more epochs or a larger max_steps would finish its decay
        at the old end and then sit at the floor. The length is what the user just asked for.
        """
        planned = _schedule_shapes(self.scheduler)
        # Only for a run that goes on (a shorter one, or a finished one re-reported, has no steps
        # left to schedule, and a fixed-length schedule could not even be stepped to the position).
        if planned is None and saved_total not in (None, self.total_steps) and self.global_step < self.total_steps \
                and not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self._replan_task_scheduler(int(saved_total))
            return
        self.scheduler.load_state_dict(saved)
        if planned is None or _schedule_shapes(self.scheduler) == planned:
            return
        before = self.scheduler.lr_lambdas[0].decay_steps
        for fn, shape in zip(self.scheduler.lr_lambdas, planned):
            fn.__dict__.update(shape)
        self._reapply_schedule()
        if self.dist.is_main:
            self.logger.warning(f"LR schedule follows this run's config, not the checkpoint's: decay over "
                                f"{planned[0]['decay_steps']} steps (the checkpoint's run: {before})")

    def _replan_task_scheduler(self, saved_total: int) -> None:
        """A task's own scheduler, for a run whose length changed: built again for this run's
        length (as the task planned it, e.g. OneCycleLR(total_steps=...)) and stepped to the
        position, instead of loading one that would end, or fail, at the old length."""
        for group in self.optimizer.param_groups:  # chainable schedulers start from the peak
            group["lr"] = group.get("initial_lr", group["lr"])
        self.scheduler = self.task.build_scheduler(self.optimizer, self.total_steps)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore")
            for _ in range(self.global_step - int(self.skipped_steps)):
                self.scheduler.step()
        if self.dist.is_main:
            self.logger.warning(f"{type(self.scheduler).__name__} was planned again for {self.total_steps} steps "
                                f"(the checkpoint's run: {saved_total}) and stepped to step {self.global_step}")

    def _keep_config_settings(self, planned: list[dict[str, Any]], state: dict[str, Any]) -> None:
        """The optimizer's settings (peak LR, weight decay, betas, fused, ...) follow this run's
        config, as config.yaml says; its moments and the schedule's position are the checkpoint's.
        torch's load would bring back the saved run's settings and silently ignore the new ones.
        Only when the config changed: otherwise the groups are the checkpoint's, exactly, including
        values a scheduler moves (OneCycleLR cycles the betas)."""
        saved, current = state.get("config") or {}, self.config.to_dict()
        if all(saved.get(section) == current[section] for section in ("training", "optimization")):
            return
        groups = self.optimizer.param_groups
        cycled = _momentum_keys(self.scheduler)
        if cycled:  # the scheduler owns beta1 (and momentum); beta2 still follows the config
            planned = [{**mine, "betas": (group["betas"][0], *mine["betas"][1:])} if "betas" in mine else mine
                       for group, mine in zip(groups, planned)]
        owned = _LR_KEYS + cycled
        changed = sorted({key for group, mine in zip(groups, planned) for key, value in mine.items()
                          if key not in owned and _differs(group.get(key), value)})
        for group, mine in zip(groups, planned):
            group.update({k: v for k, v in mine.items() if k not in owned})
        peaks = [mine.get("initial_lr", mine["lr"]) for mine in planned]
        scheduler = self.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            if [float(b) for b in scheduler.base_lrs] != [float(p) for p in peaks]:
                scheduler.base_lrs = list(peaks)
                for group, peak in zip(groups, peaks):
                    group["initial_lr"] = peak
                self._reapply_schedule()
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

    def _reapply_schedule(self) -> None:
        """LambdaLR's LR at its current position, after its peak or shape changed."""
        scheduler = self.scheduler
        for group, base, fn in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _find_resume_state(self) -> tuple[Optional[str], Optional[dict[str, Any]]]:
        explicit = self.resume_from
        mode = self.config.checkpoint.resume
        if explicit is None and mode == "none":
            if self.checkpoint_manager is not None:
                self.checkpoint_manager.refuse_earlier_run()
            return None, None
        if explicit is None and mode == "auto":
            if self.checkpoint_manager is None:
                return None, None
            return self.checkpoint_manager.load_latest_valid()
        path = explicit or mode
        # The user's pick from another run's folder: this folder's logs are not that run's.
        self.resumed_from_elsewhere = explicit is None and not _inside(path, self.config.checkpoint_dir)
        if not os.path.exists(path):
            raise UsageError(f"checkpoint.resume: no checkpoint at {path}")
        try:
            state = CheckpointManager.load(path)
        except CheckpointError as exc:
            raise UsageError(f"checkpoint.resume: {exc}") from None
        if explicit is None and self.checkpoint_manager is not None:
            if self.resumed_from_elsewhere:
                # A branch of another run: checkpoints already here are some other run's, which
                # rotation would delete (or keep in place of this run's), as for a fresh run.
                self.checkpoint_manager.refuse_earlier_run()
            else:
                # A user's choice of an older step. A launcher's restore point (a Ray restart) may
                # trail this folder by a save that was never reported; that run re-creates those steps.
                self.checkpoint_manager.refuse_later_checkpoints(int(state["progress"]["global_step"]))
        return path, state

    def _resume(self) -> None:
        path, state = self._find_resume_state()
        if state is None:
            return
        self.load_state_dict(state)
        self.logger.info(f"resumed from {path} at step {self.global_step} "
                         f"(epoch {self.epoch}, batch {self.batch_in_epoch})")

    # ------------------------------------------------------------------ checkpoints
    def _save_config(self) -> None:
        if self.dist.is_main:
            from raytrain_llm.core.config_loader import save_config

            save_config(self.config, os.path.join(self.config.logging.dir, "config.yaml"))

    def _progress_key(self) -> tuple:
        # A save made at this step goes stale when the epoch ends or a validation runs after it
        # (e.g. every_n_steps lands on the epoch's last step): it would resume inside a finished
        # epoch and lack the val metric keep_best ranks by, so the step is saved again.
        return self.global_step, self.epoch, self.batch_in_epoch, self._val_step

    def _checkpoint_if_needed(self) -> None:
        if self.checkpoint_manager is None or self._saved_at == self._progress_key() or self.global_step == 0:
            return
        self.save_checkpoint()

    def save_checkpoint(self) -> Optional[str]:
        """Collective: every rank calls it; rank 0 writes; callbacks see the path on every rank."""
        self._saved_at = self._progress_key()
        if self._window and self.last_train_record.get("step") != self.global_step:
            # A save between two logs: logged here, so the checkpoint's train metrics (which
            # checkpoint.monitor may rank it by) are of the steps up to it, not of an older window.
            self._log_train()
        state = self.state_dict()
        metrics = dict(self.last_val_metrics) if self._val_step == self.global_step else {}
        if self.last_train_record.get("step") == self.global_step:
            metrics.update({k: v for k, v in self.last_train_record.items() if isinstance(v, float)})
        path = self.checkpoint_manager.save(state, step=self.global_step, epoch=self.epoch, metrics=metrics,
                                            config_yaml=dump_yaml(self.config))
        self.dist.barrier()
        self.callbacks.on_save_checkpoint(self, path, metrics)
        return path

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


def _mismatch_cause(state: dict[str, Any], config: dict[str, Any], exc: Exception) -> str:
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
