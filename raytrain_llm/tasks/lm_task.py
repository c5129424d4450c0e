"""`LanguageModelingTask`: next-token prediction with the GPT/MoE model on Markov-chain data.

Train loss = CE + aux_loss_coef * balance loss + z_loss_coef * router z-loss (both summed
over MoE layers); validation loss is the bare CE, so `val/loss` is directly comparable with
the data's entropy floor (`MarkovTokenDataModule.entropy_floor()`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from raytrain_llm.core.callbacks.run_files import CopyRunFiles
from raytrain_llm.core.errors import UsageError, raised_on_every_rank
from raytrain_llm.core.task import StepOutput, TrainingTask, schedule_inactive_keys
from raytrain_llm.data.token_data import MarkovTokenDataModule
from raytrain_llm.data.token_shards import ShardedTokenDataModule, resolve_vocab_size
from raytrain_llm.data.tokenizer import TOKENIZER_FILE
from raytrain_llm.models import GPT, flops_per_token
from raytrain_llm.models.wrappers import unwrap

REGRESSION_KEYS = ("model.input_dim", "model.hidden_dim", "data.noise_std")  # the regression MLP's and data's
MOE_KEYS = tuple(f"model.{k}" for k in ("num_experts", "top_k", "moe_every_n_layers", "expert_hidden_dim",
                                         "num_shared_experts", "capacity_factor", "aux_loss_coef", "aux_loss_scope",
                                         "z_loss_coef", "bias_balancing", "bias_update_rate", "moe_impl"))
SYNTHETIC_DATA_KEYS = ("data.num_train_samples", "data.num_val_samples", "data.markov_concentration")


@dataclass
class LanguageModelingOptions:
    sample_prompts: list[str] = field(default_factory=list)  # continued at each validation into the log and TensorBoard
    sample_max_new_tokens: int = 32  # tokens per sample
    sample_temperature: float = 0.0  # 0: greedy


class LanguageModelingTask(TrainingTask):
    Options = LanguageModelingOptions

    def __init__(self, config):
        super().__init__(config)
        resolve_vocab_size(config)  # model.vocab_size 0 -> the prepared data's; a mismatch is a usage error
        self._pending_counts: Optional[torch.Tensor] = None  # [L_moe, E] since the last optimizer step

    @classmethod
    def validation_metrics(cls, config) -> frozenset:
        return frozenset({"val/loss", "val/perplexity"})  # validation_step, finalize_validation

    @classmethod
    def inactive_keys(cls, config) -> dict[str, str]:
        m = config.model
        off = dict.fromkeys(REGRESSION_KEYS, f"task {config.task} does not use it")
        if not m.use_moe:
            off.update(dict.fromkeys(MOE_KEYS, "model.use_moe is false"))
        elif not m.bias_balancing:
            off["model.bias_update_rate"] = "model.bias_balancing is false"
        if config.data.train_tokens:  # samples are the files' windows, not Markov draws
            off.update(dict.fromkeys(SYNTHETIC_DATA_KEYS, "data.train_tokens is set"))
        return {**off, **schedule_inactive_keys(config)}

    def build_model(self) -> nn.Module:
        return GPT(self.config.model, ce_chunk_rows=self.config.optimization.chunked_cross_entropy)

    def build_data_module(self):
        if self.config.data.train_tokens:
            return ShardedTokenDataModule(self.config)
        return MarkovTokenDataModule(self.config)

    def train_step(self, model: nn.Module, batch: Any, criterion: Optional[nn.Module]) -> StepOutput:
        m = self.config.model
        _, aux = model(batch["input_ids"], targets=batch["targets"])  # forward on the wrapped model
        ce = aux["ce_loss"]
        loss = ce + m.aux_loss_coef * aux["aux_loss"] + m.z_loss_coef * aux["z_loss"]
        if m.use_moe and m.bias_balancing:
            counts = aux["moe_counts"].detach()
            self._pending_counts = counts if self._pending_counts is None else self._pending_counts + counts
        return StepOutput(loss=loss, metrics=self._metrics(ce, aux), num_tokens=batch["targets"].numel())

    def validation_step(self, model: nn.Module, batch: Any, criterion: Optional[nn.Module]) -> StepOutput:
        _, aux = model(batch["input_ids"], targets=batch["targets"])
        return StepOutput(loss=aux["ce_loss"], num_tokens=batch["targets"].numel())

    def finalize_validation(self, metrics: dict[str, float]) -> dict[str, float]:
        return _with_perplexity(metrics, "val/loss", "val/perplexity")

    def finalize_train_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return _with_perplexity(metrics, "ce_loss", "perplexity")

    @staticmethod
    def _metrics(ce: torch.Tensor, aux: dict) -> dict[str, torch.Tensor]:
        """Scalar tensors only (the engine averages them over a logging window)."""
        out = {"ce_loss": ce.detach()}  # perplexity: finalize_train_metrics
        if "moe_load" not in aux:
            return out
        out.update({
            "aux_loss": aux["aux_loss"].detach(), "z_loss": aux["z_loss"].detach(),
            # Load is relative to perfect balance: 1.0 everywhere means every expert got 1/E.
            "moe_max_load": aux["moe_max_load"].detach().max(),
            "moe_min_load": (aux["moe_load"].detach().min(dim=-1).values * aux["moe_load"].shape[-1]).min(),
            "moe_dropped_frac": aux["moe_dropped_frac"].detach().mean(),
            "moe_router_entropy": aux["moe_entropy"].detach().mean(),
        })
        for i, v in enumerate(aux["moe_max_load"].detach()):
            out[f"moe_max_load_l{i}"] = v
        return out

    def configure_callbacks(self) -> list:
        # Prepared text data: its tokenizer travels with the run and every checkpoint.
        tokenizer = ShardedTokenDataModule(self.config).tokenizer_path() if self.config.data.train_tokens else None
        callbacks = [CopyRunFiles({TOKENIZER_FILE: tokenizer})] if tokenizer else []
        return callbacks + self._sample_writers(os.path.dirname(tokenizer) if tokenizer else "")

    def _sample_writers(self, tokenizer_dir: str) -> list:
        o = self.options
        if not o.sample_prompts:
            return []
        if self.config.distributed.expert_parallel > 1:  # rank 0 generates alone; the experts are split
            raise raised_on_every_rank(UsageError(
                "task_options.sample_prompts: not available with distributed.expert_parallel > 1 (rank 0 "
                "samples alone, and each rank holds only some experts); sample from a checkpoint instead"))
        if o.sample_max_new_tokens < 1 or o.sample_temperature < 0:
            raise raised_on_every_rank(UsageError(
                "task_options.sample_max_new_tokens must be >= 1 and task_options.sample_temperature >= 0 "
                f"(got {o.sample_max_new_tokens}, {o.sample_temperature})"))
        from raytrain_llm.tasks.lm_samples import SampleWriter

        return [SampleWriter(o.sample_prompts, o.sample_max_new_tokens, o.sample_temperature,
                             tokenizer_dir=tokenizer_dir)]

    def on_optimizer_step(self, model: nn.Module) -> None:
        counts, self._pending_counts = self._pending_counts, None
        if counts is None:
            return
        if dist.is_available() and dist.is_initialized():
            # Every rank must apply the same update, from the global load.
            dist.all_reduce(counts)
        unwrap(model).update_router_biases(counts)

    def flops_per_token(self, model: nn.Module) -> Optional[float]:
        return flops_per_token(unwrap(model).cfg)

    def tokens_in_batch(self, batch: Any) -> Optional[int]:
        return int(batch["input_ids"].numel())

    def entropy_floor(self) -> float:
        """Best achievable validation CE (nats) for this config's data."""
        return MarkovTokenDataModule(self.config).entropy_floor()


def _with_perplexity(metrics: dict[str, float], loss_key: str, key: str) -> dict[str, float]:
    """exp of the mean cross-entropy (a mean of per-batch exp(loss) would overstate it: Jensen)."""
    if loss_key not in metrics:
        return metrics
    return {**metrics, key: math.exp(min(metrics[loss_key], 700.0))}
