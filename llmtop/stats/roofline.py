"""Roofline columns of the kernel table: how far each matmul is from the device's memory and compute roofs.

For an event with a matmul shape (m, n, k) — output rows, output columns, reduction — with elements of
`e` bytes:
- bytes = e (n k + m k + m n): the weights read once, the input read, the output written (caches that
  would let a kernel read less are ignored: this is the traffic the math needs, not what the cache saw);
- flops = 2 m n k.
A row's `bytes` and `flops` are per call (means over its shaped calls); `gbps` and `gflops` are Σ bytes and
Σ flops over Σ time of those calls, i.e. from the mean time; `pct_peak_*` divide by the device's peaks
(`device_peak`); `bound` compares the row's arithmetic intensity (flops / byte) with the ridge point
(peak flops / peak bandwidth): `memory` below it, `compute` at or above. Rows without a shape (attention,
norms, imported kernels without shapes) have all seven keys `null`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

ROOFLINE_KEYS = ("bytes", "flops", "gbps", "gflops", "pct_peak_bw", "pct_peak_flops", "bound")

# Bytes per element of the dtype names sources use (SourceInfo.dtype, a peak's dtype).
ELEM_BYTES = {
    "float64": 8, "f64": 8, "fp64": 8, "double": 8,
    "float32": 4, "f32": 4, "fp32": 4, "tf32": 4, "float": 4,
    "float16": 2, "f16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2,
    "float8": 1, "fp8": 1, "e4m3": 1, "e5m2": 1, "int8": 1, "i8": 1,
}


def elem_bytes(dtype: Any) -> int | None:
    """Bytes per element of a dtype name (`torch.bfloat16`, `bf16`, `float32 (TF32)`, ...); None: unknown."""
    if not isinstance(dtype, str) or not dtype:
        return None
    d = dtype.strip().lower().removeprefix("torch.").split()[0].split("(")[0]
    return ELEM_BYTES.get(d)


def device_peak(source: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The source's `device_peak` ({bw_gbps, flops_gflops, dtype, source}), when it is a usable one."""
    extra = (source or {}).get("extra") or {}
    p = extra.get("device_peak") if isinstance(extra, Mapping) else None
    if not isinstance(p, Mapping):
        return None
    try:
        bw, fl = float(p.get("bw_gbps") or 0), float(p.get("flops_gflops") or 0)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(bw) and np.isfinite(fl)) or bw <= 0 or fl <= 0:
        return None
    return {"bw_gbps": bw, "flops_gflops": fl, "dtype": str(p.get("dtype") or ""),
            "source": str(p.get("source") or "")}


def roofline_columns(elems: np.ndarray, flops: np.ndarray, shaped_ns: np.ndarray, shaped_n: np.ndarray,
                     source: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per row (group sums of the store's kel / kfl / ksh / kshn): its roofline keys."""
    e = elem_bytes((source or {}).get("dtype"))
    peak = device_peak(source)
    if e is None and peak is not None:
        e = elem_bytes(peak["dtype"])
    out: list[dict[str, Any]] = []
    ridge = peak["flops_gflops"] / peak["bw_gbps"] if peak else None
    cols = (elems.tolist(), flops.tolist(), shaped_ns.tolist(), shaped_n.tolist())
    for el, fl, t, n in zip(*cols, strict=True):
        if n <= 0 or t <= 0:
            out.append(dict.fromkeys(ROOFLINE_KEYS))
            continue
        byts = el * e if e is not None else None
        gbps = byts / t if byts is not None else None  # bytes per ns = GB/s
        gflops = fl / t
        row: dict[str, Any] = {
            "bytes": byts / n if byts is not None else None,
            "flops": fl / n,
            "gbps": gbps,
            "gflops": gflops,
            "pct_peak_bw": 100.0 * gbps / peak["bw_gbps"] if peak and gbps is not None else None,
            "pct_peak_flops": 100.0 * gflops / peak["flops_gflops"] if peak else None,
            "bound": None,
        }
        if ridge is not None and byts:
            row["bound"] = "compute" if fl / byts >= ridge else "memory"
        out.append(row)
    return out


__all__ = ["ELEM_BYTES", "ROOFLINE_KEYS", "device_peak", "elem_bytes", "roofline_columns"]
