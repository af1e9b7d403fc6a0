"""Snapshot: one finished, immutable view of the statistics; `report` is the JSON of `llmtop report`.

Every key of `Snapshot.report` is documented in docs/REPORT.md. Numbers are plain floats/ints (ms
for durations), None where a value cannot be computed (no data, undefined fit) - never NaN/inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.events import NO_LAYER, OP_CLASSES, PHASES, track_label
from llmtop.stats.buckets import REPRESENTATIVE, quantile_ranks
from llmtop.stats.filter import parse_filter
from llmtop.stats.fit import linear_fit, quadratic_fit
from llmtop.stats.frozen import (
    TR_DECODE_STEPS,
    TR_DECODE_TOKENS,
    TR_DECODE_WALL_NS,
    TR_KERNEL_NS,
    TR_KERNELS,
    TR_STEPS,
    Frozen,
)
from llmtop.stats.kernel_table import kernel_detail, kernel_rows
from llmtop.stats.plain import finite, ms, pct, plain
from llmtop.stats.store import (
    A_N,
    A_X,
    A_X2Y,
    A_X3,
    A_X4,
    A_XX,
    A_XY,
    A_Y,
    A_YY,
    N_ATT_COLS,
    S_CTX,
    S_GEN,
    S_HOST,
    S_KERNEL,
    S_N,
    S_OVERLAP,
    S_PROC,
    S_TIMED_N,
    S_TIMED_WALL,
    S_WALL,
)

REPORT_VERSION = 1
OUTLIER_MADS = 3.0  # a layer is an outlier above median + 3 scaled MADs ...
OUTLIER_MIN_RATIO = 1.10  # ... and at least 10 % above the median layer
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
SUPERLINEAR_T = 3.0  # quadratic term significant at |t| >= 3 ...
SUPERLINEAR_SHARE = 0.05  # ... and worth >= 5 % of the fitted attention at the largest context seen
# A projection far beyond the measured contexts is only shown when the fit can carry it.
FIT_MIN_STEPS = 8
FIT_MIN_SPAN = 64  # tokens of context between the shortest and longest decode step
FIT_MIN_R2 = 0.5
_PLAIN_ALREADY = frozenset({"kernels", "layers"})  # sections built from tolist() values (finite, checked)


# -- snapshot -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Series:
    """Time series for the plots. Arrays are read-only float64."""

    tok_s_t: np.ndarray  # start of each 1-s bin, seconds since the first event (complete bins only)
    tok_s: np.ndarray  # tokens generated in that second (= tok/s)
    attention_ctx: np.ndarray  # mean context (tokens) of each context bucket with decode steps
    attention_ms: np.ndarray  # mean attention-class ms per decode step in that bucket
    attention_steps: np.ndarray  # decode steps in that bucket
    attention_fit: tuple[float, float] | None  # (intercept ms, slope ms per token) for the fitted line
    step_ms: np.ndarray  # decode step walls (ms) of the trend's generation (decimated beyond 8192)


@dataclass(frozen=True)
class Snapshot:
    report: dict[str, Any]
    series: Series
    _fz: Frozen = field(repr=False, compare=False)

    def kernel_detail(self, name: str) -> dict[str, Any]:
        """Detail of one row of the kernels table (its `name`, in the snapshot's group-by)."""
        return plain(kernel_detail(self._fz, name))


def _ro(a: Any) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    arr.flags.writeable = False
    return arr


def build_snapshot(fz: Frozen) -> Snapshot:
    filt = parse_filter(fz.filter)
    kmask = filt.key_mask(fz)
    attention, series_att = _attention(fz)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "mode": fz.mode,
        "group": fz.group,
        "sort": fz.sort,
        "filter": fz.filter,
        "window_s": fz.window_s,
        "span_s": fz.span_s,
        "events": fz.events,
        "source": fz.source,
        "tokens": _tokens(fz),
        "kernels": kernel_rows(fz, kmask),
        "layers": _layers(fz, kmask),
        "attention": attention,
        "attribution": _attribution(fz),
        "trend": _trend(fz),
        "dropped": {"total": int(sum(fz.dropped.values())), "by_collector": dict(fz.dropped)},
        "collectors": fz.collectors,
        "tracks": _tracks(fz),
    }
    report["kernels_total_ms"] = float(sum(r["total_ms"] for r in report["kernels"]))
    # The kernel and layer rows are already plain JSON types (see _kernel_rows): skip the deep walk over them.
    report = {k: v if k in _PLAIN_ALREADY else plain(v) for k, v in report.items()}
    g = fz.gen
    series = Series(
        tok_s_t=_ro(fz.tok_bins[:, 0]),
        tok_s=_ro(fz.tok_bins[:, 1]),
        attention_ctx=_ro(series_att[0]),
        attention_ms=_ro(series_att[1]),
        attention_steps=_ro(series_att[2]),
        attention_fit=series_att[3],
        step_ms=_ro(np.array(g.buf) / 1e6 if g is not None else []),
    )
    return Snapshot(report=report, series=series, _fz=fz)


