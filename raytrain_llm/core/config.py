"""Configuration as dataclasses: one section per concern, composed in `Config`.

Sources, lowest precedence first: dataclass defaults < YAML file < environment
(`RAYTRAIN_<SECTION>__<FIELD>`) < `--set section.field=value`. Loading and strict
validation live in `config_loader.py`, the cross-field rules in `config_checks.py`; this
module declares the schema. Each field is declared once, with `setting(...)`: its default, a one-line doc, and its
allowed values or range; the README's config reference is generated from these
(`python -m raytrain_llm.core.config_reference`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, choices: tuple = (),
            ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with everything about it in one place: `default` (or `default_factory`), a
    one-line `doc` (the README's reference), and the simple rules `value_errors` checks: `choices`
    (allowed values), a lower bound `ge` (>=) or `gt` (>), an upper bound `le` (<=). Rules that
    involve two fields stay in `cross_field_errors`."""
    if not doc or "\n" in doc:
        raise ValueError("a config field needs a one-line doc")
    if ge is not None and gt is not None:
        raise ValueError("give ge or gt, not both")
    meta = {"doc": doc, "choices": tuple(choices), "ge": ge, "gt": gt, "le": le}
    return field(default=default, default_factory=default_factory, metadata=meta)


@dataclass
class ModelConfig:
    # Regression MLP (the `regression` task).
    input_dim: int = setting(16, "regression MLP: input features", ge=1)
    hidden_dim: int = setting(64, "regression MLP: hidden width", ge=1)
    # Decoder-only transformer (the `lm` task).
    vocab_size: int = setting(64, "token ids are 0 .. vocab_size - 1; 0: the prepared data's (its manifest)", ge=0)
    d_model: int = setting(64, "residual stream width (a multiple of n_heads)", ge=1)
    n_layers: int = setting(2, "transformer blocks", ge=1)
    n_heads: int = setting(4, "attention heads per block", ge=1)
    seq_len: int = setting(64, "tokens per sample (the context length)", ge=1)
    dropout: float = setting(0.0, "dropout probability", ge=0, le=1.0)
    mlp_type: str = setting("gelu", "the dense MLP of a block", choices=("gelu", "swiglu"))
    mlp_ratio: float = setting(4.0, "dense MLP hidden width / d_model", gt=0)
    position: str = setting("rope", "position encoding", choices=("rope", "learned"))
    norm: str = setting("rmsnorm", "normalisation layer", choices=("rmsnorm", "layernorm"))
    tie_embeddings: bool = setting(True, "the output projection shares the token embedding's weights")
    activation_checkpointing: bool = setting(False, "recompute each block's activations in backward "
                                                    "(less memory, more compute)")
    attention_backend: str = setting("auto", "SDPA kernel tried first on CUDA, torch's others after it; "
                                             "math forces the reference kernel everywhere",
                                     choices=("auto", "flash", "cudnn", "efficient", "math"))
    # Mixture of Experts.
    use_moe: bool = setting(False, "Mixture-of-Experts MLPs (the MoE keys below apply)")
    num_experts: int = setting(4, "routed experts per MoE block", ge=1)
    top_k: int = setting(2, "experts each token is routed to (<= num_experts)", ge=1)
    moe_every_n_layers: int = setting(1, "1: every block is MoE; 2: every second block, ...", ge=1)
    expert_hidden_dim: int = setting(0, "an expert's hidden width; 0: the dense MLP's", ge=0)
    num_shared_experts: int = setting(0, "experts every token goes through besides its top_k", ge=0)
    capacity_factor: float = setting(0.0, "tokens an expert takes, as a multiple of an even share; "
                                          "0: dropless", ge=0)
    aux_loss_coef: float = setting(0.01, "weight of the load-balancing loss", ge=0)
    aux_loss_scope: str = setting("micro_batch", "load fractions of the balancing loss: counted over this "
                                                 "rank's micro-batch, or summed over all data-parallel ranks "
                                                 "(global_batch)", choices=("micro_batch", "global_batch"))
    z_loss_coef: float = setting(0.001, "weight of the router z-loss", ge=0)
    bias_balancing: bool = setting(False, "DeepSeek-V3 aux-loss-free balancing (a per-expert routing bias)")
    bias_update_rate: float = setting(0.001, "bias_balancing: the bias's step per update", ge=0)
    moe_impl: str = setting("auto", "expert dispatch (see models/moe.py)",
                            choices=("auto", "grouped", "split", "padded", "loop"))


