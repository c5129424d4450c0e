"""Synthetic language-modelling data: token sequences from a fixed random Markov chain.

The chain is a pure function of the data seed, and sample i of a split is a pure function
of (data seed, split, i), so any batch can be rebuilt from its indices (see base.py). A
first-order chain has a known optimum: no model beats its conditional entropy, which makes
`val/loss` directly comparable to `entropy_floor()`.

Transition rows are Dirichlet(concentration) over a support of min(V, 256) tokens: dense for
small vocabularies, sparse for GPT-2-sized ones, where a dense V x V table would not fit.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Optional

import numpy as np

from raytrain_llm.core.config import Config
from raytrain_llm.data.base import DataModule, IndexedDataset

MAX_SUPPORT = 256
# Up to this many sequences per call, sampling walks each sequence in Python; above it, numpy
# steps the whole batch at once (measured crossover ~30 sequences at vocab 2048).
PER_SEQUENCE_MAX_BATCH = 16


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash (SplitMix64): independent uniforms per (seed, sample, position)."""
    with np.errstate(over="ignore"):  # wrap-around is the point
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniforms(seed: int, stream: int, ids: np.ndarray, length: int) -> np.ndarray:
    """[len(ids), length] floats in [0, 1), a pure function of (seed, stream, id, position)."""
    base = _splitmix64(np.uint64(seed & 0xFFFFFFFF) << np.uint64(32) | np.uint64(stream))
    keys = _splitmix64(base ^ ids.astype(np.uint64))[:, None] + np.arange(length, dtype=np.uint64)[None, :]
    return (_splitmix64(_splitmix64(keys)) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class MarkovChain:
    """Sparse-row transition table: row i puts mass probs[i] on tokens support[i]."""

    def __init__(self, vocab_size: int, concentration: float, seed: int):
        rng = np.random.default_rng(seed)
        V, S = vocab_size, min(vocab_size, MAX_SUPPORT)
        # Each row's support is a shifted copy of S distinct offsets: distinct tokens, no per-row choice().
        offsets = rng.permutation(V)[:S] if S < V else np.arange(V)
        self.support = (rng.integers(0, V, size=(V, 1)) + offsets[None, :]) % V  # [V, S]
        gammas = rng.gamma(concentration, size=(V, S))
        # Tiny concentrations can underflow a whole row to zero; a floor keeps rows proper.
        gammas = np.maximum(gammas, 1e-300)
        self.probs = gammas / gammas.sum(axis=1, keepdims=True)  # [V, S]
        self.cdf = np.cumsum(self.probs, axis=1)
        self.cdf[:, -1] = 1.0  # round-off must never let u >= last bin
        self.vocab_size = V
        self.stationary = self._stationary()
        self.stationary_cdf = np.cumsum(self.stationary)
        self.stationary_cdf[-1] = 1.0

    def _stationary(self, iters: int = 2000, tol: float = 1e-13) -> np.ndarray:
        pi = np.full(self.vocab_size, 1.0 / self.vocab_size)
        flat_support = self.support.ravel()
        for _ in range(iters):
            # Lazy chain (I + P) / 2 has the same stationary law and cannot oscillate.
            step = np.bincount(flat_support, weights=(pi[:, None] * self.probs).ravel(), minlength=self.vocab_size)
            new = 0.5 * (pi + step)
            new /= new.sum()
            if np.abs(new - pi).sum() < tol:
                return new
            pi = new
        return pi

    def entropy_floor(self) -> float:
        """Stationary conditional entropy H(X_{t+1} | X_t) in nats."""
        p = self.probs
        row_entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
        return float((self.stationary * row_entropy).sum())

    def sample(self, u: np.ndarray) -> np.ndarray:
        """Sequences driven by uniforms u [B, L]: first token from the stationary law, then each
        token is the inverse CDF of its row at u. Both paths below give the same tokens."""
        first = np.minimum(np.searchsorted(self.stationary_cdf, u[:, 0], side="right"), self.vocab_size - 1)
        if len(u) <= PER_SEQUENCE_MAX_BATCH:
            return self._sample_per_sequence(u, first)
        return self._sample_per_step(u, first)

    def _sample_per_step(self, u: np.ndarray, first: np.ndarray) -> np.ndarray:
        # Vectorised over the batch: each step compares u with the whole row, B x S work.
        B, L = u.shape
        out = np.empty((B, L), dtype=np.int64)
        out[:, 0] = first
        for t in range(1, L):
            cur = out[:, t - 1]
            slot = (self.cdf[cur] <= u[:, t, None]).sum(axis=1)  # inverse-CDF within the row
            out[:, t] = self.support[cur, np.minimum(slot, self.support.shape[1] - 1)]
        return out

    def _sample_per_sequence(self, u: np.ndarray, first: np.ndarray) -> np.ndarray:
        # A binary search per token in plain Python: a few numpy calls per step cost more than
        # the search itself when the batch is small (2.5x faster for 8 sequences; the engine's
        # per-step data cost on CPU). bisect_right counts the CDF entries <= u, which is exactly
        # the per-step path's `(cdf <= u).sum()`; capping hi at the last slot is its minimum().
        S = self.support.shape[1]
        cdf, support = memoryview(self.cdf.reshape(-1)), memoryview(self.support.reshape(-1))
        rows = []
        for cur, row in zip(first.tolist(), u[:, 1:].tolist()):
            seq = [cur]
            for x in row:
                lo = cur * S
                cur = support[bisect_right(cdf, x, lo, lo + S - 1)]
                seq.append(cur)
            rows.append(seq)
        return np.array(rows, dtype=np.int64).reshape(u.shape)


class MarkovTokenDataset(IndexedDataset):
    def __init__(self, chain: MarkovChain, num_samples: int, seed: int, seq_len: int, stream: int):
        super().__init__(num_samples, seed)
        self.chain, self.seq_len, self.stream = chain, seq_len, stream

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        tokens = self.chain.sample(uniforms(self.seed, self.stream, ids, self.seq_len + 1))  # [B, T+1]
        return {"input_ids": np.ascontiguousarray(tokens[:, :-1]), "targets": np.ascontiguousarray(tokens[:, 1:])}


class MarkovTokenDataModule(DataModule):
    """Train and validation splits share the chain; they differ in their sample stream."""

    shuffle_train = True

    def __init__(self, config: Config):
        super().__init__(config)
        self._chain: Optional[MarkovChain] = None

    @property
    def chain(self) -> MarkovChain:
        if self._chain is None:
            m, d = self.config.model, self.config.data
            self._chain = MarkovChain(m.vocab_size, d.markov_concentration, d.seed)
        return self._chain

    def _dataset(self, num_samples: int, stream: int) -> MarkovTokenDataset:
        return MarkovTokenDataset(self.chain, num_samples, self.config.data.seed, self.config.model.seq_len, stream)

    def build_train_dataset(self) -> IndexedDataset:
        return self._dataset(self.config.data.num_train_samples, stream=0)

    def build_val_dataset(self) -> IndexedDataset:
        return self._dataset(self.config.data.num_val_samples, stream=1)

    def entropy_floor(self) -> float:
        return self.chain.entropy_floor()
