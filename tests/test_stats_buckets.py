"""Streaming-quantile buckets and moment-sum fits against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmtop.stats.buckets import ALPHA, LOWER, REPRESENTATIVE, UPPER, bucket_index, quantile_ranks
from llmtop.stats.fit import linear_fit, quadratic_fit


def test_every_duration_is_within_alpha_of_its_bucket_representative() -> None:
    rng = np.random.default_rng(0)
    x = np.unique(np.exp(rng.uniform(0, math.log(1e13), 200_000)).astype(np.int64))
    x = np.concatenate([x, np.arange(1, 2000)])  # every small integer, where buckets are finest
    b = bucket_index(x)
    rel = np.abs(REPRESENTATIVE[b] - x) / x
    assert rel.max() <= ALPHA * (1 + 1e-9)
    inner = b < len(UPPER) - 1
    assert np.all((x[inner] <= UPPER[b[inner]] * (1 + 1e-12)) & (x[inner] >= LOWER[b[inner]] * (1 - 1e-12)))
    assert list(bucket_index(np.array([0, -5, 1]))) == [0, 0, 1]
    assert np.all(np.diff(bucket_index(np.sort(x))) >= 0)  # monotone


@pytest.mark.parametrize("seed", range(5))
def test_quantile_from_bucket_counts_within_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.lognormal(math.log(5e4), rng.uniform(0.05, 2.0), int(rng.integers(1, 20_000)))).astype(
        np.int64
    ) + 1
    counts = np.bincount(bucket_index(x), minlength=len(REPRESENTATIVE))
    cum = np.cumsum(counts)
    for q in (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        r = quantile_ranks(q, np.array([len(x)]))[0]
        est = np.clip(REPRESENTATIVE[np.searchsorted(cum, r)], x.min(), x.max())
        exact = np.quantile(x, q, method="inverted_cdf")
        assert abs(est - exact) <= ALPHA * exact * (1 + 1e-9)


def moments(x: np.ndarray, y: np.ndarray) -> tuple[float, ...]:
    return (
        len(x),
        x.sum(),
        y.sum(),
        (x * x).sum(),
        (x * y).sum(),
        (y * y).sum(),
        (x**3).sum(),
        (x**4).sum(),
        (x * x * y).sum(),
    )


def test_fits_match_polyfit() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 16, 500)
    y = 0.7 + 0.05 * x + 0.004 * x * x + rng.normal(0, 0.01, 500)
    m = moments(x, y)
    lin = linear_fit(*m[:6])
    assert lin is not None
    slope, icpt = np.polyfit(x, y, 1)
    assert (lin.slope, lin.intercept) == pytest.approx((slope, icpt), rel=1e-9)
    assert lin.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)
    quad = quadratic_fit(*m)
    assert quad is not None
    c, b, a = np.polyfit(x, y, 2)
    assert (quad.a, quad.b, quad.c) == pytest.approx((a, b, c), rel=1e-6)
    assert quad.t_c is not None and quad.t_c > 10
    # no curvature: the t statistic stays small
    y2 = 0.7 + 0.05 * x + rng.normal(0, 0.01, 500)
    q2 = quadratic_fit(*moments(x, y2))
    assert q2 is not None and q2.t_c is not None and abs(q2.t_c) < 4


def test_degenerate_fits() -> None:
    x = np.full(10, 3.0)
    y = np.arange(10.0)
    assert linear_fit(*moments(x, y)[:6]) is None  # one x value: no slope
    assert quadratic_fit(*moments(x, y)) is None
    assert linear_fit(1, 1, 1, 1, 1, 1) is None
    flat = linear_fit(*moments(np.arange(5.0), np.ones(5))[:6])
    assert flat is not None and flat.slope == pytest.approx(0) and flat.r2 is None
