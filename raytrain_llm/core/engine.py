"""`TrainingEngine`: owns the loop; a `TrainingTask` only says what one step computes.

The engine does backward, AMP, gradient accumulation (losses divided by the group size, so
4 micro-batches of 8 give the gradient of one batch of 32), clipping, optimizer and
scheduler steps, validation, callbacks and checkpoints. When a process group of more than one
rank exists, whoever created it (spawn, Ray Train), it wraps the model in DDP or shards it with
FSDP2 (`distributed.strategy`, `core/parallel/`).

Its parts, each with its own interface: `Progress` (where the run stands; saved and restored as a
whole), `Resumer` (the checkpoint to start from, restored into the run), `Validator` (a model in,
validation metrics out), `TrainMetrics` (train metrics between two logs), `CheckpointManager` (the
checkpoint folders) and the strategy (`core/parallel/strategy.py`: DDP or FSDP, with
`ExpertParallel` for MoE experts sharded over workers).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch

from raytrain_llm.core import step_agreement, task_backward
from raytrain_llm.core.callbacks import Callback, CallbackList
from raytrain_llm.core.checkpointing import CheckpointManager, loadable_state
from raytrain_llm.core.config import Config
from raytrain_llm.core.config_loader import dump_yaml, save_config
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.errors import TrainingError, UsageError
from raytrain_llm.core.host_memory import keep_freed_host_memory
from raytrain_llm.core.logger import Logger
from raytrain_llm.core.monitoring import PerformanceMonitor
from raytrain_llm.core.parallel.expert_parallel import ExpertParallel
from raytrain_llm.core.parallel.strategy import build_strategy
from raytrain_llm.core.precision import Precision, configure_matmul, to_device
from raytrain_llm.core.progress import Progress, ProgressField, planned_total_steps
from raytrain_llm.core.resume import Resumer, Schedule
from raytrain_llm.core.rng_state import capture_rng, seed_everything
from raytrain_llm.core.step_checks import check_loss
from raytrain_llm.core.task import StepOutput, TrainingTask, as_step_output, samples_in_batch
from raytrain_llm.core.train_metrics import Sums, TrainMetrics, accumulate
from raytrain_llm.core.validation import Validator, preserved_rng


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("training.device: cuda, but no CUDA device is available (use auto or cpu)")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


class TrainingEngine:
    # The run's progress lives in `self.progress`; these read and write it (callbacks use them).
    global_step = ProgressField()
    epoch = ProgressField()
    batch_in_epoch = ProgressField()
    skipped_steps = ProgressField()
    should_stop = ProgressField()  # a callback sets it to end the run after the current step
    stopped_early = ProgressField()
    stop_reason = ProgressField()
    last_val_metrics = ProgressField("val_metrics")

    def __init__(self, config: Config, task: TrainingTask, data_module=None,
                 callbacks: Optional[list[Callback]] = None, dist: Optional[DistributedManager] = None,
                 logger: Optional[Logger] = None, resume_from: Optional[str] = None, check_data: bool = True):
        self.config = config
        self.task = task
        self.dist = dist or DistributedManager()
        self.logger = logger or Logger(level=config.logging.level, log_dir=config.logging.dir, rank=self.dist.rank)
        self.progress = Progress()
        self._validate_at_stop = True  # request_stop(validate=False): no validation at the stop
        self.last_train_record: dict[str, Any] = {}
        self._saved_at: Optional[tuple] = None  # progress.save_key() of the last save
        self._step_lr = None  # LR of the last applied step (the scheduler has moved on since)
        self._first_step_checked = False  # task_backward.check_first_step ran (the run's first train_step)
        experts = ExpertParallel(config, self.dist)  # the expert groups: collective, so not in the block below
        with self.dist.usage_errors_on_every_rank():  # nothing collective before DDP, in _wrap_model
            self.data_module = data_module if data_module is not None else task.build_data_module()
            self.callbacks = CallbackList(list(callbacks or []) + list(task.configure_callbacks() or []))
            self.device = resolve_device(config.training.device, self.dist.local_rank)
            self.precision = Precision(config.optimization.amp, self.device)
            self.parallel = build_strategy(config, self.dist, self.device, experts)  # DDP or FSDP (core/parallel)
            self.checkpoint_manager = CheckpointManager(
                config.checkpoint_dir, keep_last=config.checkpoint.keep_last, keep_best=config.checkpoint.keep_best,
                monitor=config.checkpoint.monitor, mode=config.checkpoint.mode, is_main=self.dist.is_main,
                logger=self.logger) if config.checkpoint.enabled else None
            self._setup(check_data)
        self._wrap_model()
        self.resumer = Resumer(config, task, self.dist, self.logger, self.checkpoint_manager, resume_from)
        self.validator = Validator(config, task, self.data_module, self.dist, self.precision, self.device,
                                   self.criterion)
        self.train_metrics = TrainMetrics(task, self.dist, self.device)

    # ------------------------------------------------------------------ setup
    def _setup(self, check_data: bool) -> None:
        cfg = self.config
        if self.device.type == "cuda":
            configure_matmul(cfg.optimization.tf32)
        elif cfg.optimization.keep_host_memory and keep_freed_host_memory():
            self.logger.debug("glibc malloc keeps freed memory (optimization.keep_host_memory)")
        seed_everything(cfg.training.seed)  # same init on every rank
        self.raw_model = self.task.build_model().to(self.device)
        self.parallel.split_experts(self.raw_model, self.data_module)  # MoE groups; ep: this rank's experts only
        self.parallel.shard(self.raw_model, self.task.fsdp_units(self.raw_model))  # before the optimizer sees it
        self.optimizer = self.parallel.prepare_optimizer(self.task.build_optimizer(self.raw_model))
        # Listed once, all of them: clipping skips those without a gradient, frozen now or not.
        self._params = list(self.raw_model.parameters())
        self.data_module.require_a_batch(cfg.training.batch_size, self.dist.world_size)
        # Once, unless the launcher did it before any worker started (check_data=False): it may
        # read whole files, and the other ranks would wait for its verdict in a collective.
        if check_data and self.dist.is_main:
            self.data_module.check_data()
        self.total_steps = planned_total_steps(cfg, self.progress, self._num_batches())
        self.scheduler = self.task.build_scheduler(self.optimizer, self.total_steps)
        self.criterion = self.task.build_criterion()
        if self.criterion is not None:
            self.criterion = self.criterion.to(self.device)

    def _wrap_model(self) -> None:
        cfg = self.config
        # A compiled module must not be truth-tested (`a or b` calls len() on it).
        self.eval_model = torch.compile(self.raw_model, mode=cfg.optimization.compile_mode) \
            if cfg.optimization.compile else self.raw_model
        self.model = self.parallel.wrap(self.eval_model)
        # Dropout and other step randomness differ per rank, as independent samples should.
        seed_everything(cfg.training.seed + 1 + 1000 * self.dist.rank)
        self.monitor = PerformanceMonitor(self.device, self.task.flops_per_token(self.raw_model))
        self.non_blocking = self.device.type == "cuda"

    def _num_batches(self) -> int:
        return self.data_module.num_train_batches(self.config.training.batch_size, self.dist.world_size)

    @property
    def resumed_from_elsewhere(self) -> bool:
        """The run continues another run's checkpoint, named by the user (known once fit starts)."""
        return self.resumer.resumed_from_elsewhere

    def request_stop(self, reason: str, *, validate: bool = True) -> None:
        """End the run after the current step (saving as at any end); `validate=False` skips the
        end-of-run validation (an interruption stops as soon as it can)."""
        self.progress.request_stop(reason)
        self._validate_at_stop = self._validate_at_stop and validate

    # ------------------------------------------------------------------ run
    def fit(self) -> dict[str, Any]:
        """Train until `epochs` or `max_steps`; returns the final train/val metrics."""
        try:
            self._start()
            self.logger.info(
                f"training {self.config.task}: {sum(p.numel() for p in self.raw_model.parameters()):,} params "
                f"on {self.device} x{self.dist.world_size}, {self.total_steps} steps")
            while not self._done() and self.epoch < self.config.training.epochs:
                self.callbacks.on_epoch_start(self, self.epoch)
                finished = self._run_epoch(self.epoch)
                if finished:
                    self.callbacks.on_epoch_end(self, self.epoch)
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self._validate_if_needed()
                    self._checkpoint_if_needed()
            if self._validate_at_stop:
                self._validate_if_needed()
            self._checkpoint_if_needed()
            if self.stopped_early:
                self.logger.info(f"stopped at step {self.global_step}: {self.stop_reason}")
            self.callbacks.on_train_end(self)
            best = self.checkpoint_manager.best_path() if self.checkpoint_manager else None
            return {"train": self.last_train_record, "val": self.last_val_metrics, "step": self.global_step,
                    "best_checkpoint": best}
        except BaseException as exc:
            self.callbacks.on_exception(self, exc)
            raise

    def _start(self) -> None:
        # A bad checkpoint or a callback's check stops every rank alike: a clean end, not a crashed
        # worker (which Ray would restart, to fail the same way).
        with self.dist.usage_errors_on_every_rank():
            self._resume()
            self.resumer.warn_about_run_length(self.progress, Schedule(self.scheduler, self.total_steps))
            if self.dist.is_main:
                save_config(self.config, os.path.join(self.config.logging.dir, "config.yaml"))
            self.callbacks.on_train_start(self)

    def _resume(self) -> None:
        path, state = self.resumer.find()
        if state is None:
            return
        schedule = self.resumer.restore(
            state, progress=self.progress, model=self.raw_model, optimizer=self.optimizer,
            schedule=Schedule(self.scheduler, self.total_steps), scaler=self.precision.scaler,
            num_batches=self._num_batches(), experts=self.parallel.experts.shards)
        self.scheduler, self.total_steps = schedule.scheduler, schedule.total_steps
        self._saved_at = self.progress.save_key()
        self.callbacks.load_state_dict(state.get("callbacks") or {})
        self.callbacks.on_load_checkpoint(self, state)
        self.logger.info(f"resumed from {path} at step {self.global_step} "
                         f"(epoch {self.epoch + 1}, batch {self.batch_in_epoch})")

    def _done(self) -> bool:
        max_steps = self.config.training.max_steps
        return self.should_stop or bool(max_steps and self.global_step >= max_steps)

    def _run_epoch(self, epoch: int) -> bool:
        """One epoch from the current data position; True if it ran to its end."""
        t = self.config.training
        n_batches = self._num_batches()
        loader = self.data_module.train_batches(
            epoch=epoch, start_batch=self.batch_in_epoch, batch_size=t.batch_size, rank=self.dist.rank,
            world_size=self.dist.world_size, pin_memory=self.non_blocking)
        batches = iter(loader)
        self.raw_model.train()
        self.monitor.reset_window()
        while self.batch_in_epoch < n_batches:
            if self._done():
                return False
            group = min(t.grad_accum_steps, n_batches - self.batch_in_epoch)
            outputs = self._optimizer_step(batches, group)
            if outputs is None:
                break
            self._after_step(outputs)
        return not self._done() or self.batch_in_epoch >= n_batches

    def _optimizer_step(self, batches, group: int) -> Optional[StepOutput]:
        """Accumulate `group` micro-batches, then one checked optimizer step."""
        sums: Sums = {}  # ("loss", *metric names) -> [micro-batches, summed values]
        samples = tokens = 0
        out = None
        for i in range(group):
            self.callbacks.on_batch_start(self, self.batch_in_epoch + i)
            self.monitor.data_start()
            try:
                batch = next(batches)
            except StopIteration:
                return None
            batch = to_device(batch, self.device, self.non_blocking)
            self.monitor.data_end()
            with self.parallel.no_sync(self.model, i < group - 1):
                out = self._forward_backward(batch, group)
            accumulate(sums, *self.train_metrics.values(out))
            samples += out.num_samples or samples_in_batch(batch)
            tokens += out.num_tokens or (self.task.tokens_in_batch(batch) or 0)
        self.precision.unscale(self.optimizer)
        clip = self.config.training.grad_clip
        grad_norm = self.parallel.clip_grad_norm(self._params, clip)
        # Every micro-batch reports the loss first; its metrics may differ from step to step.
        totals = [values for _, values in sums.values()]
        loss = totals[0][0] if len(totals) == 1 else torch.stack([t[0] for t in totals]).sum()
        applied = self._apply_or_skip_step(loss / group if group > 1 else loss, grad_norm)
        self.global_step += 1
        self.batch_in_epoch += group
        self.monitor.step_done(samples * self.dist.world_size, tokens * self.dist.world_size)
        if applied:  # a skipped step's NaN must not poison the logged window averages
            self.train_metrics.add_step(sums, grad_norm)
        return out

    def _forward_backward(self, batch, group: int) -> StepOutput:
        """The task's train_step on one micro-batch, then the engine's backward of its 1/group share."""
        first = not self._first_step_checked
        grads_before = first and task_backward.any_grad(self._params)
        with self.precision.autocast():
            out = as_step_output(task_backward.run_step(self.task.train_step, self.model, batch, self.criterion))
        if first:
            self._first_step_checked = True
            task_backward.check_first_step(self._params, grads_before)
        check_loss(out.loss)
        task_backward.backward(self.precision.backward, out.loss / group)
        return out

    def _apply_or_skip_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Optimizer and scheduler step if loss and gradients are finite; else skip or stop."""
        # One host sync per optimizer step: the price of catching a NaN before it reaches the weights.
        # With fp16 the scaler owns overflowing gradients (it skips those steps itself).
        watched = loss if self.precision.scaler else torch.stack([loss, grad_norm.float()])
        finite = bool(torch.isfinite(watched).all().item())
        bad = self.dist.any_true(not finite, self.device)
        progress = self.progress
        if not bad:
            progress.skips_in_a_row = 0
            self.precision.step(self.optimizer)
            lr = self.optimizer.param_groups[0]["lr"]  # the LR this step used; a tensor LR: no sync here
            self._step_lr = lr.detach().clone() if torch.is_tensor(lr) else float(lr)
            if self.scheduler is not None and not isinstance(
                    self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.task.on_optimizer_step(self.raw_model)
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.skip()
        where = f"step {progress.global_step + 1} (epoch {progress.epoch + 1}, batch {progress.batch_in_epoch})"
        if self.config.training.nan_policy == "stop":
            raise TrainingError(
                f"non-finite loss or gradient at {where}: loss={loss.item():.4g}; weights left unchanged, "
                f"no checkpoint written (training.nan_policy=skip skips such steps)")
        progress.skipped_steps += 1
        progress.skips_in_a_row += 1
        self.logger.warning(f"skipped {where}: non-finite loss or gradient")
        limit = self.config.training.max_consecutive_skips
        if progress.skips_in_a_row >= limit:  # every rank counts the same (the check above is global)
            raise TrainingError(f"{progress.skips_in_a_row} steps in a row had a non-finite loss or gradient, the "
                                f"last at {where}: the run has diverged (training.max_consecutive_skips={limit}); "
                                f"checkpoints hold the last finite state")
        return False

    def _after_step(self, outputs: StepOutput) -> None:
        step = self.global_step
        self.callbacks.on_batch_end(self, step, outputs)
        t, ck = self.config.training, self.config.checkpoint
        validates = bool(t.val_every_n_steps and step % t.val_every_n_steps == 0)
        saves = bool(ck.every_n_steps and step % ck.every_n_steps == 0)
        epoch_ends = self.batch_in_epoch >= self._num_batches()
        # A train record also wherever a validation or a checkpoint follows: what they see
        # (ReduceLROnPlateau, checkpoint.monitor, Ray reports) is this step's, timed before the pause
        # that leaves their time out of throughput. (Logging is collective: from what every rank
        # agrees on, not should_stop, which is synced only below.)
        if (step % self.config.logging.log_every_n_steps == 0 or step == self.total_steps or epoch_ends
                or (validates and t.validate) or (saves and ck.enabled)):
            self._log_train()
        with self.monitor.paused():
            if validates:
                self._validate_if_needed()
            # An epoch's (or the run's) last step is saved after the loop, once (one Ray/Tune report).
            if saves and not (epoch_ends or (t.max_steps and step >= t.max_steps)):
                self._checkpoint_if_needed()
        agreed = step_agreement.agree(self.dist, self.device, stop=self.should_stop, validate_at_stop=self._validate_at_stop)
        self.should_stop, self._validate_at_stop = agreed.stop, agreed.validate_at_stop  # every rank alike
        self.callbacks.on_step_agreed(self, step, agreed)

    # ------------------------------------------------------------------ validation and logging
    def _validate_if_needed(self) -> None:
        if not self.config.training.validate or self.progress.validated_now() or self.global_step == 0:
            return
        # The callbacks' validation hooks leave the training's random streams alone too, as the
        # Validator's pass does: validating more or less often must not change the run.
        with preserved_rng(self.device), self.parallel.whole_model():
            self.progress.val_step = self.global_step
            self.callbacks.on_validation_start(self)
            metrics = self.validator.run(self.eval_model, self.last_train_record)
            self.progress.val_metrics = metrics
            self.callbacks.on_validation_end(self, metrics)
            # The epoch the validated weights trained in (Progress.epoch_number), as train records count it.
            record = {"split": "val", "step": self.global_step, "epoch": self.progress.epoch_number(), **metrics}
            self.callbacks.on_log(self, record)

    def _log_train(self) -> None:
        """Collective: the train record of the steps since the last one, to the callbacks."""
        if not self.train_metrics.pending:
            return
        lr = float(self._step_lr if self._step_lr is not None else self.optimizer.param_groups[0]["lr"])
        record = {**self.train_metrics.record(step=self.global_step, epoch=self.progress.epoch_number(), lr=lr),
                  **self.monitor.summary()}
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        self.last_train_record = record
        self.callbacks.on_log(self, record)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The full training state. Collective: gathers every rank's RNG streams."""
        rng = self.dist.gather_objects(capture_rng())
        # What user code puts in a checkpoint, checked on every rank alike (a save is collective).
        with self.dist.usage_errors_on_every_rank():
            callbacks = loadable_state(self.callbacks.state_dict(), "callbacks")
            scheduler = loadable_state(self.scheduler.state_dict(), "scheduler") \
                if self.scheduler is not None else None
        return {
            **self.parallel.model_state(self.raw_model, self.optimizer),
            "scheduler": scheduler,
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "progress": self.progress.state_dict(world_size=self.dist.world_size, total_steps=self.total_steps),
            "rng": rng, "callbacks": callbacks, "config": self.config.to_dict(),
        }

    def _checkpoint_if_needed(self) -> None:
        if self.checkpoint_manager is None or self._saved_at == self.progress.save_key() or self.global_step == 0:
            return
        self.save_checkpoint()

    def save_checkpoint(self) -> Optional[str]:
        """Collective: every rank calls it; rank 0 writes; callbacks see the path on every rank."""
        self._saved_at = self.progress.save_key()
        if self.train_metrics.pending and self.last_train_record.get("step") != self.global_step:
            # A save between two logs: logged here, so the checkpoint's train metrics (which
            # checkpoint.monitor may rank it by) are of the steps up to it.
            self._log_train()
        state = self.state_dict()
        metrics = self.progress.current_val_metrics()
        if self.last_train_record.get("step") == self.global_step:
            metrics.update({k: v for k, v in self.last_train_record.items() if isinstance(v, float)})
        path = self.parallel.save(self.checkpoint_manager, state, self.raw_model, self.optimizer, step=self.global_step,
                                  epoch=self.progress.epoch_number(), metrics=metrics,
                                  config_yaml=dump_yaml(self.config))
        self.dist.barrier()
        self.callbacks.on_save_checkpoint(self, path, metrics)
        return path
