"""Configuration as dataclasses: one section per concern, composed in `Config`.

Sources, lowest precedence first: dataclass defaults < YAML file < environment
(`RAYTRAIN_<SECTION>__<FIELD>`) < `--set section.field=value`. Loading and strict
validation live in `config_loader.py`; this module only declares the schema and the
cross-field rules, so a reader finds every knob in one place.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelConfig:
    # Regression MLP (the `regression` task).
    input_dim: int = 16
    hidden_dim: int = 64
    # Decoder-only transformer (the `lm` task).
    vocab_size: int = 64  # 0: the vocabulary size in data.train_tokens' manifest (a prepared directory)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 64
    dropout: float = 0.0
    mlp_type: str = "gelu"  # gelu | swiglu
    mlp_ratio: float = 4.0
    position: str = "rope"  # rope | learned
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    tie_embeddings: bool = True
    activation_checkpointing: bool = False
    attention_backend: str = "auto"  # auto | flash | cudnn | efficient | math: SDPA kernel tried first
    # Mixture of Experts.
    use_moe: bool = False
    num_experts: int = 4
    top_k: int = 2
    moe_every_n_layers: int = 1  # 1: every block is MoE; 2: every second block, ...
    expert_hidden_dim: int = 0  # 0: same width as the dense MLP
    num_shared_experts: int = 0
    capacity_factor: float = 0.0  # 0: dropless
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    bias_balancing: bool = False  # DeepSeek-V3 aux-loss-free balancing
    bias_update_rate: float = 0.001
    moe_impl: str = "auto"  # auto | grouped | split | padded | loop (see models/moe.py)


@dataclass
class TrainingConfig:
    seed: int = 42
    epochs: int = 3
    max_steps: int = 0  # optimizer steps; 0: no limit beyond `epochs`
    batch_size: int = 32  # per worker, per micro-batch
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping
    lr_schedule: str = "cosine"  # constant | cosine | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    validate: bool = True  # false: no validation at all (benchmarks, pure throughput runs)
    val_every_n_steps: int = 0  # 0: validate at the end of every epoch only
    limit_val_batches: int = 0  # 0: the whole validation set
    nan_policy: str = "stop"  # stop | skip
    max_consecutive_skips: int = 20  # nan_policy=skip: this many skipped steps in a row end the run (exit 1)
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class DataConfig:
    num_train_samples: int = 2048
    num_val_samples: int = 512
    noise_std: float = 0.1  # regression label noise
    seed: int = 1234  # the data's own seed, apart from the training seed
    num_workers: int = 0  # DataLoader worker processes
    pin_memory: bool = True  # only has an effect on CUDA
    markov_concentration: float = 0.1  # lm data: lower is more predictable
    # lm data from files instead: flat token ids (.npy, or raw .bin of token_dtype, as nanoGPT's
    # prepare scripts write). Every window of seq_len + 1 tokens is a sample; num_*_samples unused.
    # Each may also be a prepared directory (python -m raytrain_llm.prepare; val_tokens may then be
    # left empty to read its val split) or a glob / comma-separated list of shards read as one stream.
    train_tokens: str = ""
    val_tokens: str = ""
    token_dtype: str = "uint16"  # for raw .bin files
    check_token_ids: bool = True  # one pass over the files at start (~0.3 s/GB cached) for ids >= vocab_size


@dataclass
class DistributedConfig:
    launcher: str = "ray"  # ray | local | spawn
    num_workers: int = 1
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 0.0
    use_gpu: bool = False
    backend: str = "auto"  # auto | gloo | nccl
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: a free port, picked per run (spawn launcher)
    address: str = ""  # Ray cluster address; empty: RAY_ADDRESS or a new local cluster
    storage_path: str = ""  # empty: <logging.dir>/ray
    run_name: str = ""  # empty: derived from the task and time
    max_failures: int = 0
    find_unused_parameters: bool = False
    placement_strategy: str = "PACK"


@dataclass
class OptimizationConfig:
    compile: bool = False
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    amp: str = "none"  # none | bf16 | fp16
    tf32: bool = True
    fused_optimizer: bool = True  # fused AdamW where the device supports it
    chunked_cross_entropy: int = 0  # rows per chunk; 0 computes the logits at once
    keep_host_memory: bool = True  # CPU training: glibc keeps freed memory (no per-step page faults)


@dataclass
class CheckpointConfig:
    enabled: bool = True
    dir: str = ""  # empty: <logging.dir>/checkpoints
    resume: str = "none"  # none | auto | <path to a checkpoint directory>
    every_n_steps: int = 0  # 0: at the end of every epoch only
    keep_last: int = 2
    keep_best: int = 1
    monitor: str = "val/loss"
    mode: str = "min"  # min | max


@dataclass
class LoggingConfig:
    level: str = "INFO"
    dir: str = "runs/default"
    log_every_n_steps: int = 10
    tensorboard: bool = True
    progress_bar: str = "auto"  # auto | on | off


@dataclass
class CallbacksConfig:
    early_stopping: bool = False
    early_stopping_patience: int = 3
    early_stopping_min_delta: float = 0.0
    monitor: str = "val/loss"
    mode: str = "min"
    profile_steps: int = 0  # optimizer steps traced by torch.profiler; 0 = off
    profile_start_step: int = 5  # the first of them (after compile/warm-up)


SECTIONS = {
    "model": ModelConfig,
    "training": TrainingConfig,
    "data": DataConfig,
    "distributed": DistributedConfig,
    "optimization": OptimizationConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "callbacks": CallbacksConfig,
}

CHOICES = {
    "model.mlp_type": ("gelu", "swiglu"),
    "model.position": ("rope", "learned"),
    "model.norm": ("rmsnorm", "layernorm"),
    "model.moe_impl": ("auto", "grouped", "split", "padded", "loop"),
    "model.attention_backend": ("auto", "flash", "cudnn", "efficient", "math"),
    "training.lr_schedule": ("constant", "cosine", "linear"),
    "training.nan_policy": ("stop", "skip"),
    "data.token_dtype": ("uint8", "uint16", "uint32", "int32", "int64"),
    "training.device": ("auto", "cpu", "cuda"),
    "distributed.launcher": ("ray", "local", "spawn"),
    "distributed.backend": ("auto", "gloo", "nccl"),
    "distributed.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "optimization.amp": ("none", "bf16", "fp16"),
    "optimization.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "checkpoint.mode": ("min", "max"),
    "callbacks.mode": ("min", "max"),
    "logging.level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "logging.progress_bar": ("auto", "on", "off"),
}

# (dotted key, lower bound, inclusive?) for numeric fields.
MINIMUMS = {
    "model.input_dim": (1, True), "model.hidden_dim": (1, True),
    "model.vocab_size": (0, True), "model.d_model": (1, True), "model.n_layers": (1, True),
    "model.n_heads": (1, True), "model.seq_len": (1, True), "model.dropout": (0, True),
    "model.mlp_ratio": (0, False), "model.num_experts": (1, True), "model.top_k": (1, True),
    "model.moe_every_n_layers": (1, True), "model.expert_hidden_dim": (0, True),
    "model.num_shared_experts": (0, True), "model.capacity_factor": (0, True),
    "model.aux_loss_coef": (0, True), "model.z_loss_coef": (0, True),
    "model.bias_update_rate": (0, True),
    "training.epochs": (1, True), "training.max_steps": (0, True),
    "training.batch_size": (1, True), "training.grad_accum_steps": (1, True),
    "training.lr": (0, False), "training.weight_decay": (0, True), "training.grad_clip": (0, True),
    "training.warmup_steps": (0, True), "training.min_lr_ratio": (0, True),
    "training.max_consecutive_skips": (1, True), "training.val_every_n_steps": (0, True), "training.limit_val_batches": (0, True),
    "data.num_train_samples": (1, True), "data.num_val_samples": (1, True),
    "data.noise_std": (0, True), "data.num_workers": (0, True),
    "data.markov_concentration": (0, False),
    "distributed.num_workers": (1, True), "distributed.cpus_per_worker": (0, False),
    "distributed.gpus_per_worker": (0, True), "distributed.master_port": (0, True),
    "distributed.max_failures": (-1, True),
    "optimization.chunked_cross_entropy": (0, True),
    "checkpoint.every_n_steps": (0, True), "checkpoint.keep_last": (0, True),
    "checkpoint.keep_best": (0, True),
    "logging.log_every_n_steps": (1, True),
    "callbacks.early_stopping_patience": (1, True), "callbacks.early_stopping_min_delta": (0, True),
    "callbacks.profile_steps": (0, True), "callbacks.profile_start_step": (1, True),
}
MAXIMUMS = {"model.dropout": 1.0, "training.min_lr_ratio": 1.0, "distributed.master_port": 65535}


@dataclass
class Config:
    task: str = "regression"
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    # A user task's own settings, checked against its `Options` dataclass (tasks/task_options.py).
    task_options: dict[str, Any] = field(default_factory=dict)

    # --- plain-dict round trip (the config travels to Ray workers and into checkpoints) ---
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        out["task_options"] = dict(self.task_options)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Strict: unknown keys and wrong types raise `ConfigError` (see config_loader)."""
        from raytrain_llm.core.config_loader import config_from_mapping

        return config_from_mapping(data)

    def validate(self) -> list[str]:
        """Every problem at once, each naming its dotted key."""
        return cross_field_errors(self)

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.dir, "checkpoints")


