"""Two snapshots side by side (`llmtop diff A B`): what changed per kernel, op class or layer, and
whether the change is real.

Rows are matched by name in the snapshots' group-by. Totals and means are exact (the stores keep them);
`significant` is a two-sided Mann-Whitney U test on the two rows' duration distributions, read from their
log buckets (buckets.py: every duration known to within 1 %, so the events of one bucket are ties), with
the normal approximation and its tie correction. A row is significant when

- p < alpha / (rows tested): the Bonferroni correction, since a diff tests every kernel at once; and
- the mean moved by at least MIN_EFFECT (2 %, twice the buckets' resolution): with hundreds of thousands
  of events a 0.3 % shift is "significant" and meaningless.

A file compared with itself has identical buckets: U = n_a n_b / 2 exactly, z = 0, never significant.
A row present on one side only (a kernel that appeared or vanished) is significant when that side has at
least MIN_EVENTS events: no test is needed to say it changed.

Caveat, said in the report: the test treats events as independent. Kernels of one run are not (a noisy
neighbour slows a stretch of them), so two runs of the same configuration on a shared machine can differ
"significantly"; the effect floor keeps that to changes worth reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmtop.stats.plain import finite, pct, plain

ALPHA = 0.01
MIN_EFFECT = 0.02
MIN_EVENTS = 5
TOKEN_KEYS = ("decode_tok_s", "prefill_tok_s", "ttft_ms", "tpot_ms_p50", "tpot_ms_p95", "generated")
ATTRIBUTION_KEYS = ("wall_ms_per_step", "kernel_ms_per_step", "host_ms_per_step", "host_pct")


def mann_whitney(a_buckets: np.ndarray, a_counts: np.ndarray, b_buckets: np.ndarray,
                 b_counts: np.ndarray) -> tuple[float, float]:
    """(U of A, two-sided p) of two samples given as counts per ordered value (here: duration buckets).

    Equal values are ties and get their mid-rank; the variance carries the tie correction
    n_a n_b / 12 * ((n + 1) - sum(t^3 - t) / (n (n - 1))). p = 1 when either sample is empty or every
    value is tied."""
    na, nb = float(np.sum(a_counts)), float(np.sum(b_counts))
    if na == 0 or nb == 0:
        return 0.0, 1.0
    values = np.union1d(a_buckets, b_buckets)
    ca = np.zeros(len(values))
    cb = np.zeros(len(values))
    ca[np.searchsorted(values, a_buckets)] = a_counts
    cb[np.searchsorted(values, b_buckets)] = b_counts
    t = ca + cb
    before = np.cumsum(t) - t
    midrank = before + (t + 1.0) / 2.0
    u = float(np.dot(ca, midrank)) - na * (na + 1.0) / 2.0
    n = na + nb
    var = na * nb / 12.0 * ((n + 1.0) - float(np.sum(t**3 - t)) / (n * (n - 1.0)))
    if var <= 0:
        return u, 1.0
    z = (u - na * nb / 2.0) / math.sqrt(var)
    return u, math.erfc(abs(z) / math.sqrt(2.0))


def _delta(a: Any, b: Any) -> dict[str, Any]:
    a, b = finite(a), finite(b)
    d = b - a if a is not None and b is not None else None
    return {"a": a, "b": b, "delta": d, "delta_pct": pct(d, a) if d is not None and a else None}


def diff_rows(a_rows: list[Mapping[str, Any]], b_rows: list[Mapping[str, Any]],
              a_buckets: Mapping[str, tuple[np.ndarray, np.ndarray]],
              b_buckets: Mapping[str, tuple[np.ndarray, np.ndarray]], *, alpha: float = ALPHA,
              min_effect: float = MIN_EFFECT) -> list[dict[str, Any]]:
    """One row per name in either table, sorted by |delta_ms| (largest change first)."""
    a_by = {r["name"]: r for r in a_rows}
    b_by = {r["name"]: r for r in b_rows}
    names = sorted(set(a_by) | set(b_by))
    tested = sum(1 for n in names if n in a_by and n in b_by) or 1
    out: list[dict[str, Any]] = []
    for name in names:
        ra, rb = a_by.get(name), b_by.get(name)
        at = float(ra["total_ms"]) if ra else 0.0
        bt = float(rb["total_ms"]) if rb else 0.0
        ac = int(ra["count"]) if ra else 0
        bc = int(rb["count"]) if rb else 0
        am = float(ra["mean_ms"]) if ra else None
        bm = float(rb["mean_ms"]) if rb else None
        p: float | None = None
        if ra and rb:
            ab, acnt = a_buckets.get(name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            bb, bcnt = b_buckets.get(name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            _, p = mann_whitney(ab, acnt, bb, bcnt)
            moved = am is not None and bm is not None and am > 0 and abs(bm / am - 1.0) >= min_effect
            significant = bool(p < alpha / tested and moved)
            change = ""
            if significant and am is not None and bm is not None:
                change = "slower" if bm > am else "faster"
        else:
            significant = max(ac, bc) >= MIN_EVENTS
            change = "new" if rb else "gone"
        src = ra or rb or {}
        out.append({
            "name": name,
            "op_class": src.get("op_class"),
            "a_total_ms": at,
            "b_total_ms": bt,
            "delta_ms": bt - at,
            "delta_pct": pct(bt - at, at) if at > 0 else None,
            "a_mean_ms": am,
            "b_mean_ms": bm,
            "delta_mean_pct": pct(bm - am, am) if am and bm is not None else None,
            "a_count": ac,
            "b_count": bc,
            "p_value": p,
            "significant": significant,
            "change": change,
        })
    out.sort(key=lambda r: (-abs(r["delta_ms"]), r["name"]))
    return out


def diff_reports(a: Any, b: Any, *, alpha: float = ALPHA, min_effect: float = MIN_EFFECT) -> dict[str, Any]:
    """The diff of two Snapshots (same group-by and filter): `rows` (diff_rows), plus the token-rate and
    attribution deltas ({key: {a, b, delta, delta_pct}}) and the totals. docs/REPORT.md ("llmtop diff")."""
    ra, rb = a.report, b.report
    rows = diff_rows(ra["kernels"], rb["kernels"], a.row_buckets(), b.row_buckets(), alpha=alpha,
                     min_effect=min_effect)
    ta, tb = ra.get("tokens") or {}, rb.get("tokens") or {}
    attribution = {}
    for ph in ("prefill", "decode"):
        xa = (ra.get("attribution") or {}).get(ph) or {}
        xb = (rb.get("attribution") or {}).get(ph) or {}
        if xa.get("steps") or xb.get("steps"):
            attribution[ph] = {k: _delta(xa.get(k), xb.get(k)) for k in ATTRIBUTION_KEYS}
    out = {
        "group": ra.get("group"),
        "filter": ra.get("filter"),
        "alpha": alpha,
        "min_effect_pct": min_effect * 100.0,
        "tokens": {k: _delta(ta.get(k), tb.get(k)) for k in TOKEN_KEYS},
        "attribution": attribution,
        "kernels_total_ms": _delta(ra.get("kernels_total_ms"), rb.get("kernels_total_ms")),
        "significant_rows": sum(1 for r in rows if r["significant"]),
        "rows": rows,
    }
    return plain(out)


__all__ = ["ALPHA", "MIN_EFFECT", "MIN_EVENTS", "diff_reports", "diff_rows", "mann_whitney"]
