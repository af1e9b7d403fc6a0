"""RoPE inverse frequencies: the one implementation every backend uses (numpy; no torch needed).

The formula is transformers' (`ROPE_INIT_FUNCTIONS` "default", "linear" and "llama3"), written as the
same sequence of float32 operations that torch runs for it, so each step rounds exactly as there:
- `1.0 / t` and `c / t` are `t.reciprocal() * c` in torch (Tensor.__rtruediv__), python scalars act as
  float32 constants, and `(1 - s) * a / f + s * a` is evaluated left to right;
- the only transcendental step, `theta ** (i / dim)`, goes through `power`. The default computes it in
  float64 and rounds to float32 (the correctly rounded result). torch's CPU pow (SLEEF, 1 ulp) is off by
  one ulp for a few exponents (e.g. head_dim 128, theta 1e6, index 37), so the torch backend passes
  torch's own pow here and its tables stay bit-identical to transformers'
  (tests/test_torch_backend.py proves both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.model.config import ModelConfig

# (base, float32 exponents) -> float32 base ** exponents
Power = Callable[[float, np.ndarray], np.ndarray]

ROPE_TYPES = ("default", "linear", "llama3")


def power_f64(base: float, exps: np.ndarray) -> np.ndarray:
    """float32(base) ** exps computed in float64, rounded once to float32."""
    return np.power(np.float64(np.float32(base)), exps.astype(np.float64)).astype(np.float32)


def rope_type(cfg: ModelConfig) -> str:
    rs = cfg.rope_scaling or {}
    return rs.get("rope_type", rs.get("type", "default")) or "default"


def _factor(rs: dict[str, Any], kind: str) -> np.float32:
    if "factor" not in rs:
        keys = ", ".join(sorted(rs)) or "none"
        raise LlmtopError(f"rope scaling {kind!r} needs a 'factor' (got keys: {keys})")
    return np.float32(rs["factor"])


def rope_inv_freq(cfg: ModelConfig, power: Power | None = None) -> np.ndarray:
    """Inverse frequencies (head_dim/2,) float32 of `cfg`'s RoPE, rounded exactly like transformers.

    Missing llama3 keys default to low_freq_factor 1.0, high_freq_factor 4.0 and
    original_max_position_embeddings = cfg.max_context. Other rope types raise LlmtopError.
    """
    f32 = np.float32
    kind = rope_type(cfg)
    if kind not in ROPE_TYPES:
        raise LlmtopError(f"unsupported rope scaling type {kind!r} (supported: {', '.join(ROPE_TYPES)})")
    rs = cfg.rope_scaling or {}
    dim = cfg.head_dim
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(f32) / f32(dim)
    inv = np.reciprocal(np.asarray((power or power_f64)(float(cfg.rope_theta), exps), dtype=f32))
    if kind == "linear":
        return inv / _factor(rs, kind)
    if kind == "llama3":
        factor = _factor(rs, kind)
        low = float(rs.get("low_freq_factor", 1.0))
        high = float(rs.get("high_freq_factor", 4.0))
        old_ctx = float(rs.get("original_max_position_embeddings", cfg.max_context))
        low_wl, high_wl = f32(old_ctx / low), f32(old_ctx / high)
        wavelen = np.reciprocal(inv) * f32(2 * math.pi)
        inv_l = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (np.reciprocal(wavelen) * f32(old_ctx) - f32(low)) / f32(high - low)
        smoothed = (f32(1) - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv = np.where(medium, smoothed, inv_l)
    return inv.astype(f32, copy=False)


__all__ = ["ROPE_TYPES", "Power", "power_f64", "rope_inv_freq", "rope_type"]