def value_errors(key: str, value: Any) -> list[str]:
    errors = []
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{key}: must be a finite number (got {value!r})"]
    if key in CHOICES and value not in CHOICES[key]:
        errors.append(f"{key}: must be one of {', '.join(CHOICES[key])} (got {value!r})")
    if key in MINIMUMS and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, inclusive = MINIMUMS[key]
        if value < low or (value == low and not inclusive):
            op = ">=" if inclusive else ">"
            errors.append(f"{key}: must be {op} {low} (got {value!r})")
    if key in MAXIMUMS and isinstance(value, (int, float)) and value > MAXIMUMS[key]:
        errors.append(f"{key}: must be <= {MAXIMUMS[key]} (got {value!r})")
    return errors


def cross_field_errors(cfg: Config) -> list[str]:
    errors: list[str] = []
    for name in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, name)):
            errors += value_errors(f"{name}.{f.name}", getattr(getattr(cfg, name), f.name))
    m, t, o, d = cfg.model, cfg.training, cfg.optimization, cfg.distributed
    if m.use_moe and m.top_k > m.num_experts:
        errors.append(f"model.top_k: must be <= model.num_experts ({m.num_experts}) (got {m.top_k})")
    if m.use_moe and m.moe_every_n_layers > m.n_layers:
        errors.append(f"model.moe_every_n_layers: no block would be MoE with model.n_layers={m.n_layers} "
                      f"(got {m.moe_every_n_layers})")
    if cfg.callbacks.early_stopping and not t.validate:
        errors.append("callbacks.early_stopping: needs training.validate=true (it watches a validation metric)")
    if cfg.checkpoint.resume == "auto" and not cfg.checkpoint.enabled:
        errors.append("checkpoint.resume: auto continues from this run's own checkpoints, "
                      "but checkpoint.enabled=false")
    if m.d_model % m.n_heads:
        errors.append(f"model.d_model: must be divisible by model.n_heads ({m.n_heads}) (got {m.d_model})")
    elif m.position == "rope" and (m.d_model // m.n_heads) % 2:
        errors.append("model.position: rope needs an even head size (model.d_model / model.n_heads)")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        errors.append(f"training.betas: must be two numbers in [0, 1) (got {list(t.betas)!r})")
    if o.amp == "fp16" and t.device == "cpu":
        errors.append("optimization.amp: fp16 needs a CUDA device (use bf16 on CPU)")
    if d.backend == "nccl" and not d.use_gpu and d.launcher != "local":
        errors.append("distributed.backend: nccl needs distributed.use_gpu=true")
    if d.gpus_per_worker > 0 and not d.use_gpu:
        errors.append("distributed.gpus_per_worker: set distributed.use_gpu=true to reserve GPUs")
    if cfg.data.val_tokens and not cfg.data.train_tokens:
        errors.append("data.val_tokens: needs data.train_tokens (token files are used for both splits or neither)")
    if m.vocab_size == 1:
        errors.append("model.vocab_size: must be >= 2, or 0 to take it from a prepared data.train_tokens (got 1)")
    elif m.vocab_size == 0 and cfg.task == "lm" and not _is_prepared_dir(cfg.data.train_tokens):
        errors.append("model.vocab_size: 0 (take it from the data) needs data.train_tokens to be a prepared "
                      "directory (python -m raytrain_llm.prepare)")
    if cfg.data.train_tokens and t.validate and not cfg.data.val_tokens and not _is_prepared_dir(cfg.data.train_tokens):
        errors.append("data.val_tokens: a validation token file is needed with data.train_tokens "
                      "(or set training.validate=false)")
    if cfg.checkpoint.resume not in ("none", "auto") and not cfg.checkpoint.resume.strip():
        errors.append("checkpoint.resume: must be none, auto or a checkpoint path")
    return errors + folder_errors(cfg)


MOE_KEYS = ("num_experts", "top_k", "moe_every_n_layers", "expert_hidden_dim", "num_shared_experts",
            "capacity_factor", "aux_loss_coef", "z_loss_coef", "bias_balancing", "bias_update_rate", "moe_impl")
# The built-in tasks' own keys: a user task may read any model/data key, under its own rules.
REGRESSION_KEYS = ("model.input_dim", "model.hidden_dim", "data.noise_std")
TRANSFORMER_KEYS = tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
                         if f"model.{f.name}" not in REGRESSION_KEYS and f.name != "dropout")
