"""config.json of each architecture, from our ModelConfig (transformers' own config classes
check the keys and write the file)."""
from __future__ import annotations

from typing import Optional

from raytrain_llm.core.config import ModelConfig
from raytrain_llm.inference.hf_export.architecture import GPT2, LLAMA, MIXTRAL
from raytrain_llm.inference.hf_export.weights import shared_width
from raytrain_llm.models.mlp import hidden_width
from raytrain_llm.models.transformer import expert_hidden

ROPE = {"rope_type": "default", "rope_theta": 10000.0}  # models/attention.py Rotary's base


def hf_config(cfg: ModelConfig, arch: str, eod_id: Optional[int]):
    import transformers

    special = {"bos_token_id": eod_id, "eos_token_id": eod_id, "pad_token_id": eod_id,
               "tie_word_embeddings": cfg.tie_embeddings}
    dense = hidden_width(cfg.d_model, cfg.mlp_ratio, cfg.mlp_type)
    if arch == GPT2:
        return transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=dense, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, layer_norm_epsilon=1e-5, scale_attn_weights=True, **special)
    common = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
              "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads, "hidden_act": "silu",
              "max_position_embeddings": cfg.seq_len, "rms_norm_eps": 1e-5, "rope_parameters": dict(ROPE),
              "attention_dropout": 0.0, **special}
    if arch == LLAMA:
        gelu = cfg.mlp_type == "gelu"  # see architecture.py: a gated MLP whose up branch is 1
        return transformers.LlamaConfig(intermediate_size=dense, attention_bias=False, mlp_bias=gelu,
                                        head_dim=cfg.d_model // cfg.n_heads,
                                        **{**common, "hidden_act": "gelu" if gelu else "silu"})
    if arch == MIXTRAL:
        return transformers.MixtralConfig(intermediate_size=expert_hidden(cfg), num_local_experts=cfg.num_experts,
                                          num_experts_per_tok=cfg.top_k, router_jitter_noise=0.0,
                                          head_dim=cfg.d_model // cfg.n_heads, sliding_window=None, **common)
    # qkv_bias with zero biases (weights.py): transformers 4 has no switch, its Qwen2-MoE always has them.
    return transformers.Qwen2MoeConfig(
        intermediate_size=dense, moe_intermediate_size=expert_hidden(cfg), num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k, norm_topk_prob=cfg.top_k > 1, decoder_sparse_step=cfg.moe_every_n_layers,
        mlp_only_layers=[], shared_expert_intermediate_size=shared_width(cfg), qkv_bias=True,
        use_sliding_window=False, **common)
