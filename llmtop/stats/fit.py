"""Least-squares fits from running moment sums (so they merge across slices and stay O(1) memory).

Given n, Σx, Σy, Σx², Σxy, Σy², Σx³, Σx⁴, Σx²y over every point, the ordinary least-squares line
and parabola are exactly those np.polyfit would return on the points themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class LinearFit:
    intercept: float
    slope: float
    r2: float | None  # None when y is constant (R² undefined)
    n: int
    # Standard errors from the residual variance SSE / (n - 2) (None with 2 points: no residual left)
    slope_se: float | None = None
    intercept_se: float | None = None


@dataclass(frozen=True, slots=True)
class QuadraticFit:
    a: float  # y = a + b x + c x²
    b: float
    c: float
    t_c: float | None  # t statistic of c (None with fewer than 4 points or a perfect fit)
    n: int


def linear_fit(n: float, sx: float, sy: float, sxx: float, sxy: float, syy: float) -> LinearFit | None:
    if n < 2:
        return None
    vx = sxx - sx * sx / n
    if not vx > 1e-12 * max(sxx, 1e-300):  # all x (nearly) equal: no slope
        return None
    cxy = sxy - sx * sy / n
    slope = cxy / vx
    intercept = (sy - slope * sx) / n
    vy = syy - sy * sy / n
    r2 = None
    if vy > 1e-12 * max(syy, 1e-300):
        r2 = min(1.0, max(0.0, cxy * cxy / (vx * vy)))
    slope_se = intercept_se = None
    if n > 2:
        sse = max(0.0, vy - slope * cxy)  # residual sum of squares
        s2 = sse / (n - 2)
        slope_se = math.sqrt(s2 / vx)
        intercept_se = math.sqrt(s2 * sxx / (n * vx))
    return LinearFit(intercept=intercept, slope=slope, r2=r2, n=int(n), slope_se=slope_se,
                     intercept_se=intercept_se)


def quadratic_fit(n: float, sx: float, sy: float, sxx: float, sxy: float, syy: float,
                  sx3: float, sx4: float, sx2y: float) -> QuadraticFit | None:
    if n < 3:
        return None
    xtx = np.array([[n, sx, sxx], [sx, sxx, sx3], [sxx, sx3, sx4]], dtype=np.float64)
    xty = np.array([sy, sxy, sx2y], dtype=np.float64)
    # Scale rows/cols to unit diagonal: the raw normal matrix spans many orders of magnitude.
    dg = np.sqrt(np.diag(xtx))
    if not np.all(dg > 0):
        return None
    s = xtx / np.outer(dg, dg)
    if np.linalg.cond(s) > 1e12:
        return None  # fewer than three distinct x values
    inv = np.linalg.inv(s) / np.outer(dg, dg)
    beta = inv @ xty
    a, b, c = (float(v) for v in beta)
    t_c = None
    if n > 3:
        sse = syy - float(beta @ xty)  # Σ(y - ŷ)² = Σy² - βᵀXᵀy for least squares
        sigma2 = max(sse, 0.0) / (n - 3)
        var_c = sigma2 * inv[2, 2]
        if var_c > 0:
            t_c = c / math.sqrt(var_c)
        elif c != 0:
            t_c = math.copysign(math.inf, c)
    return QuadraticFit(a=a, b=b, c=c, t_c=t_c, n=int(n))
