"""Snapshot: one finished, immutable view of the statistics; `report` is the JSON of `llmtop report`.

Every key of `Snapshot.report` is documented in docs/REPORT.md. Numbers are plain floats/ints (ms
for durations), None where a value cannot be computed (no data, undefined fit) - never NaN/inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, OP_CLASSES, PHASES, track_label
from llmtop.stats.buckets import ALPHA, N_BUCKETS, REPRESENTATIVE, quantile_ranks
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
TABLE_QUANTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))
DETAIL_QUANTILES = (
    ("p50_ms", 0.50), ("p90_ms", 0.90), ("p95_ms", 0.95), ("p99_ms", 0.99), ("p999_ms", 0.999),
)
OUTLIER_MADS = 3.0  # a layer is an outlier above median + 3 scaled MADs ...
OUTLIER_MIN_RATIO = 1.10  # ... and at least 10 % above the median layer
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
SUPERLINEAR_T = 3.0  # quadratic term significant at |t| >= 3 ...
SUPERLINEAR_SHARE = 0.05  # ... and worth >= 5 % of the fitted attention at the largest context seen
# A projection far beyond the measured contexts is only shown when the fit can carry it.
FIT_MIN_STEPS = 8
FIT_MIN_SPAN = 64  # tokens of context between the shortest and longest decode step
FIT_MIN_R2 = 0.5
HIST_BINS = 24
_PLAIN_ALREADY = frozenset({"kernels", "layers"})  # sections built from tolist() values (finite, checked)


def _f(x: Any) -> float | None:
    """A finite Python float, or None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _plain(x: Any) -> Any:
    """Plain JSON types only: numpy scalars -> int/float/bool, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _f(x)
    return x


def _ms(ns: Any) -> float | None:
    v = _f(ns)
    return None if v is None else v / 1e6


def _pct(a: float, b: float) -> float | None:
    return 100.0 * a / b if b > 0 else None


# -- filter ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Filter:
    """Parsed `filter`: whitespace-separated terms, all of which must match.

    `phase:prefill|decode`, `layer:N|none`, `class:NAME` (alias `op:`) select by field; any other
    term is a case-insensitive substring of the kernel name.
    """

    text: tuple[str, ...] = ()
    phase: int | None = None
    layer: int | None = None
    op_class: int | None = None

    def key_mask(self, fz: Frozen) -> np.ndarray:
        m = np.ones(len(fz.key_name), bool)
        if self.phase is not None:
            m &= fz.key_phase == self.phase
        if self.layer is not None:
            m &= fz.key_layer == self.layer
        if self.op_class is not None:
            m &= fz.key_opc == self.op_class
        if self.text:
            ok = np.array([all(t in n.lower() for t in self.text) for n in fz.names], bool)
            m &= ok[fz.key_name] if len(ok) else False
        return m


def parse_filter(text: str) -> Filter:
    words: list[str] = []
    phase = layer = opc = None
    for term in (text or "").split():
        field_, sep, val = term.partition(":")
        f, v = field_.lower(), val.lower()
        if sep and f == "phase":
            if v not in PHASES:
                raise LlmtopError(f"bad filter term {term!r}: phase is prefill or decode")
            phase = PHASES.index(v)
        elif sep and f == "layer":
            if v == "none":
                layer = NO_LAYER
            else:
                try:
                    layer = int(v)
                except ValueError:
                    raise LlmtopError(f"bad filter term {term!r}: layer must be an integer or none") from None
        elif sep and f in ("class", "op"):
            if v not in OP_CLASSES:
                raise LlmtopError(f"bad filter term {term!r}: class is one of {', '.join(OP_CLASSES)}")
            opc = OP_CLASSES.index(v)
        else:
            words.append(term.lower())
    return Filter(tuple(words), phase, layer, opc)


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
        return _plain(_kernel_detail(self._fz, name))


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
        "kernels": _kernel_rows(fz, kmask),
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
    report = {k: v if k in _PLAIN_ALREADY else _plain(v) for k, v in report.items()}
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


# -- kernels --------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Groups:
    keys: np.ndarray  # key ids in the selection
    inv: np.ndarray  # group index of each selected key
    values: np.ndarray  # group value (name id / op class / layer) per group
    count: np.ndarray
    total: np.ndarray
    sumsq: np.ndarray
    mn: np.ndarray
    mx: np.ndarray
    group: str | None = None  # the grouping `values` are in (None: the snapshot's group-by)


def _group_of(fz: Frozen, group: str, keys: np.ndarray) -> np.ndarray:
    if group == "kernel":
        return fz.key_name[keys]
    if group == "op_class":
        return fz.key_opc[keys]
    return fz.key_layer[keys]


def _groups(fz: Frozen, kmask: np.ndarray, group: str) -> _Groups:
    st = fz.store
    nk = len(fz.key_name)
    kc = st.kc[:nk]
    keys = np.flatnonzero(kmask & (kc > 0))
    values, inv = np.unique(_group_of(fz, group, keys), return_inverse=True)
    g = len(values)
    mn = np.full(g, np.inf)
    mx = np.full(g, -np.inf)
    np.minimum.at(mn, inv, st.kmin[keys])
    np.maximum.at(mx, inv, st.kmax[keys])
    return _Groups(
        keys=keys, inv=inv, values=values,
        count=np.bincount(inv, weights=kc[keys], minlength=g).astype(np.int64),
        total=np.bincount(inv, weights=st.ks[keys], minlength=g),
        sumsq=np.bincount(inv, weights=st.kq[keys], minlength=g),
        mn=mn, mx=mx,
    )


_GV_OFFSET = 1 << 15  # group values (layers can be negative: NO_LAYER) shifted to sort as non-negative


def _cell_order(fz: Frozen, group: str) -> tuple[np.ndarray, np.ndarray]:
    """All cells sorted by (group value, bucket): (sorted composite keys, cell ids in that order).

    Composite key = (group value + offset) * N_BUCKETS + bucket. Cells are only ever appended and never
    change key or bucket, so the order is cached (shared across snapshots) and new cells are merged
    in with one searchsorted + insert: no full sort per snapshot, even while new cells keep appearing.
    """
    nc = len(fz.cell_key)
    hit = fz.cell_cache.get(group)
    if hit is not None and hit[0] == nc:
        return hit[1], hit[2]
    n0 = hit[0] if hit is not None and hit[0] < nc else 0
    new = np.arange(n0, nc)
    ck = (_group_of(fz, group, fz.cell_key[new]) + _GV_OFFSET) * N_BUCKETS + fz.cell_bucket[new]
    o = np.argsort(ck, kind="stable")
    ck, new = ck[o], new[o]
    if n0 and hit is not None:
        at = np.searchsorted(hit[1], ck)
        sk, order = np.insert(hit[1], at, ck), np.insert(hit[2], at, new)
    else:
        sk, order = ck, new
    fz.cell_cache[group] = (nc, sk, order)  # replaced whole: a concurrent reader keeps its own arrays
    return sk, order


def _quantiles(fz: Frozen, gr: _Groups, qs: tuple[tuple[str, float], ...]) -> dict[str, np.ndarray]:
    """Per-group quantiles (ns) from the merged bucket counts (see buckets.py for the error bound).

    Vectorized over all groups at once: cells ordered by (group, bucket), counts of unselected keys
    zeroed, one cumulative sum; each group's rank-r cell is then one searchsorted into that sum.
    """
    g = len(gr.values)
    out = {k: np.zeros(g) for k, _ in qs}
    if g == 0:
        return out
    h = fz.store.hist
    assert h is not None
    sk, order = _cell_order(fz, fz.group if gr.group is None else gr.group)
    sel = np.zeros(len(fz.key_name), np.int64)
    sel[gr.keys] = 1
    cum = np.cumsum(h[order] * sel[fz.cell_key[order]])
    first = np.searchsorted(sk, (gr.values + _GV_OFFSET) * N_BUCKETS, side="left")
    base = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0)
    ranks = np.stack([quantile_ranks(q, gr.count) for _, q in qs])
    pos = np.minimum(np.searchsorted(cum, base + ranks, side="left"), len(cum) - 1)
    vals = np.clip(REPRESENTATIVE[sk[pos] % N_BUCKETS], gr.mn, gr.mx)
    for i, (k, _) in enumerate(qs):
        out[k] = vals[i]
    return out


def _std(count: np.ndarray, total: np.ndarray, sumsq: np.ndarray) -> np.ndarray:
    """Sample standard deviation (ddof=1, as nsys' StdDev); 0 for a single event."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (sumsq - total * total / count) / (count - 1)
    return np.where(count > 1, np.sqrt(np.maximum(var, 0.0)), 0.0)


def _group_label(fz: Frozen, group: str, v: int) -> str:
    if group == "kernel":
        return fz.names[v]
    if group == "op_class":
        return OP_CLASSES[v] if 0 <= v < len(OP_CLASSES) else f"class {v}"
    return "no layer" if v == NO_LAYER else f"layer {v}"


def _kernel_rows(fz: Frozen, kmask: np.ndarray) -> list[dict[str, Any]]:
    """The kernels table. Columns are computed as arrays and turned into plain Python values with one
    tolist() each; building 300 dicts from those is the only per-row Python work."""
    gr = _groups(fz, kmask, fz.group)
    g = len(gr.values)
    if not g:
        return []
    qv = _quantiles(fz, gr, TABLE_QUANTILES)
    std = _std(gr.count, gr.total, gr.sumsq)
    # op class per group: the class of the group's keys (weighted by time when they differ)
    opc_t = np.zeros((g, len(OP_CLASSES) + 1))
    np.add.at(opc_t, (gr.inv, np.minimum(fz.key_opc[gr.keys], len(OP_CLASSES))), fz.store.ks[gr.keys] + 1.0)
    n_cls = (opc_t > 0).sum(axis=1)
    ci = opc_t.argmax(axis=1)
    cls_names = [*OP_CLASSES, "other"]
    opc = ["mixed" if n > 1 else cls_names[c] for n, c in zip(n_cls.tolist(), ci.tolist(), strict=True)]
    grand = float(gr.total.sum())
    total = gr.total / 1e6
    cnt = gr.count
    cols = np.stack([total, total / cnt, gr.mn / 1e6, *(qv[k] / 1e6 for k, _ in TABLE_QUANTILES),
                     gr.mx / 1e6, std / 1e6, 100.0 * gr.total / grand if grand > 0 else np.zeros(g)])
    if not np.isfinite(cols).all():  # cannot happen for groups with events; keep the JSON contract anyway
        cols = np.where(np.isfinite(cols), cols, np.nan)
    fcols = cols.tolist()
    values = gr.values.tolist()
    names = [_group_label(fz, fz.group, v) for v in values]
    qkeys = [k for k, _ in TABLE_QUANTILES]
    rows: list[dict[str, Any]] = []
    for i, (name, c, tot, mean, mn, q50, q95, q99, mx, sd, pct) in enumerate(
        zip(names, cnt.tolist(), *fcols, strict=True)
    ):
        row: dict[str, Any] = {
            "name": name, "op_class": opc[i], "count": c, "total_ms": tot, "mean_ms": mean, "min_ms": mn,
            qkeys[0]: q50, qkeys[1]: q95, qkeys[2]: q99, "max_ms": mx, "std_ms": sd, "pct": pct,
            "cum_pct": 0.0,
        }
        if fz.group == "layer":
            row["layer"] = None if values[i] == NO_LAYER else values[i]
        rows.append(row)
    skey = {"total": "total_ms", "count": "count", "mean": "mean_ms", "p95": "p95_ms", "max": "max_ms"}
    rows.sort(key=lambda r: r["name"])  # ties keep a stable, alphabetical order
    if fz.sort != "name":
        rows.sort(key=lambda r: r[skey[fz.sort]], reverse=True)
    cum = 0.0
    for r in rows:
        cum += r["pct"]
        r["cum_pct"] = min(cum, 100.0)
    return _plain(rows) if np.isnan(cols).any() else rows


# -- layers ---------------------------------------------------------------------------------------
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
        "ttft_ms_mean": _ms(pre[S_WALL] / pre[S_N]) if pre[S_N] else None,
        "tpot_ms_p50": _step_quantile(fz, 1, 0.5),
        "tpot_ms_p95": _step_quantile(fz, 1, 0.95),
        "tpot_ms_mean": _ms(dec[S_WALL] / dec[S_N]) if dec[S_N] else None,
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
        host_pct = _pct(r[S_HOST], tw)
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
        "drift_pct": _pct(g.last - g.first, g.first) if g.first > 0 else None,
        "slope_us_per_token": _f(fit.slope / 1e3) if fit else None,
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
    out["slope_us_per_1k"] = _f(lin.slope * 1000.0)
    out["intercept_ms"] = _f(lin.intercept)
    out["r2"] = _f(lin.r2)
    pts = (pts[0], pts[1], pts[2], (float(lin.intercept), float(lin.slope) / 1000.0))
    quad = quadratic_fit(n, m[A_X], m[A_Y], m[A_XX], m[A_XY], m[A_YY], m[A_X3], m[A_X4], m[A_X2Y])
    xmax = float(out["ctx_max"] or 0) / 1000.0
    if quad is not None:
        out["quadratic"] = {
            "a_ms": _f(quad.a), "b_us_per_1k": _f(quad.b * 1000.0), "c_us_per_1k2": _f(quad.c * 1000.0),
            "t_stat": _f(quad.t_c),
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
        proj: dict[str, Any] = {"ctx": max_ctx, "attention_ms": _f(att_proj), "step_ms": None,
                                "pct_of_step": None}
        if quad is not None:
            xm = max_ctx / 1000.0
            proj["attention_ms_quadratic"] = _f(quad.a + quad.b * xm + quad.c * xm * xm)
        if not out["fit_ok"]:  # extrapolating a fit that cannot carry it would print nonsense
            proj["attention_ms"] = None
            proj.pop("attention_ms_quadratic", None)
        elif step_now is not None and out["mean_ms_per_step"] is not None:
            step_proj = step_now - out["mean_ms_per_step"] + att_proj
            proj["step_ms"] = _f(step_proj)
            proj["pct_of_step"] = _f(_pct(att_proj, step_proj)) if att_proj >= 0 else None
        out["projection"] = proj
    return out, pts


# -- kernel detail --------------------------------------------------------------------------------
def _kernel_detail(fz: Frozen, name: str) -> dict[str, Any]:
    group = fz.group
    if group == "kernel":
        try:
            v = fz.names.index(name)
        except ValueError:
            raise LlmtopError(f"no kernel named {name!r}") from None
    elif group == "op_class":
        if name not in OP_CLASSES:
            raise LlmtopError(f"no op class named {name!r}")
        v = OP_CLASSES.index(name)
    elif name == "no layer":
        v = NO_LAYER
    else:
        try:
            v = int(name.removeprefix("layer").strip())
        except ValueError:
            raise LlmtopError(f"no layer named {name!r}") from None
    st = fz.store
    nk = len(fz.key_name)
    kmask = parse_filter(fz.filter).key_mask(fz)
    kmask &= _group_of(fz, group, np.arange(nk)) == v
    keys = np.flatnonzero(kmask & (st.kc[:nk] > 0))
    if not keys.size:
        raise LlmtopError(f"{name!r} has no events in this view")
    one = _Groups(keys=keys, inv=np.zeros(len(keys), np.int64), values=np.array([v]), group=group,
                  count=np.array([int(st.kc[keys].sum())]), total=np.array([float(st.ks[keys].sum())]),
                  sumsq=np.array([float(st.kq[keys].sum())]), mn=np.array([float(st.kmin[keys].min())]),
                  mx=np.array([float(st.kmax[keys].max())]))
    qv = _quantiles(fz, one, DETAIL_QUANTILES)
    c = int(one.count[0])
    out: dict[str, Any] = {
        "name": name,
        "group": group,
        "mode": fz.mode,
        "count": c,
        "total_ms": float(one.total[0]) / 1e6,
        "mean_ms": float(one.total[0]) / c / 1e6,
        "min_ms": float(one.mn[0]) / 1e6,
        **{k: float(qv[k][0]) / 1e6 for k, _ in DETAIL_QUANTILES},
        "max_ms": float(one.mx[0]) / 1e6,
        "std_ms": float(_std(one.count, one.total, one.sumsq)[0]) / 1e6,
        "quantile_rel_error": ALPHA,
    }
    phases = []
    for p, pname in enumerate(PHASES):
        pk = keys[fz.key_phase[keys] == p]
        if len(pk):
            cnt, tot = int(st.kc[pk].sum()), float(st.ks[pk].sum())
            phases.append({"phase": pname, "count": cnt, "total_ms": tot / 1e6, "mean_ms": tot / cnt / 1e6,
                           "steps": int(st.ksteps[p]),
                           "ms_per_step": tot / st.ksteps[p] / 1e6 if st.ksteps[p] else None})
    out["phases"] = phases
    layers, inv = np.unique(fz.key_layer[keys], return_inverse=True)
    cnt = np.bincount(inv, weights=st.kc[keys])
    tot = np.bincount(inv, weights=st.ks[keys])
    dec = fz.key_phase[keys] == 1
    dtot = np.bincount(inv[dec], weights=st.ks[keys][dec], minlength=len(layers))
    dsteps = int(st.ksteps[1])
    out["layers"] = [
        {"layer": None if lv == NO_LAYER else lv, "count": int(cnt[i]), "total_ms": tot[i] / 1e6,
         "mean_ms": tot[i] / cnt[i] / 1e6, "ms_per_step": dtot[i] / dsteps / 1e6 if dsteps else None}
        for i, lv in enumerate(layers.tolist())
    ]
    names = np.unique(fz.key_name[keys]).tolist()
    shape_rows = fz.shape_rows()
    shapes = []
    for nid in names:
        for m, n, k, sc, ss in shape_rows.get(nid, []):
            shapes.append({"kernel": fz.names[nid], "m": m, "n": n, "k": k, "other": m < 0, "count": sc,
                           "total_ms": ss / 1e6, "mean_ms": ss / sc / 1e6})
    shapes.sort(key=lambda s: (-s["count"], s["kernel"], s["m"], s["n"], s["k"]))
    out["shapes"] = shapes
    out["histogram"] = _histogram(fz, keys, float(one.mn[0]), float(one.mx[0]))
    return out


def _histogram(fz: Frozen, keys: np.ndarray, lo: float, hi: float) -> dict[str, list[float]]:
    """Counts over up to 24 log-spaced bins between the exact min and max (ms)."""
    h = fz.store.hist
    assert h is not None
    nc = len(fz.cell_key)
    sel = np.zeros(len(fz.key_name), bool)
    sel[keys] = True
    cells = np.flatnonzero((h[:nc] > 0) & sel[fz.cell_key])
    vals = np.clip(REPRESENTATIVE[fz.cell_bucket[cells]], lo, hi)
    w = h[cells].astype(np.float64)
    if hi <= lo:
        edges = np.array([lo, hi])
    elif lo > 0:
        edges = np.geomspace(lo, hi, HIST_BINS + 1)
    else:
        edges = np.linspace(lo, hi, HIST_BINS + 1)
    if hi <= lo:
        counts = np.array([w.sum()])
    else:
        counts, _ = np.histogram(vals, bins=edges, weights=w)
    return {"edges_ms": (edges / 1e6).tolist(), "counts": [int(c) for c in counts]}
