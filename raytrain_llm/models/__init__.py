"""GPT-style decoder with optional Mixture-of-Experts blocks (the `lm` task's model)."""
from raytrain_llm.models.accounting import ParamCount, count_parameters, flops_per_token
from raytrain_llm.models.attention import CausalSelfAttention
from raytrain_llm.models.mlp import MLP
from raytrain_llm.models.moe import MoE
from raytrain_llm.models.router import Router
from raytrain_llm.models.transformer import GPT, Transformer, TransformerBlock

__all__ = ["GPT", "Transformer", "TransformerBlock", "CausalSelfAttention", "MLP", "MoE", "Router",
           "ParamCount", "count_parameters", "flops_per_token"]
