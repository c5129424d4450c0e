"""GPT-style decoder-only transformer with optional MoE feed-forward blocks.

`GPT(cfg)(input_ids) -> (logits, aux)`. `aux` is a flat dict of tensors, so the forward is
a pure function of its inputs (no attributes set on modules) and compiles as one graph:
  aux_loss, z_loss          scalars, summed over MoE layers (0 for a dense model)
  moe_load, moe_counts      [L_moe, E] assignment fractions / counts per expert
  moe_max_load              [L_moe] busiest expert's load over the mean load (1.0 = balanced)
  moe_dropped_frac          [L_moe] fraction of assignments dropped by the capacity limit
  moe_entropy               [L_moe] mean router entropy (nats)
  moe_aux_loss, moe_z_loss  [L_moe] the per-layer terms of the sums above
With `targets`, the model also computes the mean next-token cross-entropy as aux["ce_loss"];
when `ce_chunk_rows > 0` it does so in row chunks and returns logits=None, so the full fp32
logits are never materialised (each chunk's logits are recomputed in backward).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from raytrain_llm.core.config import ModelConfig
from raytrain_llm.models.attention import CausalSelfAttention
from raytrain_llm.models.kv_cache import KVCache
from raytrain_llm.models.mlp import MLP, hidden_width
from raytrain_llm.models.moe import MoE

_STAT_KEYS = ("load", "counts", "max_load", "dropped_frac", "entropy", "aux_loss", "z_loss")


def make_norm(cfg: ModelConfig) -> nn.Module:
    return nn.RMSNorm(cfg.d_model, eps=1e-5) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.d_model)


def is_moe_layer(cfg: ModelConfig, layer: int) -> bool:
    # Every n-th block, counting from the last one of each group (n=2: blocks 1, 3, ...).
    return cfg.use_moe and (layer + 1) % cfg.moe_every_n_layers == 0


def expert_hidden(cfg: ModelConfig) -> int:
    return cfg.expert_hidden_dim or hidden_width(cfg.d_model, cfg.mlp_ratio, cfg.mlp_type)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.seq_len, cfg.dropout, cfg.position == "rope",
                                        cfg.attention_backend)
        self.is_moe = is_moe_layer(cfg, layer)
        if self.is_moe:
            self.ffn = MoE(cfg.d_model, expert_hidden(cfg), cfg.num_experts, cfg.top_k, mlp_type=cfg.mlp_type,
                           num_shared_experts=cfg.num_shared_experts, capacity_factor=cfg.capacity_factor,
                           bias_balancing=cfg.bias_balancing, impl=cfg.moe_impl, dropout=cfg.dropout)
        else:
            self.ffn = MLP(cfg.d_model, hidden_width(cfg.d_model, cfg.mlp_ratio, cfg.mlp_type), cfg.mlp_type,
                           cfg.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[dict]]:
        x = x + self.attn(self.norm1(x))
        if self.is_moe:
            y, stats = self.ffn(self.norm2(x))
            return x + y, stats
        return x + self.ffn(self.norm2(x)), None

    def forward_cached(self, x: torch.Tensor, cache: KVCache, layer: int, positions: torch.Tensor,
                       mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.norm1(x), cache, layer, positions, mask)
        if self.is_moe:  # a decoding step: the few-token path; a prompt: the layer's forward
            y = self.ffn.decode(self.norm2(x)) if x.shape[1] == 1 else self.ffn(self.norm2(x))[0]
            return x + y
        return x + self.ffn(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, ce_chunk_rows: int = 0):
        super().__init__()
        self.cfg, self.ce_chunk_rows = cfg, ce_chunk_rows
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.tok_emb.weight._no_weight_decay = True
        if self.pos_emb is not None:
            self.pos_emb.weight._no_weight_decay = True
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers).
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for p in module.parameters(recurse=False):
            if p.ndim >= 2:
                nn.init.normal_(p, std=resid_std if getattr(p, "residual_out", False) else 0.02)
        if isinstance(module, nn.Linear) and getattr(module, "residual_out", False):
            nn.init.normal_(module.weight, std=resid_std)

    @property
    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.blocks if b.is_moe]

    def forward(self, input_ids: torch.Tensor, targets: Optional[torch.Tensor] = None):
        B, T = input_ids.shape
        x = self.tok_emb(input_ids)  # [B, T, d]
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=input_ids.device))
        x = self.drop(x)
        x, layer_stats = self._run_blocks(x)
        x = self.norm(x)
        aux = self._collect(layer_stats, x)
        if targets is None:
            return self.head(x), aux
        if self.ce_chunk_rows > 0:
            aux["ce_loss"] = chunked_cross_entropy(x, self.head.weight, targets, self.ce_chunk_rows)
            return None, aux
        logits = self.head(x)  # [B, T, V]
        aux["ce_loss"] = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, aux

    def _run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """x [B, T, d] through every block -> (x, the MoE blocks' stats). A frame of its own: under
        torch.compile with expert parallelism each MoE block breaks the graph at its exchanges,
        and a graph break inside a loop makes dynamo run the loop's frame eagerly; the blocks are
        still compiled one by one, and forward's embedding, head and loss stay compiled."""
        layer_stats = []
        for block in self.blocks:
            if self.cfg.activation_checkpointing and self.training:
                x, stats = checkpoint(block, x, use_reentrant=False)
            else:
                x, stats = block(x)
            if stats is not None:
                layer_stats.append(stats)
        return x, layer_stats

    @torch.no_grad()
    def forward_cached(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Decoding step (eval mode): input_ids [B, T] fill the cache's next T slots; returns the
        logits of the last of them [B, V]. Positions and masking come from the cache (KVCache)."""
        T = input_ids.shape[1]
        positions, mask = cache.step_inputs(T)  # [B, T], [B, 1, T, S] or None
        x = self.tok_emb(input_ids)  # [B, T, d]
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        for i, block in enumerate(self.blocks):
            x = block.forward_cached(x, cache, i, positions, mask)
        cache.advance(T)
        return self.head(self.norm(x[:, -1]))  # [B, V]

    def new_cache(self, pad: torch.Tensor, max_len: int) -> KVCache:
        """An empty KVCache for len(pad) rows of up to max_len slots, in the model's dtype."""
        c, w = self.cfg, self.tok_emb.weight
        return KVCache(c.n_layers, len(pad), c.n_heads, max_len, c.d_model // c.n_heads, pad, w.dtype, w.device)

    @staticmethod
    def _collect(layer_stats: list[dict], x: torch.Tensor) -> dict:
        if not layer_stats:
            zero = x.new_zeros((), dtype=torch.float32)
            return {"aux_loss": zero, "z_loss": zero}
        aux = {f"moe_{k}": torch.stack([s[k] for s in layer_stats]) for k in _STAT_KEYS}
        aux["aux_loss"], aux["z_loss"] = aux["moe_aux_loss"].sum(), aux["moe_z_loss"].sum()
        return aux

    def set_parallel_groups(self, *, balance_group=None, expert_group=None) -> list[nn.Parameter]:
        """Process groups from whoever set them up (the model creates none): `balance_group`, the
        ranks whose expert counts the balance loss sums in training (None: each micro-batch's
        own); `expert_group`, the ranks that split every MoE layer's experts (None: all here).
        Returns the parameters now sharded over `expert_group` (their gradients are this rank's
        experts' only: the caller reduces them apart from the replicated ones)."""
        # Imported here: its graph-break markers import dynamo (~1 s), wanted only with expert parallelism.
        from raytrain_llm.models.moe_expert_parallel import shard_experts

        sharded = []
        for layer in self.moe_layers:
            layer.router.balance_group = balance_group
            if expert_group is not None:
                sharded += shard_experts(layer, expert_group)
        return sharded

    @torch.no_grad()
    def update_router_biases(self, counts: torch.Tensor, rate: Optional[float] = None) -> None:
        """counts: [L_moe, E] assignments per expert since the last update (e.g. aux["moe_counts"])."""
        rate = self.cfg.bias_update_rate if rate is None else rate
        for layer, c in zip(self.moe_layers, counts):
            layer.update_router_bias(c, rate)


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
    """Mean CE of softmax(h @ weight.T) without holding all fp32 logits: one row chunk at a time,
    each chunk checkpointed so backward recomputes its logits instead of saving them."""
    h, targets = h.flatten(0, 1), targets.flatten()  # [N, d], [N]
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], rows):
        total = total + checkpoint(_ce_sum, h[start:start + rows], weight, targets[start:start + rows],
                                   use_reentrant=False)
    return total / h.shape[0]


def _ce_sum(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, weight).float(), targets, reduction="sum")


Transformer = GPT
