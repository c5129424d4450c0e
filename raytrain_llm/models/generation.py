"""Autoregressive generation from a GPT: KV-cached batched decoding, or recomputing the whole
sequence each step (the reference the cache is tested and benchmarked against).

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, then top-k, then
top-p (nucleus) filtering, then one `torch.multinomial` draw per step for the whole batch from
the given generator, so a seed reproduces the samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from raytrain_llm.models.transformer import GPT


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1: no nucleus filtering
    eod_id: Optional[int] = None  # a row stops after producing it (it is kept in the output)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] with the tokens outside the top-k and outside the smallest set whose
    probability reaches top_p set to -inf (the most likely token always survives)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, s: SamplingConfig, generator: Optional[torch.Generator]) -> torch.Tensor:
    """logits [B, V] -> token ids [B]."""
    logits = logits.float()
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / s.temperature, s.top_k, s.top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def max_new_tokens(model: GPT, prompts: list[list[int]], wanted: int) -> int:
    """What fits: a position past model.seq_len has no embedding (learned) or table entry (RoPE)."""
    return max(0, min(wanted, model.cfg.seq_len - max(len(p) for p in prompts)))


@torch.no_grad()
def generate(model: GPT, prompts: list[list[int]], s: SamplingConfig,
             generator: Optional[torch.Generator] = None, use_cache: bool = True) -> list[list[int]]:
    """The new tokens of each prompt (non-empty lists of ids), up to s.max_new_tokens, stopping
    a row at s.eod_id and everything at model.seq_len tokens. Eval mode is the caller's."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    steps = max_new_tokens(model, prompts, s.max_new_tokens)
    device = model.tok_emb.weight.device
    step = _CachedDecoder(model, prompts, steps, device) if use_cache else _Recompute(model, prompts, device)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    logits = step.first() if steps else None
    for i in range(steps):
        tok = next_tokens(logits, s, generator)  # [B]
        for row, t in enumerate(tok.tolist()):
            if not done[row]:
                out[row].append(t)
                done[row] = t == s.eod_id
        if all(done) or i == steps - 1:
            break
        logits = step.next(tok)
    return out


class _CachedDecoder:
    """Left-padded batch: the prompts fill the cache in one forward, then one token per step."""

    def __init__(self, model: GPT, prompts: list[list[int]], steps: int, device: torch.device):
        longest = max(len(p) for p in prompts)
        pad = torch.tensor([longest - len(p) for p in prompts])
        # The padding id is never seen by a real token (masked), any id in the vocabulary will do.
        self.ids = torch.tensor([[0] * (longest - len(p)) + list(p) for p in prompts], device=device)  # [B, T]
        self.model, self.cache = model, model.new_cache(pad, longest + steps)

    def first(self) -> torch.Tensor:
        return self.model.forward_cached(self.ids, self.cache)  # [B, V]

    def next(self, tok: torch.Tensor) -> torch.Tensor:
        return self.model.forward_cached(tok[:, None], self.cache)


class _Recompute:
    """No cache: the training forward over each row's whole sequence at every step."""

    def __init__(self, model: GPT, prompts: list[list[int]], device: torch.device):
        self.model, self.rows = model, [torch.tensor(p, device=device) for p in prompts]

    def first(self) -> torch.Tensor:
        return torch.stack([self.model(r[None])[0][0, -1] for r in self.rows])  # [B, V]

    def next(self, tok: torch.Tensor) -> torch.Tensor:
        self.rows = [torch.cat([r, t[None]]) for r, t in zip(self.rows, tok)]
        return self.first()
