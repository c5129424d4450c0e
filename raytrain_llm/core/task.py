"""`TrainingTask`: what a user writes. The engine owns the loop and calls these hooks.

A task builds its pieces (model, optimizer, scheduler, criterion, data module) from the
`Config` and computes one step's loss. It never calls `backward()` or `optimizer.step()`:
the engine does, so AMP, accumulation, clipping and DDP behave the same for every task.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import torch
from torch import nn

from raytrain_llm.core.config import Config
from raytrain_llm.core.errors import UsageError
from raytrain_llm.core.task_options import parse_task_options

FUSED_ADAMW_DEVICES = ("cuda", "cpu")


@dataclass
class StepOutput:
    """A step's loss (the engine backpropagates it) and extra metrics to log.

    Metrics may be tensors: the engine turns them into floats only on logging steps, so a
    step never waits for the device just to report.
    """

    loss: torch.Tensor
    metrics: dict[str, Union[torch.Tensor, float]] = field(default_factory=dict)
    num_samples: Optional[int] = None
    num_tokens: Optional[int] = None


StepResult = Union[StepOutput, torch.Tensor, tuple]


def as_step_output(result: StepResult, hook: str = "train_step") -> StepOutput:
    if isinstance(result, StepOutput):
        return result
    if isinstance(result, torch.Tensor):
        return StepOutput(loss=result)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        return StepOutput(loss=result[0], metrics=dict(result[1]))
    what = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"a {type(result).__name__}"
    raise UsageError(f"{hook} returned {what}: return a StepOutput, a loss tensor, or (loss, metrics dict)")


def samples_in_batch(batch: Any) -> int:
    """What a step counts when it leaves StepOutput.num_samples unset: the leading dimension of
    the batch's first tensor (through dicts, lists and tuples); 1 when there is none."""
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, dict):
        return samples_in_batch(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return samples_in_batch(batch[0])
    return 1


# What decides the names validation reports (TrainingTask.validation_step runs train_step).
VALIDATION_HOOKS = ("validation_step", "finalize_validation")


def declared_validation_metrics(task_cls: type, config: Config) -> Optional[frozenset]:
    """task_cls.validation_metrics(config), trusted only when no subclass below the class that
    declares them overrides a hook that makes the metrics: a subclass of RegressionTask with its
    own validation_step would otherwise inherit a stale list. None: unknown until validation.
    A declaration that cannot be right (not a set of `val/` names with val/loss) is a usage
    error naming it, rather than a refusal of the user's monitor."""
    declarer = next(c for c in task_cls.__mro__ if "validation_metrics" in vars(c))
    hooks = VALIDATION_HOOKS + (("train_step",) if task_cls.validation_step is TrainingTask.validation_step else ())
    for c in task_cls.__mro__:
        if c is declarer:
            break
        if any(hook in vars(c) for hook in hooks):
            return None
    where = f"{task_cls.__name__}.validation_metrics()"
    if not isinstance(vars(declarer)["validation_metrics"], (classmethod, staticmethod)):
        raise UsageError(f"{where} must be a classmethod (it is called before the task is built)")
    names = task_cls.validation_metrics(config)
    if names is None:
        return None
    if (not isinstance(names, (set, frozenset, list, tuple))
            or not all(isinstance(n, str) and n.startswith("val/") for n in names) or "val/loss" not in names):
        raise UsageError(f"{where} returned {names!r}: return None or a set of the validation metric names, "
                         "each 'val/...', val/loss among them")
    return frozenset(names)


# Hooks through which a task reads config keys: a subclass overriding one of them may read keys
# that the class declaring `inactive_keys` above it calls unused.
CONFIG_READING_HOOKS = ("__init__", "build_model", "build_data_module", "build_criterion", "build_optimizer",
                        "build_scheduler", "train_step", "validation_step", "on_optimizer_step")


def declared_inactive_keys(task_cls: type, config: Config) -> dict[str, str]:
    """task_cls.inactive_keys(config), trusted only when no subclass below the class that
    declares them overrides a hook that reads the config (an `OptionsTask(RegressionTask)` with
    its own build_model may use keys RegressionTask does not); {} otherwise: nothing is said to
    be unused that the task might read."""
    declarer = next(c for c in task_cls.__mro__ if "inactive_keys" in vars(c))
    for c in task_cls.__mro__:
        if c is declarer:
            break
        if any(hook in vars(c) for hook in CONFIG_READING_HOOKS):
            return {}
    return dict(task_cls.inactive_keys(config))


def schedule_inactive_keys(config: Config) -> dict[str, str]:
    """What the built-in LR schedule (`TrainingTask.build_scheduler`) ignores under `config`, for
    the `inactive_keys` of a task that keeps that schedule."""
    if config.training.lr_schedule == "constant":
        return {"training.min_lr_ratio": "training.lr_schedule is constant"}
    return {}


class TrainingTask(ABC):
    """Subclass this; implement `build_model`, `build_data_module` and `train_step`.

    The engine builds one task per process (every rank), from the run's `Config`, and calls the
    hooks below; their order: `build_data_module`, `configure_callbacks`, `build_model`,
    `build_optimizer`, `build_scheduler`, `build_criterion`, `flops_per_token`, then per step
    `train_step` (and `tokens_in_batch` when it reports no `num_tokens`) and after each applied
    optimizer step `on_optimizer_step`; `validation_step` per validation batch, then
    `finalize_validation`; `finalize_train_metrics` per train record. A hook never calls
    `backward()` or `optimizer.step()`: the engine does, so AMP, accumulation, clipping, NaN
    checks and DDP work the same for every task.

    A hook raises `raytrain_llm.core.errors.UsageError` for a mistake the user can fix (the run
    stops with that one line, exit 2); any other exception fails the run (exit 1, traceback in
    `<logging.dir>/error.log`).

    A task's own settings: declare a dataclass as `Options`; `task_options.<name>` (YAML, `--set`,
    RAYTRAIN_TASK_OPTIONS__<NAME>) is checked against it and handed over as `self.options`.
    """

    Options: ClassVar[Optional[type]] = None

    def __init__(self, config: Config):
        """Receives the validated run config. Raises `ConfigError` (exit 2) when
        `config.task_options` does not fit `Options` (an unknown name, a wrong type, a required
        option unset). Builds nothing heavy: the launcher also builds a task in its driver."""
        self.config = config
        self.options = parse_task_options(type(self).Options, config.task_options, type(self).__name__)

    # --- required ---
    @abstractmethod
    def build_model(self) -> nn.Module:
        """Returns the model, on the CPU: the engine moves it to the device, wraps it (compile,
        DDP) or shards it (fsdp) and seeds the RNG first, so every rank builds the same initial
        weights."""

    @abstractmethod
    def build_data_module(self):
        """Returns the `raytrain_llm.data.DataModule` feeding this task's batches (on Ray, the
        launcher shards it with Ray Data). Called once per process, before the model exists."""

    @abstractmethod
    def train_step(self, model: nn.Module, batch: Any, criterion: Optional[nn.Module]) -> StepResult:
        """One micro-batch's forward pass. Receives the model as wrapped for training (DDP and/or
        compiled: call it, do not reach into it), the batch already on the device (the data
        module's collated batch, usually a dict of tensors) and `build_criterion()`'s module;
        runs under the configured autocast.

        Returns a `StepOutput`, a loss tensor or `(loss, metrics dict)`. The loss: one number
        attached to the graph (the engine backpropagates it, divided by the step's micro-batches);
        metrics: one number each (a tensor, a Python or numpy number), named neither as the
        engine's record fields (`loss`, `lr`, `grad_norm`, ...) nor `val/...`. A wrong return
        is a `UsageError` naming this hook."""

    # --- sensible defaults, override when needed ---
    @classmethod
    def validation_metrics(cls, config: Config) -> Optional[frozenset]:
        """The names validation will report for this config (`val/loss`, `val/<metric>`, what
        finalize_validation adds), when the task knows them in advance. Then a monitor or a
        sweep metric naming a `val/` metric is checked before anything starts, not at the first
        validation minutes (or a whole sweep) later; the engine checks the declaration against
        what validation reports. None (the default): checked at the first validation only.
        Called on the class, before any task is built; returns None or a set of `val/` names
        holding `val/loss` (anything else is a `UsageError` naming this method)."""
        return None

    @classmethod
    def inactive_keys(cls, config: Config) -> dict[str, str]:
        """The `model.`/`data.`/`training.` keys this task does not read under `config`, each with
        the reason (`"task lm does not use it"`, `"model.use_moe is false"`): a sweep over one is
        refused, since its trials would train the same model. Called before the task is built.
        {} (the default): the task may read any key. A subclass overriding a hook that reads the
        config does not inherit its parent's declaration (see `declared_inactive_keys`)."""
        return {}

    def validation_step(self, model: nn.Module, batch: Any, criterion: Optional[nn.Module]) -> StepResult:
        """One validation batch, under torch.no_grad(), autocast and eval mode. Receives the
        model unwrapped from DDP (compiled if compile is on), the batch on the device and the
        criterion; returns what train_step may return, except that the loss needs no graph.
        The engine averages the loss (as `val/loss`) and each metric (as `val/<name>`) over all
        batches and ranks, weighted by each batch's samples. Default: train_step's result."""
        return self.train_step(model, batch, criterion)

    def finalize_validation(self, metrics: dict[str, float]) -> dict[str, float]:
        """The validation metrics once averaged over all batches and ranks: the place for values
        that are not a mean of per-batch values (perplexity = exp(mean loss), F1, ...).
        Receives {`val/loss`: float, `val/<metric>`: float, ...}; returns the dict to report
        (each value one number; a non-number is a `UsageError` naming this hook)."""
        return metrics

    def finalize_train_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """A train record's metrics once averaged over the logging window and the ranks (`loss`,
        `grad_norm` and the train_step metrics), as finalize_validation for validation; returns
        the dict to log."""
        return metrics

    def build_criterion(self) -> Optional[nn.Module]:
        """A loss module, moved to the device and passed to every step as `criterion`; None (the
        default) when the steps compute their loss themselves."""
        return None

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Receives the model on its device (before compile/DDP; under fsdp already sharded: its
        parameters are DTensors); returns its optimizer, whose state the engine checkpoints. Default: AdamW with training.lr/betas/weight_decay; no
        weight decay on biases, norms and embeddings (1-D params, the weights of every
        nn.Embedding, and params tagged `_no_weight_decay`); fused where the device allows."""
        t = self.config.training
        # By identity: a weight tied to a Linear head is still an embedding. parameters()
        # yields a shared parameter once, so it lands in exactly one group.
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
        decay, no_decay = [], []
        for p in model.parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim < 2 or id(p) in embeddings or getattr(p, "_no_weight_decay", False)
            (no_decay if skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        device_type = next(model.parameters()).device.type
        # One kernel over all parameters instead of ~10 per parameter: on CPU (torch >= 2.4)
        # as well, where it is ~5x faster than the per-tensor loop torch picks by default.
        fused = self.config.optimization.fused_optimizer and device_type in FUSED_ADAMW_DEVICES
        return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), fused=fused or None)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int):
        """Receives the optimizer and the run's planned optimizer steps; returns an LR scheduler
        (stepped once per applied optimizer step; a ReduceLROnPlateau is stepped by the
        LRSchedulerCallback on the monitored metric instead) or None. Called again when a
        resumed run's length changes, then stepped to the resume position. Default: linear
        warmup, then constant, cosine or linear decay to `min_lr_ratio` of the peak."""
        t = self.config.training
        warmup, floor = t.warmup_steps, t.min_lr_ratio
        decay_steps = max(1, total_steps - warmup)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, LRSchedule(t.lr_schedule, warmup, decay_steps, floor)
        )

    def configure_callbacks(self) -> list:
        """This task's own `raytrain_llm.core.callbacks.Callback`s (a sample generator, a custom
        stop rule, ...), run after the ones the config sets up and the launcher adds; their
        state is checkpointed with the run. Default: none."""
        return []

    def on_optimizer_step(self, model: nn.Module) -> None:
        """Called after every applied optimizer step (not a skipped one) with the unwrapped model,
        e.g. to update MoE router biases; every rank calls it, so a collective here is safe."""

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        """distributed.strategy=fsdp: the submodules sharded as one unit each (gathered whole only
        around their own forward and backward); the root model takes the parameters left over.
        Receives the model on its device. Default: the children of every `nn.ModuleList` (a
        transformer's blocks)."""
        from raytrain_llm.core.parallel.fsdp import default_units  # torch's FSDP only where it is used

        return default_units(model)

    def flops_per_token(self, model: nn.Module) -> Optional[float]:
        """Training FLOPs per token (forward + backward) of the unwrapped model, for the `tflops`
        and `mfu` fields; None (the default) when not meaningful."""
        return None

    def tokens_in_batch(self, batch: Any) -> Optional[int]:
        """Tokens a batch holds, for tokens/s, when the step's StepOutput.num_tokens is unset;
        None (the default) for non-sequence tasks."""
        return None


class LRSchedule:
    """Picklable LR multiplier (a lambda would not survive Ray or checkpoint round trips)."""

    def __init__(self, kind: str, warmup: int, decay_steps: int, floor: float):
        self.kind, self.warmup, self.decay_steps, self.floor = kind, warmup, decay_steps, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / self.decay_steps)
        if self.kind == "linear":
            return 1.0 - (1.0 - self.floor) * progress
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
