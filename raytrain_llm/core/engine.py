"""`TrainingEngine`: owns the loop; a `TrainingTask` only says what one step computes.

The engine does backward, AMP, gradient accumulation (losses divided by the group size, so
4 micro-batches of 8 give the gradient of one batch of 32), clipping, optimizer and
scheduler steps, validation, callbacks and checkpoints. It wraps the model in DDP when a
process group of more than one rank exists, whoever created it (spawn, Ray Train).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from raytrain_llm.core.callbacks import Callback, CallbackList
from raytrain_llm.core.checkpointing import CheckpointManager
from raytrain_llm.core.config import Config
from raytrain_llm.core.distributed import DistributedManager
from raytrain_llm.core.engine_state import EngineStateMixin
from raytrain_llm.core.errors import TrainingError, UsageError
from raytrain_llm.core.host_memory import keep_freed_host_memory
from raytrain_llm.core.logger import Logger
from raytrain_llm.core.monitoring import PerformanceMonitor
from raytrain_llm.core.precision import Precision, configure_matmul, to_device
from raytrain_llm.core.rng_state import seed_everything
from raytrain_llm.core.step_checks import check_loss, check_metric_names, check_metric_values, metric_float
from raytrain_llm.core.validation import ValidationMixin
from raytrain_llm.tasks.base_task import StepOutput, TrainingTask, as_step_output, samples_in_batch


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("training.device: cuda, but no CUDA device is available (use auto or cpu)")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


class TrainingEngine(EngineStateMixin, ValidationMixin):
    def __init__(self, config: Config, task: TrainingTask, data_module=None,
                 callbacks: Optional[list[Callback]] = None, dist: Optional[DistributedManager] = None,
                 logger: Optional[Logger] = None, resume_from: Optional[str] = None, check_data: bool = True):
        self.config = config
        self.task = task
        self.dist = dist or DistributedManager()
        self.logger = logger or Logger(level=config.logging.level, log_dir=config.logging.dir, rank=self.dist.rank)
        self.resume_from = resume_from
        self.resumed_from_elsewhere = False  # set by _resume: another run's checkpoint, named by the user
        # Progress: global_step counts optimizer steps; (epoch, batch_in_epoch) is the data position.
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped_steps = 0
        self.should_stop = False
        self.stopped_early = False
        self.stop_reason = ""
        self._validate_at_stop = True  # request_stop(validate=False): no validation at the stop
        self.last_val_metrics: dict[str, float] = {}
        self.last_train_record: dict[str, Any] = {}
        self._val_step = -1
        self._window: dict[tuple, list] = {}  # names -> [count, summed values] since the last log (_accumulate)
        self._saved_at: Optional[tuple] = None  # progress key of the last save (see _progress_key)
        self._step_lr = None  # LR of the last applied step (the scheduler has moved on since)
        self._skips_in_a_row = 0  # nan_policy=skip: a run that only skips has diverged
        self._checked_names: set[tuple] = set()  # metric name sets already checked (val: tagged "val")
        self._monitor_checked = False  # checkpoint.monitor, at the first validation
        with self.dist.usage_errors_on_every_rank():  # nothing collective before DDP, in _wrap_model
            self.data_module = data_module if data_module is not None else task.build_data_module()
            self.callbacks = CallbackList(list(callbacks or []) + list(task.configure_callbacks() or []))
            self.device = resolve_device(config.training.device, self.dist.local_rank)
            self.precision = Precision(config.optimization.amp, self.device)
            self.checkpoint_manager = CheckpointManager(
                config.checkpoint_dir, keep_last=config.checkpoint.keep_last, keep_best=config.checkpoint.keep_best,
                monitor=config.checkpoint.monitor, mode=config.checkpoint.mode, is_main=self.dist.is_main,
                logger=self.logger) if config.checkpoint.enabled else None
            self._setup(check_data)
        self._wrap_model()

    # ------------------------------------------------------------------ setup
    def _setup(self, check_data: bool) -> None:
        cfg = self.config
        if self.device.type == "cuda":
            configure_matmul(cfg.optimization.tf32)
        elif cfg.optimization.keep_host_memory and keep_freed_host_memory():
            self.logger.debug("glibc malloc keeps freed memory (optimization.keep_host_memory)")
        seed_everything(cfg.training.seed)  # same init on every rank
        self.raw_model = self.task.build_model().to(self.device)
        self.optimizer = self.task.build_optimizer(self.raw_model)
        # Listed once (walking the modules each step cost ~0.5% of a small CPU step). All of
        # them: clipping skips those without a gradient, frozen now or unfrozen later.
        self._params = list(self.raw_model.parameters())
        self.data_module.require_a_batch(cfg.training.batch_size, self.dist.world_size)
        # Once, unless the launcher did it before any worker started (check_data=False): it may
        # read whole files, and the other ranks would wait for its verdict in a collective.
        if check_data and self.dist.is_main:
            self.data_module.check_data()
        self.steps_per_epoch = math.ceil(self._num_batches() / cfg.training.grad_accum_steps)
        self.total_steps = self._planned_total_steps()
        self.scheduler = self.task.build_scheduler(self.optimizer, self.total_steps)
        self.criterion = self.task.build_criterion()
        if self.criterion is not None:
            self.criterion = self.criterion.to(self.device)

    def _wrap_model(self) -> None:
        cfg = self.config
        # A compiled module must not be truth-tested (`a or b` calls len() on it).
        self.eval_model = torch.compile(self.raw_model, mode=cfg.optimization.compile_mode) \
            if cfg.optimization.compile else self.raw_model
        self.model = self.eval_model
        if self.dist.enabled:
            self.model = DistributedDataParallel(
                self.eval_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.distributed.find_unused_parameters)
        # Dropout and other step randomness differ per rank, as independent samples should.
        seed_everything(cfg.training.seed + 1 + 1000 * self.dist.rank)
        self.monitor = PerformanceMonitor(self.device, self.task.flops_per_token(self.raw_model))
        self.non_blocking = self.device.type == "cuda"

    def _num_batches(self) -> int:
        return self.data_module.num_train_batches(self.config.training.batch_size, self.dist.world_size)

    def request_stop(self, reason: str, *, validate: bool = True) -> None:
        self.should_stop, self.stopped_early, self.stop_reason = True, True, reason
        self._validate_at_stop = validate

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
        # A missing or mismatched checkpoint, or a callback's check, stops every rank alike, so a
        # launcher can end the run cleanly rather than handle a crashed worker (which Ray would
        # restart, to fail the same way).
        with self.dist.usage_errors_on_every_rank():
            self._resume()
            self._warn_about_run_length()
            self._save_config()
            self.callbacks.on_train_start(self)

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
        sums: dict[tuple, list] = {}  # ("loss", *metric names) -> [micro-batches, summed values]
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
            sync = self.dist.enabled and i < group - 1
            with (self.model.no_sync() if sync else contextlib.nullcontext()):
                with self.precision.autocast():
                    out = as_step_output(self.task.train_step(self.model, batch, self.criterion))
                check_loss(out.loss)
                self.precision.backward(out.loss / group)
            _accumulate(sums, *self._step_values(out))
            samples += out.num_samples or samples_in_batch(batch)
            tokens += out.num_tokens or (self.task.tokens_in_batch(batch) or 0)
        self.precision.unscale(self.optimizer)
        clip = self.config.training.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, clip if clip > 0 else float("inf"))
        # Every micro-batch reports the loss first; its metrics may differ from step to step.
        totals = [values for _, values in sums.values()]
        loss = totals[0][0] if len(totals) == 1 else torch.stack([t[0] for t in totals]).sum()
        applied = self._apply_or_skip_step(loss / group if group > 1 else loss, grad_norm)
        self.global_step += 1
        self.batch_in_epoch += group
        self.monitor.step_done(samples * self.dist.world_size, tokens * self.dist.world_size)
        if applied:  # a skipped step's NaN must not poison the logged window averages
            for keys, (n, values) in sums.items():
                _accumulate(self._window, keys, values, n)
            _accumulate(self._window, ("grad_norm",), grad_norm.detach().float().reshape(1))
        return out

    @torch.no_grad()
    def _step_values(self, out: StepOutput) -> tuple[tuple, torch.Tensor]:
        """("loss", *metric names) and their values as one fp32 vector: one op per micro-batch
        for the bookkeeping, however many metrics the task reports."""
        names = ("loss", *out.metrics)
        if names not in self._checked_names:
            check_metric_names(out.metrics, "train_step", training=True)
            self._checked_names.add(names)
        try:
            values = [v.float().reshape(()) if torch.is_tensor(v)
                      else torch.tensor(float(v), device=self.device) for v in (out.loss, *out.metrics.values())]
        except (RuntimeError, TypeError, ValueError):
            check_metric_values(out.metrics, "train_step")  # names the metric that is not one number
            raise
        return names, torch.stack(values)

    def _apply_or_skip_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Optimizer and scheduler step if loss and gradients are finite; else skip or stop."""
        # One host sync per optimizer step: the price of catching a NaN before it reaches the weights.
        # With fp16 the scaler owns overflowing gradients (it skips those steps itself).
        watched = loss if self.precision.scaler else torch.stack([loss, grad_norm.float()])
        finite = bool(torch.isfinite(watched).all().item())
        bad = self.dist.any_true(not finite, self.device)
        if not bad:
            self._skips_in_a_row = 0
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
        where = f"step {self.global_step + 1} (epoch {self.epoch}, batch {self.batch_in_epoch})"
        if self.config.training.nan_policy == "stop":
            raise TrainingError(
                f"non-finite loss or gradient at {where}: loss={loss.item():.4g}; weights left unchanged, "
                f"no checkpoint written (training.nan_policy=skip skips such steps)")
        self.skipped_steps += 1
        self._skips_in_a_row += 1
        self.logger.warning(f"skipped {where}: non-finite loss or gradient")
        limit = self.config.training.max_consecutive_skips
        if self._skips_in_a_row >= limit:  # every rank counts the same (the check above is global)
            raise TrainingError(f"{self._skips_in_a_row} steps in a row had a non-finite loss or gradient, the "
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
        # A train record also wherever a validation or a checkpoint follows (the epoch's or the
        # run's end, every_n_steps): what they see (ReduceLROnPlateau, checkpoint.monitor, Ray
        # reports) is then this step's, stamped with this epoch and timed before the pause that
        # leaves their time out of throughput. (Logging is collective: from what every rank
        # agrees on, not should_stop, which is synced only below.)
        if (step % self.config.logging.log_every_n_steps == 0 or step == self.total_steps or epoch_ends
                or (validates and t.validate) or (saves and ck.enabled)):
            self._log_train()
        with self.monitor.paused():
            if validates:
                self._validate_if_needed()
            # On an epoch's (or the run's) last step the save after the loop follows at once, with
            # the next epoch's position: one save there, not two (and one Ray/Tune report).
            if saves and not (epoch_ends or (t.max_steps and step >= t.max_steps)):
                self._checkpoint_if_needed()
        if self.dist.enabled:
            self.should_stop = self.dist.any_true(self.should_stop, self.device)

    # ------------------------------------------------------------------ logging
    def _log_train(self) -> None:
        window, self._window = self._window, {}
        if not window:
            return
        names: list[str] = []
        for keys in window:
            names += [k for k in keys if k not in names]
        index = {k: i for i, k in enumerate(names)}
        totals = torch.zeros(len(names), device=self.device)
        counts = torch.zeros(len(names), device=self.device)
        for keys, (n, values) in window.items():
            rows = torch.tensor([index[k] for k in keys], device=self.device)
            totals.index_add_(0, rows, values)
            counts[rows] += n
        # Each value averaged over the micro-batches (grad_norm: the steps) that reported it,
        # then over ranks.
        means = (self.dist.reduce_mean(totals) / counts).tolist()
        lr = float(self._step_lr if self._step_lr is not None else self.optimizer.param_groups[0]["lr"])
        metrics = {k: metric_float(k, v, "finalize_train_metrics") for k, v in
                   self.task.finalize_train_metrics(dict(zip(names, means))).items()}
        record = {"split": "train", "step": self.global_step, "epoch": self.epoch, "lr": lr,
                  **metrics, **self.monitor.summary()}
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        self.last_train_record = record
        self.callbacks.on_log(self, record)


def _accumulate(sums: dict, keys: tuple, values: torch.Tensor, n: int = 1) -> None:
    """sums[keys] = [count, summed values] plus `values`, the sum of n observations of `keys`.
    One entry per distinct set of names: a task may report some metrics only on some steps."""
    entry = sums.get(keys)
    if entry is None:
        sums[keys] = [n, values]
    else:
        entry[0] += n
        entry[1] = entry[1] + values