def _layers(fz: Frozen, kmask: np.ndarray) -> list[dict[str, Any]]:
    st = fz.store
    nk = len(fz.key_name)
    kc = st.kc[:nk]
    for phase in (1, 0):  # per decode step; a prefill-only source falls back to prefill steps
        steps = int(st.ksteps[phase])
        keys = np.flatnonzero(kmask & (kc > 0) & (fz.key_phase == phase) & (fz.key_layer != NO_LAYER))
        if steps > 0 and len(keys):
            break
    else:
        return []
    layers, inv = np.unique(fz.key_layer[keys], return_inverse=True)
    opc = np.minimum(fz.key_opc[keys], len(OP_CLASSES) - 1)
    by = np.zeros((len(layers), len(OP_CLASSES)))
    np.add.at(by, (inv, opc), st.ks[keys])
    by_ms = by / 1e6 / steps
    per = by_ms.sum(axis=1)
    flags = _outliers(per)
    total = float(per.sum())
    pct = (100.0 * per / total if total > 0 else np.zeros(len(per))).tolist()
    # Plain Python values straight from tolist(): build_snapshot skips the deep _plain walk for these rows.
    by_l, nz_l = by_ms.tolist(), (by != 0).tolist()
    return [
        {
            "layer": lv,
            "ms_per_step": p,
            "by_op_class": {c: v for c, v, nz in zip(OP_CLASSES, b, z, strict=True) if nz},
            "pct": pc,
            "outlier": fl,
            "phase": PHASES[phase],
            "steps": steps,
        }
        for lv, p, b, z, pc, fl in zip(
            layers.tolist(), per.tolist(), by_l, nz_l, pct, flags.tolist(), strict=True
        )
    ]


def _outliers(v: np.ndarray) -> np.ndarray:
    """Layers slower than median + 3 scaled MADs and at least 10 % above the median (needs >= 4)."""
    if len(v) < 4:
        return np.zeros(len(v), bool)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return (v > med + OUTLIER_MADS * MAD_SCALE * mad) & (v > OUTLIER_MIN_RATIO * med)


# -- tokens / attribution / trend ---------------------------------------------------------------
def _step_quantile(fz: Frozen, phase: int, q: float) -> float | None:
    st = fz.store
    h = st.step_hist[phase]
    n = int(h.sum())
    if n == 0:
        return None
    cum = np.cumsum(h)
    pos = int(np.searchsorted(cum, quantile_ranks(q, np.array([n]))[0], side="left"))
    return float(np.clip(REPRESENTATIVE[pos], st.step_min[phase], st.step_max[phase])) / 1e6


def _tokens(fz: Frozen) -> dict[str, Any]:
    s = fz.store.steps
    pre, dec = s[0], s[1]
    return {
        "ttft_ms": _step_quantile(fz, 0, 0.5),
        "ttft_ms_p95": _step_quantile(fz, 0, 0.95),
        "ttft_ms_mean": ms(pre[S_WALL] / pre[S_N]) if pre[S_N] else None,
        "tpot_ms_p50": _step_quantile(fz, 1, 0.5),
        "tpot_ms_p95": _step_quantile(fz, 1, 0.95),
        "tpot_ms_mean": ms(dec[S_WALL] / dec[S_N]) if dec[S_N] else None,
        "decode_tok_s": dec[S_GEN] / (dec[S_WALL] / 1e9) if dec[S_WALL] > 0 else None,
        "prefill_tok_s": pre[S_PROC] / (pre[S_WALL] / 1e9) if pre[S_WALL] > 0 else None,
        "tok_s_now": fz.tok_s_now,
        "generated": int(pre[S_GEN] + dec[S_GEN]),
        "prompt_tokens": int(pre[S_PROC]),
        "prefills": int(pre[S_N]),
        "decode_steps": int(dec[S_N]),
        "context": fz.context,
        "context_max": int(max(pre[S_CTX], dec[S_CTX])),
    }