@dataclass
class TrainingConfig:
    seed: int = setting(42, "the training seed (initial weights, dropout, data order)")
    epochs: int = setting(3, "passes over the training data", ge=1)
    max_steps: int = setting(0, "optimizer steps; 0: no limit beyond epochs", ge=0)
    batch_size: int = setting(32, "samples per worker, per micro-batch", ge=1)
    grad_accum_steps: int = setting(1, "micro-batches per optimizer step", ge=1)
    lr: float = setting(1e-3, "peak learning rate", gt=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    betas: tuple = setting((0.9, 0.95), "AdamW betas: two numbers in [0, 1)")
    grad_clip: float = setting(1.0, "max gradient norm; 0: no clipping", ge=0)
    lr_schedule: str = setting("cosine", "the LR after warm-up", choices=("constant", "cosine", "linear"))
    warmup_steps: int = setting(0, "optimizer steps of linear warm-up", ge=0)
    min_lr_ratio: float = setting(0.1, "cosine/linear: the final LR as a fraction of lr", ge=0, le=1.0)
    validate: bool = setting(True, "false: no validation at all (benchmarks, pure throughput runs)")
    val_every_n_steps: int = setting(0, "validate every N optimizer steps; 0: at each epoch end only", ge=0)
    limit_val_batches: int = setting(0, "batches per validation; 0: the whole validation set", ge=0)
    nan_policy: str = setting("stop", "a non-finite loss or gradient stops the run (exit 1) or skips the step",
                              choices=("stop", "skip"))
    max_consecutive_skips: int = setting(20, "nan_policy=skip: this many skipped steps in a row end the run "
                                             "(exit 1)", ge=1)
    device: str = setting("auto", "auto: CUDA where there is one, else CPU", choices=("auto", "cpu", "cuda"))


@dataclass
class DataConfig:
    num_train_samples: int = setting(2048, "synthetic data: training samples", ge=1)
    num_val_samples: int = setting(512, "synthetic data: validation samples", ge=1)
    noise_std: float = setting(0.1, "regression label noise", ge=0)
    seed: int = setting(1234, "the data's own seed, apart from the training seed")
    num_workers: int = setting(0, "DataLoader worker processes", ge=0)
    pin_memory: bool = setting(True, "pinned host memory for batches (has an effect on CUDA only)")
    markov_concentration: float = setting(0.1, "synthetic lm data: lower is more predictable", gt=0)
    # lm data from files instead: flat token ids (.npy, or raw .bin of token_dtype, as nanoGPT's
    # prepare scripts write). Every window of seq_len + 1 tokens is a sample; num_*_samples unused.
    train_tokens: str = setting("", "lm: a token file (.npy, or raw .bin of token_dtype), a prepared directory, or a glob / comma-separated list of shards; empty: synthetic")
    val_tokens: str = setting("", "lm: validation tokens, as train_tokens; empty with a prepared train_tokens directory: its val split")
    token_dtype: str = setting("uint16", "element type of raw .bin token files",
                               choices=("uint8", "uint16", "uint32", "int32", "int64"))
    check_token_ids: bool = setting(True, "one pass over the token files at start (~0.3 s/GB cached) "
                                          "for ids >= vocab_size")


@dataclass
class DistributedConfig:
    launcher: str = setting("ray", "ray: Ray Train; local: in-process, no Ray; spawn: torch.multiprocessing",
                            choices=("ray", "local", "spawn"))
    num_workers: int = setting(1, "training processes (ranks)", ge=1)
    cpus_per_worker: float = setting(0.5, "Ray: CPUs reserved per worker", gt=0)
    gpus_per_worker: float = setting(0.0, "Ray: GPUs reserved per worker (needs use_gpu)", ge=0)
    use_gpu: bool = setting(False, "train on GPUs")
    backend: str = setting("auto", "torch.distributed backend; auto: nccl on GPU, gloo on CPU",
                           choices=("auto", "gloo", "nccl"))
    master_addr: str = setting("127.0.0.1", "spawn: the rendezvous address")
    master_port: int = setting(0, "spawn: the rendezvous port; 0: a free port, picked per run", ge=0, le=65535)
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS or a new local cluster")
    storage_path: str = setting("", "Ray Train's storage; empty: <logging.dir>/ray")
    run_name: str = setting("", "Ray Train's run name; empty: derived from the task and time")
    max_failures: int = setting(0, "Ray: worker-group restarts before the run fails; -1: no limit", ge=-1)
    max_preemption_failures: int = setting(
        -1, "Ray: restarts after a node's preemption (drained with reason PREEMPTION), counted apart from "
        "max_failures; -1: no limit", ge=-1)
    find_unused_parameters: bool = setting(False, "DDP: allow parameters that get no gradient in a step")
    strategy: str = setting("ddp", "ddp: every worker holds the whole model; fsdp: parameters, gradients and "
                                   "optimizer state sharded across workers (FSDP2)", choices=("ddp", "fsdp"))
    fsdp_reshard_after_forward: bool = setting(True, "fsdp: free gathered parameters after forward "
                                                     "(less memory, one more all-gather in backward)")
    fsdp_cpu_offload: bool = setting(False, "fsdp: keep sharded parameters, gradients and optimizer state "
                                            "in CPU memory (needs CUDA and 2+ workers)")
    placement_strategy: str = setting("PACK", "Ray: how the workers are placed on nodes",
                                      choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    expert_parallel: int = setting(1, "ranks that split each MoE layer's experts (all-to-all token exchange); "
                                      "1: every rank holds all experts", ge=1)
    dashboard: bool = setting(False, "Ray: start the dashboard (web UI, State API, `ray list ...`) with a "
                                     "private local Ray; a Tune sweep always starts it")


@dataclass
class OptimizationConfig:
    compile: bool = setting(False, "torch.compile the model")
    compile_mode: str = setting("default", "torch.compile's mode",
                                choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    amp: str = setting("none", "mixed precision (fp16 needs CUDA)", choices=("none", "bf16", "fp16"))
    tf32: bool = setting(True, "TF32 matmuls on GPUs that have them")
    fused_optimizer: bool = setting(True, "fused AdamW where the device supports it")
    chunked_cross_entropy: int = setting(0, "rows per chunk of the LM loss; 0: the logits at once", ge=0)
    keep_host_memory: bool = setting(True, "CPU training: glibc keeps freed memory (no per-step page faults)")


@dataclass
class CheckpointConfig:
    enabled: bool = setting(True, "save checkpoints")
    dir: str = setting("", "empty: <logging.dir>/checkpoints")
    resume: str = setting("none", "none, auto (this folder's newest valid checkpoint) or a checkpoint's path")
    every_n_steps: int = setting(0, "save every N optimizer steps; 0: at each epoch end only", ge=0)
    keep_last: int = setting(2, "newest checkpoints kept; 0: all", ge=0)
    keep_best: int = setting(1, "best checkpoints kept, ranked by monitor", ge=0)
    monitor: str = setting("val/loss", "what ranks checkpoints: a validation metric or a train record's field")
    mode: str = setting("min", "whether a lower or a higher monitor is better", choices=("min", "max"))


@dataclass
class LoggingConfig:
    level: str = setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    dir: str = setting("runs/default", "the run's folder: logs, metrics, config.yaml, checkpoints")
    log_every_n_steps: int = setting(10, "a train record every N optimizer steps", ge=1)
    tensorboard: bool = setting(True, "TensorBoard scalars in <logging.dir>/tensorboard")
    progress_bar: str = setting("auto", "auto: a bar on a terminal, lines otherwise", choices=("auto", "on", "off"))
    progress_every_s: float = setting(30.0, "without a terminal: a progress line at least this often (and every "
                                      "tenth of the run's steps)", gt=0)
    trackers: list = setting(doc="experiment trackers fed from rank 0: mlflow, wandb (tensorboard here = tensorboard: true)",
                             default_factory=list)
    experiment: str = setting("", "MLflow experiment / W&B project; empty: raytrain_llm (a sweep: its name)")
    run_name: str = setting("", "the tracker run's name; empty: the last folder of logging.dir")
    mlflow_tracking_uri: str = setting("", "empty: $MLFLOW_TRACKING_URI, else sqlite:///<logging.dir>/mlflow.db")
    wandb_mode: str = setting("online", "online, or offline (no network; `wandb sync` uploads later)",
                              choices=("online", "offline"))
    tracker_log_checkpoint: bool = setting(False, "upload the best (else latest) checkpoint to the trackers at the end")


@dataclass
class CallbacksConfig:
    early_stopping: bool = setting(False, "stop when callbacks.monitor stops improving")
    early_stopping_patience: int = setting(3, "validations without improvement before stopping", ge=1)
    early_stopping_min_delta: float = setting(0.0, "the smallest change that counts as an improvement", ge=0)
    monitor: str = setting("val/loss", "the metric early stopping watches")
    mode: str = setting("min", "whether a lower or a higher monitor is better", choices=("min", "max"))
    profile_steps: int = setting(0, "optimizer steps traced by torch.profiler; 0: off", ge=0)
    profile_start_step: int = setting(5, "the first traced step (after compile and warm-up)", ge=1)


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

TRACKERS = ("tensorboard", "mlflow", "wandb")


def section_fields() -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every section field, in declaration order."""
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield f"{name}.{f.name}", f


# The simple rules, read from the fields' `setting(...)`: what `value_errors` checks.
CHOICES = {key: f.metadata["choices"] for key, f in section_fields() if f.metadata.get("choices")}
# (lower bound, inclusive?) and the upper bounds (inclusive), for numeric fields.
MINIMUMS = {key: (f.metadata["ge"], True) if f.metadata["ge"] is not None else (f.metadata["gt"], False)
            for key, f in section_fields()
            if f.metadata.get("ge") is not None or f.metadata.get("gt") is not None}
MAXIMUMS = {key: f.metadata["le"] for key, f in section_fields() if f.metadata.get("le") is not None}


@dataclass
class Config:
    task: str = setting("regression", "a registered task (regression, lm) or package.module:ClassName, "
                                      "which imports and runs that module")
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    task_options: dict[str, Any] = setting(
        doc="a user task's own settings, checked against its Options dataclass (core/task_options.py)",
        default_factory=dict)

    # --- plain dict (the config travels to Ray workers and into checkpoints); back, strictly:
    # config_loader.config_from_mapping ---
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        out["task_options"] = dict(self.task_options)
        return out

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.dir, "checkpoints")
