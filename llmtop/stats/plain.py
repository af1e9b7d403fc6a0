"""Plain JSON values for the report: finite Python floats or None, never NaN, inf or numpy scalars."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite(x: Any) -> float | None:
    """A finite Python float, or None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def plain(x: Any) -> Any:
    """Plain JSON types only: numpy scalars -> int/float/bool, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite(x)
    return x


def ms(ns: Any) -> float | None:
    v = finite(ns)
    return None if v is None else v / 1e6


def pct(a: float, b: float) -> float | None:
    return 100.0 * a / b if b > 0 else None


__all__ = ["finite", "ms", "pct", "plain"]