LM_DATA_KEYS = ("data.markov_concentration", "data.train_tokens", "data.val_tokens", "data.token_dtype",
                "data.check_token_ids")


def inactive_keys(cfg: Config) -> dict[str, str]:
    """Keys whose value cannot change this config's run, each with the setting that switches it
    off: a sweep over one of them would train the same model in every trial. Model and data
    keys (and the built-in LR schedule's) only for the built-in tasks."""
    off: dict[str, str] = {}
    m, t, c = cfg.model, cfg.training, cfg.callbacks

    def switched_off(keys, reason: str) -> None:
        off.update({k: reason for k in keys if k not in off})

    if cfg.task == "regression":
        switched_off(TRANSFORMER_KEYS + LM_DATA_KEYS, "task regression does not use it")
    elif cfg.task == "lm":
        switched_off(REGRESSION_KEYS, "task lm does not use it")
        if not m.use_moe:
            switched_off([f"model.{k}" for k in MOE_KEYS], "model.use_moe is false")
        elif not m.bias_balancing:
            switched_off(["model.bias_update_rate"], "model.bias_balancing is false")
        if cfg.data.train_tokens:
            switched_off(["data.num_train_samples", "data.num_val_samples", "data.markov_concentration"],
                         "data.train_tokens is set")
    if cfg.task in ("regression", "lm") and t.lr_schedule == "constant":
        switched_off(["training.min_lr_ratio"], "training.lr_schedule is constant")
    if not t.validate:
        switched_off(["training.val_every_n_steps", "training.limit_val_batches"], "training.validate is false")
    if t.nan_policy == "stop":
        switched_off(["training.max_consecutive_skips"], "training.nan_policy is stop")
    if not c.early_stopping:
        switched_off([f"callbacks.{k}" for k in ("early_stopping_patience", "early_stopping_min_delta",
                                                 "monitor", "mode")], "callbacks.early_stopping is false")
    if not c.profile_steps:
        switched_off(["callbacks.profile_start_step"], "callbacks.profile_steps is 0")
    if not cfg.optimization.compile:
        switched_off(["optimization.compile_mode"], "optimization.compile is false")
    if not cfg.checkpoint.enabled:
        switched_off([f"checkpoint.{k}" for k in ("every_n_steps", "keep_last", "keep_best")],
                     "checkpoint.enabled is false")
    return off


def _is_prepared_dir(path: str) -> bool:
    """A folder written by python -m raytrain_llm.prepare (its manifest names the splits)."""
    return bool(path.strip()) and os.path.isfile(os.path.join(path.strip(), "manifest.json"))


def folder_errors(cfg: Config) -> list[str]:
    """Output folders that cannot be created: caught here, not after a run has trained."""
    errors = []
    if not cfg.logging.dir.strip():
        errors.append("logging.dir: must not be empty (the folder for logs, metrics and checkpoints)")
    for key, path in (("logging.dir", cfg.logging.dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        blocker = _blocking_file(path) if path.strip() else None
        if blocker is not None:
            what = "is a file" if os.path.abspath(path) == blocker else f"is inside {blocker!r}, a file"
            errors.append(f"{key}: {path!r} {what}, not a folder")
    return errors


def _blocking_file(path: str) -> Optional[str]:
    """The existing non-folder at `path` or at one of its parents, which makes creating it fail."""
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    return None if os.path.isdir(p) else p
