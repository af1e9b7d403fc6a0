"""Log-spaced duration buckets: how llmtop keeps streaming quantiles in bounded memory.

Choice: a fixed, never-collapsing log-spaced histogram (the DDSketch bucket layout) per
(kernel, layer, phase) key. Bucket 0 holds durations <= 0 ns; bucket b >= 1 holds durations in
(GAMMA**(b-2), GAMMA**(b-1)] ns with GAMMA = (1 + ALPHA) / (1 - ALPHA), and is represented by
2 * GAMMA**(b-1) / (GAMMA + 1). Every duration in a bucket is within a relative ALPHA = 1 % of that
representative, so a quantile read from bucket counts is within 1 % (relative) of the exact order
statistic of rank ceil(q * n) (numpy's ``method="inverted_cdf"``). Reported quantiles are also
clamped to the exact min/max of the group, which can only shrink the error. Counts, totals, means,
min and max are exact (kept separately per key).

N_BUCKETS = 2048 covers 1 ns .. ~4e17 ns; the last bucket also takes anything longer. Buckets are
stored sparsely in pages of PAGE consecutive buckets, so a kernel whose durations span a factor of
ten costs ~2 pages (~116 buckets), not 2048.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.01
GAMMA = (1.0 + ALPHA) / (1.0 - ALPHA)
_INV_LN_GAMMA = 1.0 / math.log(GAMMA)
N_BUCKETS = 2048
PAGE_BITS = 6
PAGE = 1 << PAGE_BITS
N_PAGES = N_BUCKETS // PAGE

# REPRESENTATIVE[b]: the value reported for bucket b (ns); UPPER[b]: its inclusive upper edge.
_b = np.arange(N_BUCKETS, dtype=np.float64)
REPRESENTATIVE = np.where(_b == 0, 0.0, 2.0 * GAMMA ** (_b - 1) / (GAMMA + 1.0))
UPPER = np.where(_b == 0, 0.0, GAMMA ** (_b - 1))
LOWER = np.where(_b <= 1, 0.0, GAMMA ** (_b - 2))
del _b


def bucket_index(dur_ns: np.ndarray) -> np.ndarray:
    """Bucket of each duration (ns in, int64 out); durations below 1 ns (or NaN) go to bucket 0."""
    d = np.asarray(dur_ns, dtype=np.float64)
    b = np.fmax(d, 1e-300)  # <= 0 and NaN -> a huge negative index, clipped to bucket 0 below
    np.log(b, out=b)
    b *= _INV_LN_GAMMA
    np.ceil(b, out=b)
    b += 1.0
    np.clip(b, 0, N_BUCKETS - 1, out=b)
    return b.astype(np.int64)

def quantile_ranks(q: float, counts: np.ndarray) -> np.ndarray:
    """1-based rank read for quantile q from groups of `counts` events (the inverted-CDF rank)."""
    return np.maximum(1, np.ceil(q * np.asarray(counts, dtype=np.float64))).astype(np.int64)
