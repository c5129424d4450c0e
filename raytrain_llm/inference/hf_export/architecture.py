"""Which Hugging Face architecture computes exactly what our model computes, or why none does.

  learned positions + LayerNorm + GELU MLP, dense          -> GPT-2 (GPT2LMHeadModel)
  RoPE + RMSNorm + SwiGLU, dense                            -> Llama (LlamaForCausalLM)
  RoPE + RMSNorm + GELU, dense                              -> Llama with hidden_act gelu and
        mlp_bias: gate = our fc, up = 0 * x + 1 (zero weight, bias 1), so down(gelu(fc x) * 1) is
        our MLP exactly, at the cost of a zero [h, d] matrix in the exported model
  RoPE + RMSNorm + SwiGLU experts, every block MoE, top-k>1, no shared experts
                                                            -> Mixtral (MixtralForCausalLM)
  the same with shared experts, dense blocks between MoE ones (moe_every_n_layers) or top-1
                                                            -> Qwen2-MoE (Qwen2MoeForCausalLM)
Facts relied on (ours: models/; theirs: transformers/models/{gpt2,llama,mixtral,qwen2_moe}):
  - our Linear layers have no bias: GPT-2's and Qwen2-MoE's q/k/v biases are written as zeros;
  - norms: nn.LayerNorm(eps=1e-5, with bias) = GPT-2's ln (layer_norm_epsilon 1e-5); nn.RMSNorm
    eps 1e-5 = rms_norm_eps 1e-5; pre-norm blocks and a final norm in all of them;
  - GELU is exact erf GELU (activation_function "gelu", not GPT-2's default tanh "gelu_new");
  - RoPE: rotate-half over the whole head, inv_freq = 1/10000^(2i/hd), the Llama default;
  - router: fp32 softmax over all experts, top-k of the probabilities, weights renormalised
    over the k when k > 1 (Mixtral always renormalises; Qwen2-MoE's norm_topk_prob says);
  - our shared experts add their output with weight 1; Qwen2-MoE multiplies it by
    sigmoid(shared_expert_gate(x)): a zero gate gives exactly 0.5, so down_proj is doubled
    (both are exact in floating point).
What none of them expresses is refused naming the config key: a capacity limit (tokens are
dropped), nonzero balancing biases (they change which experts are chosen), GELU experts.
"""
from __future__ import annotations

import torch

from raytrain_llm.core.config import ModelConfig
from raytrain_llm.core.errors import UsageError

GPT2, LLAMA, MIXTRAL, QWEN2_MOE = "gpt2", "llama", "mixtral", "qwen2_moe"


def refuse(key: str, why: str) -> UsageError:
    return UsageError(f"cannot export to the Hugging Face layout: {key}: {why} "
                      "(export --format safetensors keeps the model as it is)")


def choose(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> str:
    if cfg.position == "learned":
        if cfg.norm != "layernorm":
            raise refuse("model.norm", "learned positions map to GPT-2, which needs layernorm (got rmsnorm)")
        if cfg.mlp_type != "gelu":
            raise refuse("model.mlp_type", "learned positions map to GPT-2, whose MLP is gelu (got swiglu)")
        if cfg.use_moe:
            raise refuse("model.use_moe", "GPT-2 has no mixture-of-experts blocks (MoE exports need "
                         "model.position=rope, model.norm=rmsnorm, model.mlp_type=swiglu)")
        return GPT2
    if cfg.norm != "rmsnorm":
        raise refuse("model.norm", "RoPE models map to Llama/Mixtral/Qwen2-MoE, which need rmsnorm (got layernorm)")
    if not cfg.use_moe:
        return LLAMA
    if cfg.mlp_type != "swiglu":
        raise refuse("model.mlp_type", "MoE models map to Mixtral/Qwen2-MoE, whose experts are swiglu without "
                     "biases (got gelu)")
    if cfg.capacity_factor > 0:
        raise refuse("model.capacity_factor", f"{cfg.capacity_factor} drops tokens over an expert's capacity; "
                     "no Hugging Face MoE does (0 is dropless)")
    biases = [v for k, v in weights.items() if k.endswith("router.bias")]
    if cfg.bias_balancing and any(bool(b.abs().max() > 0) for b in biases):
        raise refuse("model.bias_balancing", "the learned balancing biases change which experts are chosen; "
                     "Mixtral and Qwen2-MoE choose by router probability alone")
    if cfg.num_shared_experts == 0 and cfg.moe_every_n_layers == 1 and cfg.top_k > 1:
        return MIXTRAL
    return QWEN2_MOE
