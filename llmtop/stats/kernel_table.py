"""The kernel table and the kernel detail of a snapshot: rows per kernel, op class or layer, with quantiles
from the duration-bucket cells (≤ 1 % relative error), and one row's shapes, layers and histogram."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, OP_CLASSES, PHASES
from llmtop.stats.buckets import ALPHA, N_BUCKETS, REPRESENTATIVE, quantile_ranks
from llmtop.stats.filter import parse_filter
from llmtop.stats.frozen import Frozen
from llmtop.stats.plain import plain
from llmtop.stats.roofline import device_peak, roofline_columns

TABLE_QUANTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))
DETAIL_QUANTILES = (
    ("p50_ms", 0.50), ("p90_ms", 0.90), ("p95_ms", 0.95), ("p99_ms", 0.99), ("p999_ms", 0.999),
)
HIST_BINS = 24


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


def kernel_rows(fz: Frozen, kmask: np.ndarray) -> list[dict[str, Any]]:
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
    st = fz.store
    roof = roofline_columns(*(np.bincount(gr.inv, weights=a[gr.keys], minlength=g)
                              for a in (st.kel, st.kfl, st.ksh, st.kshn)), fz.source)
    rows: list[dict[str, Any]] = []
    for i, (name, c, tot, mean, mn, q50, q95, q99, mx, sd, pct) in enumerate(
        zip(names, cnt.tolist(), *fcols, strict=True)
    ):
        row: dict[str, Any] = {
            "name": name, "op_class": opc[i], "count": c, "total_ms": tot, "mean_ms": mean, "min_ms": mn,
            qkeys[0]: q50, qkeys[1]: q95, qkeys[2]: q99, "max_ms": mx, "std_ms": sd, "pct": pct,
            "cum_pct": 0.0,
            **roof[i],
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
    return plain(rows) if np.isnan(cols).any() else rows


# -- layers ---------------------------------------------------------------------------------------


def kernel_detail(fz: Frozen, name: str) -> dict[str, Any]:
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
    sums = (np.array([a[keys].sum()], np.float64) for a in (st.kel, st.kfl, st.ksh, st.kshn))
    (roof,) = roofline_columns(*sums, fz.source)
    out.update(roof)
    out["device_peak"] = device_peak(fz.source)
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


def group_buckets(fz: Frozen, kmask: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per row of the kernels table (the snapshot's group-by, its filter): the duration buckets its events
    fell in and their counts, ascending by bucket. What a rank test between two snapshots needs: every
    event's duration to within the buckets' 1 %."""
    gr = _groups(fz, kmask, fz.group)
    if not len(gr.values):
        return {}
    h = fz.store.hist
    assert h is not None
    nc = len(fz.cell_key)
    sel = np.full(len(fz.key_name), -1, np.int64)
    sel[gr.keys] = gr.inv
    cg = sel[fz.cell_key[:nc]]
    keep = (cg >= 0) & (h[:nc] > 0)
    comp = cg[keep] * N_BUCKETS + fz.cell_bucket[:nc][keep]
    u, inv = np.unique(comp, return_inverse=True)
    cnt = np.bincount(inv, weights=h[:nc][keep]).astype(np.int64)
    grp, bkt = u // N_BUCKETS, u % N_BUCKETS
    cuts = np.searchsorted(grp, np.arange(len(gr.values) + 1))
    return {_group_label(fz, fz.group, v): (bkt[cuts[i]:cuts[i + 1]], cnt[cuts[i]:cuts[i + 1]])
            for i, v in enumerate(gr.values.tolist())}


__all__ = ["DETAIL_QUANTILES", "HIST_BINS", "TABLE_QUANTILES", "group_buckets", "kernel_detail",
           "kernel_rows"]
