"""Parameter counts and the training-FLOPs estimate used for MFU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from raytrain_llm.core.config import ModelConfig


@dataclass
class ParamCount:
    total: int  # every distinct parameter (tied weights once)
    active: int  # touched per token: top_k of the routed experts, no position embedding
    embedding: int  # token embedding (+ untied head)
    position: int  # learned position embedding, 0 with RoPE


def _raw(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)


def count_parameters(model_or_config: Union[nn.Module, ModelConfig]) -> ParamCount:
    """Counts a model, or a config's model built on the meta device (no memory, no init)."""
    if isinstance(model_or_config, ModelConfig):
        from raytrain_llm.models.transformer import GPT

        with torch.device("meta"):
            model = GPT(model_or_config)
    else:
        model = _raw(model_or_config)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    inactive = 0
    for layer in getattr(model, "moe_layers", []):
        per_expert = (layer.w_in.numel() + layer.w_out.numel()) // layer.num_experts
        inactive += per_expert * (layer.num_experts - layer.top_k)
    position = model.pos_emb.weight.numel() if getattr(model, "pos_emb", None) is not None else 0
    embedding = model.tok_emb.weight.numel()
    if model.head.weight is not model.tok_emb.weight:
        embedding += model.head.weight.numel()
    return ParamCount(total=total, active=total - inactive - position, embedding=embedding, position=position)


def flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token: 6 * active params + attention's 12 * L * d * T (PaLM, nanoGPT)."""
    active = count_parameters(config).active
    return 6.0 * active + 12.0 * config.n_layers * config.d_model * config.seq_len
