"""Snapshot: one finished, immutable view of the statistics; `report` is the JSON of `llmtop report`.

Every key of `Snapshot.report` is documented in docs/REPORT.md. Numbers are plain floats/ints (ms
for durations), None where a value cannot be computed (no data, undefined fit) - never NaN/inf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.events import NO_LAYER, OP_CLASSES, PHASES, track_label
from llmtop.stats.buckets import REPRESENTATIVE, UPPER, quantile_ranks
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
from llmtop.stats.kernel_table import group_buckets, kernel_detail, kernel_rows
from llmtop.stats.npu import npu_section
from llmtop.stats.plain import finite, ms, pct, plain
from llmtop.stats.roofline import device_peak
from llmtop.stats.store import (
    A_K,
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
    S_GPU_BUSY,
    S_GPU_IDLE,
    S_GPU_LB,
    S_GPU_N,
    S_GPU_WALL,
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
# A fit is shown (and a projection made) only when the data can carry it. Measured on the default run
# (SmolLM2-135M, CPU): attention is ~5 % of a decode step at short context and a step's attention time
# scatters by ±20-40 % between neighbouring steps, so a slope needs many contexts over a wide span and
# must stand clear of its own noise.
FIT_MIN_STEPS = 8
FIT_MIN_POINTS = 6  # distinct context buckets with decode steps
FIT_MIN_SPAN = 256  # tokens of context between the shortest and longest decode step
FIT_MIN_T = 3.0  # slope / its standard error: growth must be 3 sigma above the noise
FIT_MIN_R2 = 0.5
FIT_RULE = (f">= {FIT_MIN_STEPS} steps, >= {FIT_MIN_POINTS} context buckets over >= {FIT_MIN_SPAN} tokens, "
            f"slope >= {FIT_MIN_T:g} standard errors above 0, intercept not below 0, R² >= {FIT_MIN_R2}")
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


@dataclass(frozen=True, slots=True)
class PhaseSteps:
    """One phase's step records in a snapshot's scope (everything, in a cumulative snapshot): the counts,
    sums and cumulative wall-time buckets a Prometheus histogram and token counters are made of."""

    steps: int
    wall_s: float  # summed step wall, exact
    tokens: int  # tokens processed: a prefill's prompt tokens, a decode step's sequences
    generated: int  # tokens sampled: one per sequence of a prefill, one per sequence of a decode step
    le: tuple[int, ...]  # steps whose wall is <= each bound asked for (non-decreasing)


@dataclass(frozen=True)
class Snapshot:
    report: dict[str, Any]
    series: Series
    _fz: Frozen = field(repr=False, compare=False)

    def kernel_detail(self, name: str) -> dict[str, Any]:
        """Detail of one row of the kernels table (its `name`, in the snapshot's group-by)."""
        return plain(kernel_detail(self._fz, name))

    def row_buckets(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per row of the kernels table: (duration buckets, counts) of its events (stats/compare.py)."""
        return group_buckets(self._fz, parse_filter(self._fz.filter).key_mask(self._fz))

    def phase_steps(self, bounds_s: Sequence[float]) -> dict[str, PhaseSteps]:
        """Per phase (`prefill`, `decode`): step count, summed wall, tokens and how many step walls are
        <= each of `bounds_s` (seconds, ascending).

        The bucket counts come from the log-spaced step histogram (buckets.py): a wall within ~2 % below
        a bound can land in the next bound up; a bound at or past the slowest step counts every step
        and one below the fastest counts none (exact min/max)."""
        st = self._fz.store
        bounds_ns = np.asarray(bounds_s, np.float64) * 1e9
        # last log bucket wholly at or below each bound (UPPER is ascending; bucket 0 holds walls <= 0)
        last = np.searchsorted(UPPER, bounds_ns, side="right") - 1
        out: dict[str, PhaseSteps] = {}
        for p, name in enumerate(PHASES):
            row, h = st.steps[p], st.step_hist[p]
            n = int(row[S_N])
            cum = np.cumsum(h)
            le = np.where(last >= 0, cum[np.maximum(last, 0)], 0)
            le = np.where(bounds_ns >= st.step_max[p], n, le)
            le = np.where(bounds_ns < st.step_min[p], 0, le)
            out[name] = PhaseSteps(steps=n, wall_s=float(row[S_WALL]) / 1e9, tokens=int(row[S_PROC]),
                                   generated=int(row[S_GEN]), le=tuple(int(x) for x in le))
        return out

    def layer_totals(self) -> list[tuple[int, float, int]]:
        """(layer, summed kernel ms, kernel count) per decoder layer, every phase, ascending; kernels
        outside layers (embedding, lm_head, sampling) are left out. The snapshot's filter applies."""
        fz = self._fz
        nk = len(fz.key_name)
        kc = fz.store.kc[:nk]
        keys = np.flatnonzero(parse_filter(fz.filter).key_mask(fz) & (kc > 0) & (fz.key_layer != NO_LAYER))
        if not len(keys):
            return []
        layers, inv = np.unique(fz.key_layer[keys], return_inverse=True)
        tot = np.bincount(inv, weights=fz.store.ks[keys], minlength=len(layers)) / 1e6
        cnt = np.bincount(inv, weights=kc[keys], minlength=len(layers))
        return [(int(lv), float(t), int(c)) for lv, t, c in zip(layers.tolist(), tot.tolist(), cnt.tolist(),
                                                               strict=True)]


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
        "npu": npu_section(fz),  # XRT calls (stats/npu.py); None without them
    }
    report["kernels_total_ms"] = float(sum(r["total_ms"] for r in report["kernels"]))
    report["device_peak"] = device_peak(fz.source)  # the roofs of the kernel rows' roofline columns
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
        "ttft_warm": _ttft_warm(fz.source),
        "step_index": fz.decode_steps_total,
    }