def _tracks(fz: Frozen) -> list[dict[str, Any]]:
    """One row per track that saw kernels or steps (cumulative): ranks / devices / streams side by side."""
    extra = fz.source.get("extra") if isinstance(fz.source, dict) else None
    listed = extra.get("tracks") if isinstance(extra, dict) else None
    meta = {t["track"]: t for t in listed or [] if isinstance(t, dict) and type(t.get("track")) is int}
    out = []
    for i, r in enumerate(fz.tracks.tolist()):
        if not (r[TR_KERNELS] or r[TR_STEPS]):
            continue
        m = meta.get(i)
        if m is None:
            label = f"track {i}"
        elif isinstance(m.get("label"), str):
            label = m["label"]
        else:
            label = track_label(m)
        wall = r[TR_DECODE_WALL_NS]
        out.append({
            "track": i,
            "label": label,
            "kernels": int(r[TR_KERNELS]),
            "kernel_ms": r[TR_KERNEL_NS] / 1e6,
            "steps": int(r[TR_STEPS]),
            "decode_steps": int(r[TR_DECODE_STEPS]),
            "decode_tok_s": r[TR_DECODE_TOKENS] / (wall / 1e9) if r[TR_DECODE_STEPS] and wall > 0 else None,
        })
    return out


def _attribution(fz: Frozen) -> dict[str, Any]:
    st = fz.store
    nk = len(fz.key_name)
    out: dict[str, Any] = {}
    for p, pname in enumerate(PHASES):
        r = st.steps[p]
        keys = np.flatnonzero((fz.key_phase == p) & (st.kc[:nk] > 0))
        by = np.zeros(len(OP_CLASSES))
        np.add.at(by, np.minimum(fz.key_opc[keys], len(OP_CLASSES) - 1), st.ks[keys])
        n, tn, tw = float(r[S_N]), float(r[S_TIMED_N]), float(r[S_TIMED_WALL])
        host_pct = pct(r[S_HOST], tw)
        out[pname] = {
            "steps": int(n),
            "timed_steps": int(tn),
            "wall_ms": r[S_WALL] / 1e6,
            "timed_wall_ms": tw / 1e6,
            "kernel_ms": r[S_KERNEL] / 1e6,
            "host_ms": r[S_HOST] / 1e6,
            "overlap_ms": r[S_OVERLAP] / 1e6,
            "clamped": bool(r[S_OVERLAP] > 0),
            "kernel_pct": None if host_pct is None else 100.0 - host_pct,
            "host_pct": host_pct,
            "wall_ms_per_step": r[S_WALL] / n / 1e6 if n else None,
            "kernel_ms_per_step": r[S_KERNEL] / tn / 1e6 if tn else None,
            "host_ms_per_step": r[S_HOST] / tn / 1e6 if tn else None,
            "by_op_class_ms": {OP_CLASSES[j]: float(by[j]) / 1e6 for j in np.flatnonzero(by).tolist()},
        }
    return out


def _trend(fz: Frozen) -> dict[str, Any]:
    g = fz.gen
    if g is None:
        return {"generation": None, "steps": 0, "first_ms": None, "middle_ms": None, "last_ms": None,
                "min_ms": None, "max_ms": None, "mean_ms": None, "drift_pct": None,
                "slope_us_per_token": None}
    fit = linear_fit(g.n, g.si, g.sum, g.sii, g.siy, 0.0) if g.n >= 2 else None  # slope only
    return {
        "generation": fz.gen_kind,
        "steps": g.n,
        "first_ms": g.first / 1e6,
        "middle_ms": g.middle() / 1e6,
        "last_ms": g.last / 1e6,
        "min_ms": g.mn / 1e6,
        "max_ms": g.mx / 1e6,
        "mean_ms": g.sum / g.n / 1e6,
        "drift_pct": pct(g.last - g.first, g.first) if g.first > 0 else None,
        "slope_us_per_token": finite(fit.slope / 1e3) if fit else None,
    }


