"""Our state dict -> the Hugging Face names and layouts, per architecture (Hub layout: what
vLLM and every transformers version read; transformers 5 fuses the MoE experts on load)."""
from __future__ import annotations

import torch

from raytrain_llm.core.config import ModelConfig
from raytrain_llm.models.mlp import hidden_width
from raytrain_llm.models.transformer import expert_hidden, is_moe_layer

Weights = dict[str, torch.Tensor]


def gpt2(cfg: ModelConfig, w: Weights) -> Weights:
    """GPT-2's Conv1D stores [in, out]: our Linear weights transposed; its biases are zeros."""
    d, h = cfg.d_model, hidden_width(cfg.d_model, cfg.mlp_ratio, cfg.mlp_type)
    out = {"transformer.wte.weight": w["tok_emb.weight"], "transformer.wpe.weight": w["pos_emb.weight"],
           "transformer.ln_f.weight": w["norm.weight"], "transformer.ln_f.bias": w["norm.bias"]}
    for i in range(cfg.n_layers):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            for part in ("weight", "bias"):
                out[f"{dst}{theirs}.{part}"] = w[f"{src}{ours}.{part}"]
        for ours, theirs, width in (("attn.qkv", "attn.c_attn", 3 * d), ("attn.proj", "attn.c_proj", d),
                                    ("ffn.fc", "mlp.c_fc", h), ("ffn.proj", "mlp.c_proj", d)):
            out[dst + theirs + ".weight"] = w[src + ours + ".weight"].t()
            out[dst + theirs + ".bias"] = torch.zeros(width, dtype=w[src + ours + ".weight"].dtype)
    _head(cfg, w, out)
    return out


def llama_family(cfg: ModelConfig, w: Weights, arch: str) -> Weights:
    """Llama, Mixtral and Qwen2-MoE share the embedding, attention and norm names."""
    d = cfg.d_model
    out = {"model.embed_tokens.weight": w["tok_emb.weight"], "model.norm.weight": w["norm.weight"]}
    for i in range(cfg.n_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = w[src + "attn.qkv.weight"].split(d, dim=0)  # [3d, d] -> 3 x [d, d] (qkv(x).split(C))
        out.update({dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
                    dst + "self_attn.v_proj.weight": v, dst + "self_attn.o_proj.weight": w[src + "attn.proj.weight"],
                    dst + "input_layernorm.weight": w[src + "norm1.weight"],
                    dst + "post_attention_layernorm.weight": w[src + "norm2.weight"]})
        if arch == "qwen2_moe":  # it has q/k/v biases (see hf_config.py); ours are none, i.e. zero
            out.update({f"{dst}self_attn.{p}_proj.bias": torch.zeros(d, dtype=q.dtype) for p in "qkv"})
        if not is_moe_layer(cfg, i) and cfg.mlp_type == "gelu":
            out.update(_gelu_as_gated(w[src + "ffn.fc.weight"], w[src + "ffn.proj.weight"], dst + "mlp."))
        elif not is_moe_layer(cfg, i):
            out.update(_swiglu(w[src + "ffn.fc.weight"], w[src + "ffn.proj.weight"], dst + "mlp."))
        elif arch == "mixtral":
            out.update(_experts(cfg, w, src, dst + "block_sparse_moe.", ("w1", "w3", "w2")))
        else:
            out.update(_experts(cfg, w, src, dst + "mlp.", ("gate_proj", "up_proj", "down_proj")))
            out.update(_qwen2_shared(cfg, w, src, dst + "mlp."))
    _head(cfg, w, out)
    return out


def _swiglu(fc: torch.Tensor, proj: torch.Tensor, dst: str) -> Weights:
    gate, up = fc.chunk(2, dim=0)  # our fc is [2h, d] = [gate | up] (activate() chunks its output)
    return {dst + "gate_proj.weight": gate, dst + "up_proj.weight": up, dst + "down_proj.weight": proj}


def _gelu_as_gated(fc: torch.Tensor, proj: torch.Tensor, dst: str) -> Weights:
    """down(gelu(gate x) * up x) with up x = 0 x + 1 = 1 exactly: our proj(gelu(fc x))."""
    h, d = fc.shape
    return {dst + "gate_proj.weight": fc, dst + "gate_proj.bias": torch.zeros(h, dtype=fc.dtype),
            dst + "up_proj.weight": torch.zeros_like(fc), dst + "up_proj.bias": torch.ones(h, dtype=fc.dtype),
            dst + "down_proj.weight": proj, dst + "down_proj.bias": torch.zeros(d, dtype=fc.dtype)}


def _experts(cfg: ModelConfig, w: Weights, src: str, dst: str, names: tuple[str, str, str]) -> Weights:
    """Our experts are x @ w_in[e] ([d, 2h], [gate | up]) and @ w_out[e] ([h, d])."""
    out = {dst + "gate.weight": w[src + "ffn.router.weight"]}
    for e, (w_in, w_out) in enumerate(zip(w[src + "ffn.w_in"], w[src + "ffn.w_out"])):
        gate, up = w_in.t().chunk(2, dim=0)  # [2h, d] -> 2 x [h, d]
        out.update({f"{dst}experts.{e}.{names[0]}.weight": gate, f"{dst}experts.{e}.{names[1]}.weight": up,
                    f"{dst}experts.{e}.{names[2]}.weight": w_out.t()})
    return out


def _qwen2_shared(cfg: ModelConfig, w: Weights, src: str, dst: str) -> Weights:
    """sigmoid(0) = 0.5 exactly, so a zero gate and a doubled down_proj add the shared experts
    with weight 1, as ours do. Without shared experts: zero weights (they add exactly 0)."""
    dtype = w[src + "ffn.router.weight"].dtype
    out = {dst + "shared_expert_gate.weight": torch.zeros(1, cfg.d_model, dtype=dtype)}
    if cfg.num_shared_experts:
        shared = _swiglu(w[src + "ffn.shared.fc.weight"], w[src + "ffn.shared.proj.weight"] * 2, dst + "shared_expert.")
    else:
        zeros = torch.zeros(shared_width(cfg), cfg.d_model, dtype=dtype)
        shared = _swiglu(torch.cat([zeros, zeros]), zeros.t().contiguous(), dst + "shared_expert.")
    out.update(shared)
    return out


def shared_width(cfg: ModelConfig) -> int:
    return expert_hidden(cfg) * max(cfg.num_shared_experts, 1)


def _head(cfg: ModelConfig, w: Weights, out: Weights) -> None:
    if not cfg.tie_embeddings:  # tied: the architectures tie lm_head to the embedding on load
        out["lm_head.weight"] = w["head.weight"]