def _ttft_warm(source: Any) -> bool | None:
    """True when untimed warm-up rounds ran before the first timed prefill (--warmup), False when the
    first timed prefill was the process's first (a cold start, its one-time costs included), None when
    the source does not say (imports, attach)."""
    extra = source.get("extra") if isinstance(source, dict) else None
    if not isinstance(extra, dict) or "warmup_rounds" not in extra:
        return None
    try:
        return int(extra["warmup_rounds"]) > 0
    except (TypeError, ValueError):
        return None


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
            "gpu": _gpu_split(r),
        }
    return out


def _gpu_split(r: np.ndarray) -> dict[str, Any] | None:
    """Busy / idle / host of the steps sampled under CUPTI (kernels/gpu_profile.py); None without any.
    Per step: busy = GPU kernel time, idle = gaps inside the GPU span, host = wall - span."""
    n = float(r[S_GPU_N])
    if not n:
        return None
    # A GPU span longer than the host wall (work queued before the step began still running) would give
    # shares over 100 %: measure them against the longer of the two.
    wall = max(float(r[S_GPU_WALL]), float(r[S_GPU_BUSY] + r[S_GPU_IDLE]))
    busy, idle = float(r[S_GPU_BUSY]), float(r[S_GPU_IDLE])
    host = wall - busy - idle
    return {
        "sampled_steps": int(n),
        "wall_ms_per_step": wall / n / 1e6,
        "busy_ms_per_step": busy / n / 1e6,
        "idle_ms_per_step": idle / n / 1e6,
        "host_ms_per_step": host / n / 1e6,
        "busy_pct": pct(busy, wall),
        "idle_pct": pct(idle, wall),
        "host_pct": pct(host, wall),
        "launch_bound_steps": int(r[S_GPU_LB]),
        "launch_bound": idle > busy,
    }


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
def _share(att: np.ndarray, occ: np.ndarray, cmin: np.ndarray, cmax: np.ndarray) -> dict[str, Any]:
    """Attention's share of a decode step's kernel time against context (the number people quote, e.g.
    6 % -> 58 % over 255 tokens in the WebGPU seed): per context bucket, and at the first and last."""
    rows = np.flatnonzero(occ & (att[:, A_K] > 0))
    by = [{"ctx_min": int(cmin[i]), "ctx_max": int(cmax[i]), "steps": int(att[i, A_N]),
           "share_pct": float(100.0 * att[i, A_Y] / att[i, A_K])} for i in rows.tolist()]
    return {"share_by_ctx": by, "share_pct_first": by[0]["share_pct"] if by else None,
            "share_pct_last": by[-1]["share_pct"] if by else None}


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
        "slope_ms_per_1k": None,
        "slope_ci95_ms_per_1k": None,
        "slope_t": None,
        "context_points": int(occ.sum()),
        "fit_rule": FIT_RULE,
        **_share(att, occ, st.att_min, st.att_max),
    }
    lin = linear_fit(n, m[A_X], m[A_Y], m[A_XX], m[A_XY], m[A_YY])
    if lin is None:
        if n:
            out["fit_note"] = "one context length only: no fit"
        return out, pts
    span = (out["ctx_max"] or 0) - (out["ctx_min"] or 0)
    se = lin.slope_se
    t = lin.slope / se if se else None
    # x is in thousands of tokens and y in ms, so the slope is ms per 1k tokens.
    noise = f"±{1.96 * se:.3g} ms/1k tok" if se else "unknown noise"
    if n < FIT_MIN_STEPS:
        out["fit_note"] = f"only {int(n)} decode steps"
    elif span < FIT_MIN_SPAN or occ.sum() < FIT_MIN_POINTS:
        out["fit_note"] = (f"context range too narrow ({out['ctx_min']}-{out['ctx_max']} tokens in "
                           f"{int(occ.sum())} buckets; need {FIT_MIN_SPAN} tokens, {FIT_MIN_POINTS} buckets)")
    elif t is None or t < FIT_MIN_T:
        out["fit_note"] = f"no growth detectable above noise ({noise})"
    elif lin.intercept_se is not None and lin.intercept < -2.0 * lin.intercept_se:
        out["fit_note"] = "the line crosses below 0 at short context: growth is not linear here"
    elif lin.r2 is None or lin.r2 < FIT_MIN_R2:
        out["fit_note"] = f"weak fit (R² {lin.r2 or 0:.2f}): growth {lin.slope:.3g} {noise}"
    else:
        out["fit_ok"] = True
    out["slope_ms_per_1k"] = finite(lin.slope)
    out["slope_ci95_ms_per_1k"] = finite(1.96 * se) if se else None
    out["slope_t"] = finite(t) if t is not None else None
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
        # Curvature is claimed only where the context range could carry a line at all (the same steps,
        # span and buckets as the fit): over a narrow range a quadratic term is fitted noise.
        enough = n >= FIT_MIN_STEPS and span >= FIT_MIN_SPAN and occ.sum() >= FIT_MIN_POINTS
        out["superlinear"] = bool(
            enough and quad.c > 0 and quad.t_c is not None and quad.t_c >= SUPERLINEAR_T
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
