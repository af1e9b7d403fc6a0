"""The sampling spec: how every backend turns a row of logits into a token. One implementation, on the host.

A backend may compute the top-k candidates or the temperature softmax on its device; what it hands over is
fully determined by the logits, and everything after that (top-k order, top-p, renormalisation, the random
draw) happens here, so two backends given the same logits and the same seed draw the same tokens.

Per call (rows B, vocabulary V), in this order:
1. Greedy, temperature <= 0: each row's argmax, the first maximal index on ties; no random number is drawn.
   Backends compute it natively (`greedy` is the host reference).
2. One uniform per row, `u = rng.random(B)` (row r uses u[r]), where rng is the `numpy.random.Generator`
   from `Ops.make_generator(seed)`, i.e. `numpy.random.default_rng(seed)`. It is drawn whatever the top-p
   outcome, so a seed's stream never depends on the settings.
3. Temperature and top-k give integer weights W (float -> int by floor; tokens below 2**-40 get 0).
   k = top_k if 0 < top_k < V, else all V tokens.
   - candidate path, 0 < k <= CANDIDATE_MAX (`sample_candidates`): the k tokens with the largest logits
     (ties: lower token id first); x = float64(logit) / temperature; W = floor(exp(x - max x) * 2**40).
   - full path, otherwise (`sample_probs`): p = the device's float32 softmax of logits * float32(1 /
     temperature); W = floor(float64(p) * 2**40); when 0 < k < V, the first k tokens of the order below.
4. Order: W descending, ties by token id ascending. The inverse CDF runs over this order.
5. Top-p keep rule (only when top_p < 1): T = sum of W; keep the token at rank j (0-based) iff j == 0 or
   S_j < top_p * T, where S_j = W_0 + ... + W_(j-1) (exact integers; top_p * T in float64). So the kept
   set is the shortest prefix whose mass reaches top_p: a prefix that reaches it exactly ends there.
6. Renormalise and draw: T' = the sum of the kept weights; target = floor(u * T') (float64 product); the
   token is the first kept rank j with S_j + W_j > target (the last kept one should rounding reach T').

Integer weights make every sum exact, so the outcome does not depend on summation order: the full path
sorts only the prefix it needs (partition, then sort) and gets the token a full sort would. On the
candidate path two backends see identical inputs (the k logits) and draw identical tokens; on the full
path they agree unless their float32 softmaxes differ where a weight boundary meets the target.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.kernels.base import SamplingParams

CANDIDATE_MAX = 64  # largest top_k served from k device candidates; larger (or 0) takes the full path
SCALE = 2.0 ** 40  # probability -> integer weight
_W_MAX = 1 << 40  # >= any weight (weights are clipped to 2**40): sort keys stay below 2**62
_ID_BITS = 22  # token ids up to 4M share an int64 sort key with the weight
_ID_MASK = (1 << _ID_BITS) - 1
_PREFIX = 256  # ranks sorted first on the full path; grows x16 when the draw needs more


def greedy(logits: np.ndarray) -> np.ndarray:
    """(B, V) -> (B,) int64: first maximal index of each row (NaN counts as maximal, like torch)."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def candidate_count(params: SamplingParams, vocab: int) -> int:
    """k when a sampled (temperature > 0) call takes the candidate path, else 0 (full path)."""
    k = params.top_k
    return k if 0 < k < vocab and k <= CANDIDATE_MAX else 0


def draw_uniforms(generator: Any, rows: int) -> np.ndarray:
    """Step 2: one uniform per row. `generator` None (unseeded callers) gets a fresh default_rng()."""
    rng = generator if generator is not None else np.random.default_rng()
    return np.asarray(rng.random(rows), dtype=np.float64).reshape(rows)


def weights(p: np.ndarray) -> np.ndarray:
    """Probabilities (any float dtype, any scale <= 1) -> int64 weights floor(p * 2**40); NaN -> 0."""
    w = np.floor(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0) * SCALE)
    return np.clip(w, 0.0, SCALE).astype(np.int64)


def pick(w: np.ndarray, total: int, top_p: float, u: float, complete: bool = True) -> int | None:
    """Steps 5-6 over the rank-ordered weights `w` (a prefix of them unless `complete`) of candidates whose
    weights sum to `total`: the chosen rank, or None when the prefix is too short to decide."""
    c = np.cumsum(w)
    if top_p < 1.0:
        limit = top_p * float(total)
        if not complete and float(c[-1]) < limit:
            return None  # the first rank past the prefix would be kept too
        s = (c - w).astype(np.float64)  # S_j, exact below 2**53
        n = max(1, int(np.searchsorted(s, limit, side="left")))  # ranks with S_j < limit
        kept = int(c[n - 1])
    else:
        n, kept = len(w), total
    target = math.floor(u * kept)
    j = int(np.searchsorted(c[:n], target, side="right"))  # first rank with S_j + W_j > target
    if j >= n:
        if not complete and top_p >= 1.0:
            return None
        j = n - 1
    return j


def _no_mass() -> LlmtopError:
    return LlmtopError("sampling: no token has a finite, non-zero probability (are the logits NaN?)")


def sample_candidates(ids: np.ndarray, logits: np.ndarray, params: SamplingParams,
                      generator: Any) -> np.ndarray:
    """Candidate path: (B, n) token ids and their logits, n >= top_k, any order -> (B,) int64 tokens."""
    ids = np.asarray(ids).astype(np.int64, copy=False)
    vals = np.asarray(logits, dtype=np.float64)
    rows = ids.shape[0]
    u = draw_uniforms(generator, rows)
    k = params.top_k if params.top_k > 0 else ids.shape[1]
    out = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        top = np.lexsort((ids[r], -vals[r]))[:k]  # logit desc, id asc
        tok = ids[r, top]
        x = vals[r, top] / params.temperature
        w = weights(np.exp(x - x[0]))
        order = np.lexsort((tok, -w))  # weight desc, id asc
        w, tok = w[order], tok[order]
        total = int(w.sum())
        if total <= 0:
            raise _no_mass()
        j = pick(w, total, params.top_p, float(u[r]))
        assert j is not None
        out[r] = tok[j]
    return out


def sample_probs(probs: np.ndarray, params: SamplingParams, generator: Any) -> np.ndarray:
    """Full path: (B, V) softmax probabilities (the device's float32 ones) -> (B,) int64 tokens."""
    p = np.asarray(probs)
    rows, vocab = p.shape
    if vocab > _ID_MASK + 1:
        raise LlmtopError(f"sampling: vocabulary {vocab} exceeds {_ID_MASK + 1} tokens")
    u = draw_uniforms(generator, rows)
    ids = np.arange(vocab, dtype=np.int64)
    k = params.top_k if 0 < params.top_k < vocab else vocab
    out = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        w = weights(p[r])
        keys = ((_W_MAX - w) << _ID_BITS) | ids  # unique; ascending = weight desc, id asc
        if k < vocab:
            keys = np.partition(keys, k - 1)[:k]
            total = int(w[keys & _ID_MASK].sum())
        else:
            total = int(w.sum())
        if total <= 0:
            raise _no_mass()
        m = min(_PREFIX, k)
        while True:
            head = np.sort(keys) if m >= k else np.sort(np.partition(keys, m - 1)[:m])
            tok = head & _ID_MASK
            j = pick(w[tok], total, params.top_p, float(u[r]), complete=m >= k)
            if j is not None:
                out[r] = tok[j]
                break
            m = min(k, m * 16)
    return out


__all__ = ["CANDIDATE_MAX", "SCALE", "candidate_count", "draw_uniforms", "greedy", "pick",
           "sample_candidates", "sample_probs", "weights"]