# -- attention ------------------------------------------------------------------------------------
def _attention(fz: Frozen) -> tuple[dict[str, Any], tuple[Any, Any, Any, Any]]:
    st = fz.store
    att = st.att
    occ = att[:, A_N] > 0
    pts_n = att[occ, A_N]
    pts = (att[occ, A_X] / pts_n * 1000.0, att[occ, A_Y] / pts_n, pts_n, None)
    m = att.sum(axis=0) if occ.any() else np.zeros(N_ATT_COLS)
    n = float(m[A_N])
    out: dict[str, Any] = {
        "steps": int(n),
        "ctx_min": int(st.att_min[occ].min()) if occ.any() else None,
        "ctx_max": int(st.att_max[occ].max()) if occ.any() else None,
        "mean_ms_per_step": m[A_Y] / n if n else None,
        "slope_us_per_1k": None,
        "intercept_ms": None,
        "r2": None,
        "projection": None,
        "quadratic": None,
        "superlinear": False,
        "fit_ok": False,
        "fit_note": "no decode steps with attention yet" if not n else None,
    }
    lin = linear_fit(n, m[A_X], m[A_Y], m[A_XX], m[A_XY], m[A_YY])
    if lin is None:
        if n:
            out["fit_note"] = "one context length only: no fit"
        return out, pts
    span = (out["ctx_max"] or 0) - (out["ctx_min"] or 0)
    if n < FIT_MIN_STEPS:
        out["fit_note"] = f"only {int(n)} decode steps"
    elif span < FIT_MIN_SPAN:
        out["fit_note"] = f"context range too narrow ({out['ctx_min']}-{out['ctx_max']} tokens)"
    elif lin.slope <= 0:
        out["fit_note"] = "no growth with context measured"
    elif lin.r2 < FIT_MIN_R2:
        out["fit_note"] = f"weak fit (R² {lin.r2:.2f})"
    else:
        out["fit_ok"] = True
    # x is in thousands of tokens and y in ms, so the slope is ms per 1k tokens.
    out["slope_us_per_1k"] = finite(lin.slope * 1000.0)
    out["intercept_ms"] = finite(lin.intercept)
    out["r2"] = finite(lin.r2)
    pts = (pts[0], pts[1], pts[2], (float(lin.intercept), float(lin.slope) / 1000.0))
    quad = quadratic_fit(n, m[A_X], m[A_Y], m[A_XX], m[A_XY], m[A_YY], m[A_X3], m[A_X4], m[A_X2Y])
    xmax = float(out["ctx_max"] or 0) / 1000.0
    if quad is not None:
        out["quadratic"] = {
            "a_ms": finite(quad.a), "b_us_per_1k": finite(quad.b * 1000.0),
            "c_us_per_1k2": finite(quad.c * 1000.0),
            "t_stat": finite(quad.t_c),
        }
        fitted = quad.a + quad.b * xmax + quad.c * xmax * xmax
        out["superlinear"] = bool(
            quad.c > 0 and quad.t_c is not None and quad.t_c >= SUPERLINEAR_T
            and fitted > 0 and quad.c * xmax * xmax >= SUPERLINEAR_SHARE * fitted
        )
    max_ctx = int(fz.source.get("max_context") or 0)
    if max_ctx > 0:
        att_proj = lin.intercept + lin.slope * max_ctx / 1000.0
        dec = st.steps[1]
        if dec[S_N] > 0:
            step_now = dec[S_WALL] / dec[S_N] / 1e6
        elif st.ksteps[1] > 0:  # no step records (an imported trace): kernel time per step
            nk = len(fz.key_name)
            step_now = float(st.ks[:nk][fz.key_phase == 1].sum()) / st.ksteps[1] / 1e6
        else:
            step_now = None
        proj: dict[str, Any] = {"ctx": max_ctx, "attention_ms": finite(att_proj), "step_ms": None,
                                "pct_of_step": None}
        if quad is not None:
            xm = max_ctx / 1000.0
            proj["attention_ms_quadratic"] = finite(quad.a + quad.b * xm + quad.c * xm * xm)
        if not out["fit_ok"]:  # extrapolating a fit that cannot carry it would print nonsense
            proj["attention_ms"] = None
            proj.pop("attention_ms_quadratic", None)
        elif step_now is not None and out["mean_ms_per_step"] is not None:
            step_proj = step_now - out["mean_ms_per_step"] + att_proj
            proj["step_ms"] = finite(step_proj)
            proj["pct_of_step"] = finite(pct(att_proj, step_proj)) if att_proj >= 0 else None
        out["projection"] = proj
    return out, pts


# -- kernel detail --------------------------------------------------------------------------------
