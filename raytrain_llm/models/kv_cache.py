"""Key/value cache for incremental decoding with left-padded batches.

Slot t of every row holds the token fed at step t. Prompts of different lengths are left-padded
to the longest, so row b's real tokens start at slot `pad[b]`: its position ids are
`slot - pad[b]` and its queries never see slots before `pad[b]`. A padding slot's query sees
itself only (a query that sees nothing would make NaNs that reach the next layer's keys).
"""
from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int,
                 pad: torch.Tensor, dtype: torch.dtype, device: torch.device):
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, H, T_max, hd]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pad = pad.to(device)  # [B] left-padding slots of each row
        self.padded = bool(pad.any())
        self.max_len = max_len
        self.length = 0  # slots filled so far (the same for every row)

    def step_inputs(self, T: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Position ids [B, T] of the next T slots and the attention mask [B, 1, T, length + T]
        (True: the query at that slot may attend to that key slot). Without padding the mask is
        None: the first step is plain causal attention, a one-token step sees every slot."""
        if self.length + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} slots; {self.length} used, {T} more asked for")
        device = self.pad.device
        if not self.padded and (self.length == 0 or T == 1):
            positions = torch.arange(self.length, self.length + T, device=device)
            return positions.expand(len(self.pad), T), None
        q_slot = torch.arange(self.length, self.length + T, device=device)  # [T]
        k_slot = torch.arange(self.length + T, device=device)  # [S]
        positions = (q_slot[None, :] - self.pad[:, None]).clamp_min(0)  # [B, T]
        causal = k_slot[None, :] <= q_slot[:, None]  # [T, S]
        real_key = k_slot[None, :] >= self.pad[:, None]  # [B, S]
        mask = (causal[None] & real_key[:, None, :]) | (k_slot[None, None, :] == q_slot[None, :, None])
        return positions, mask[:, None]  # [B, T], [B, 1, T, S]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, T, hd] at the next T slots; the layer's keys and values so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        """Every layer has stored the T new slots."""
        self.length += T
