"""The one place that knows where each pane's numbers live in a Snapshot (and their formats).

Panes call these accessors instead of digging into `Snapshot.report` / `Snapshot.series`
themselves, so the path event -> Aggregator -> Snapshot -> pane has a single, testable seam.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The number formats are llmtop.numfmt's, shared with the report; re-exported here for the panes.
from llmtop.numfmt import DASH as DASH
from llmtop.numfmt import adapter_line as adapter_line
from llmtop.numfmt import fmt_bytes as fmt_bytes
from llmtop.numfmt import fmt_count as fmt_count
from llmtop.numfmt import fmt_duration_ms as fmt_duration_ms
from llmtop.numfmt import fmt_ms as fmt_ms
from llmtop.numfmt import fmt_pct as fmt_pct
from llmtop.numfmt import fmt_rate as fmt_rate
from llmtop.numfmt import num as num


def shorten(s: str, width: int) -> str:
    """Trim from the middle so both the start and the distinctive end of a name stay visible."""
    if width <= 0:
        return ""
    if len(s) <= width:
        return s
    if width <= 3:
        return s[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return s[:head] + "…" + s[len(s) - tail :]


# -- Snapshot accessors ---------------------------------------------------------------------------


def report(snapshot: Any) -> Mapping[str, Any]:
    r = getattr(snapshot, "report", None)
    return r if isinstance(r, Mapping) else {}


def section(snapshot: Any, key: str) -> Mapping[str, Any]:
    v = report(snapshot).get(key)
    return v if isinstance(v, Mapping) else {}


def rows(snapshot: Any, key: str) -> list[Mapping[str, Any]]:
    v = report(snapshot).get(key)
    return [r for r in v if isinstance(r, Mapping)] if isinstance(v, Sequence) else []


def _series_obj(snapshot: Any) -> Any:
    return getattr(snapshot, "series", None)


def _field(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if obj is not None and not isinstance(obj, Mapping) and hasattr(obj, n):
            return getattr(obj, n)
    return None


def _pairs(v: Any) -> tuple[list[float], list[float]]:
    """Accept (xs, ys), a list of (x, y) pairs, or an (N, 2) array."""
    if v is None:
        return [], []
    if isinstance(v, tuple) and len(v) == 2 and all(hasattr(p, "__len__") for p in v):
        xs, ys = v
        return [float(x) for x in xs], [float(y) for y in ys]
    try:
        pts = [(float(p[0]), float(p[1])) for p in v]
    except (TypeError, IndexError, ValueError):
        return [], []
    return [p[0] for p in pts], [p[1] for p in pts]


def token_rate_series(snapshot: Any) -> tuple[list[float], list[float]]:
    """(seconds, decode tok/s) over time."""
    s = _series_obj(snapshot)
    t = _field(s, "tok_s_t", "tok_s_time_s", "t_s")
    v = _field(s, "tok_s")
    if t is not None and v is not None and not isinstance(v, Mapping):
        try:
            return [float(x) for x in t], [float(y) for y in v]
        except (TypeError, ValueError):
            return [], []
    return _pairs(_field(s, "tok_s", "tok_rate", "tokens"))


def attention_points(snapshot: Any) -> tuple[list[float], list[float]]:
    """(context length, attention ms per decode step) points."""
    s = _series_obj(snapshot)
    ctx = _field(s, "attention_ctx")
    ms = _field(s, "attention_ms")
    if ctx is not None and ms is not None:
        try:
            return [float(x) for x in ctx], [float(y) for y in ms]
        except (TypeError, ValueError):
            return [], []
    return _pairs(_field(s, "attention", "attention_points"))


# What a source without events cannot fill: the kernel, layer and attention panes (attach/metrics.py's
# ALWAYS_MISSING, which every /metrics target lists under SourceInfo.extra["missing"]).
OP_LEVEL = ("kernels", "layers", "attention scaling", "roofline")


def source_missing(snapshot: Any) -> list[str]:
    """The op-level numbers the source says it cannot provide (a /metrics-only attach); [] otherwise."""
    extra = section(snapshot, "source").get("extra")
    missing = extra.get("missing") if isinstance(extra, Mapping) else None
    if not isinstance(missing, Sequence) or isinstance(missing, str):
        return []
    return [m for m in OP_LEVEL if m in missing]


def token_context(tokens: Mapping[str, Any]) -> float | None:
    """Current context length (tokens) from the report's tokens section."""
    return num(_field(tokens, "context", "ctx", "context_len"))


def token_step(tokens: Mapping[str, Any]) -> float | None:
    """Decode steps seen so far."""
    return num(_field(tokens, "steps", "decode_steps", "step"))


# -- kernel detail (Snapshot.kernel_detail(name)) ---------------------------------------------------


def detail_shapes(detail: Mapping[str, Any]) -> list[tuple[str, float, float | None]]:
    """(shape label, count, mean ms) per distinct (m, n, k), most frequent first."""
    out: list[tuple[str, float, float | None]] = []
    several = len({s.get("kernel") for s in detail.get("shapes") or [] if isinstance(s, Mapping)}) > 1
    for s in detail.get("shapes") or []:
        if not isinstance(s, Mapping):
            continue
        dims = [int(num(s.get(d)) or 0) for d in ("m", "n", "k")]
        # The stats keep a bounded number of distinct shapes per kernel; the rest is lumped together.
        other = s.get("other") or min(dims) < 0
        label = "other shapes" if other else " × ".join(str(d) for d in dims)
        if several and s.get("kernel"):
            label = f"{s['kernel']}  {label}"
        out.append((label, num(s.get("count")) or 0.0, num(s.get("mean_ms"))))
    return sorted(out, key=lambda t: (-t[1], t[0]))


def detail_histogram(detail: Mapping[str, Any]) -> list[tuple[float, float, float]]:
    """(low ms, high ms, count) per duration bucket."""
    dist = detail.get("histogram") or {}
    if not isinstance(dist, Mapping):
        return []
    edges, counts = dist.get("edges_ms") or [], dist.get("counts") or []
    if len(edges) != len(counts) + 1:
        return []
    return [(float(edges[i]), float(edges[i + 1]), float(c)) for i, c in enumerate(counts)]


def detail_layers(detail: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(layer label, ms per decode step) for the layers where the row's kernels ran."""
    out: list[tuple[int, str, float]] = []
    for r in detail.get("layers") or []:
        if not isinstance(r, Mapping):
            continue
        ms = num(r.get("ms_per_step"))
        if ms is None:
            ms = num(r.get("mean_ms")) or 0.0
        layer = r.get("layer")
        if layer is None:
            out.append((-1, "outside layers", ms))
        else:
            out.append((int(layer), f"L{int(layer)}", ms))
    return [(label, ms) for _, label, ms in sorted(out)]


def collector_cost(snapshot: Any) -> tuple[float | None, str]:
    """(total profiling CPU % of one core, names of collectors falling behind) from the report."""
    cols = report(snapshot).get("collectors")
    if not isinstance(cols, Mapping) or not cols:
        return None, ""
    total = sum(num(c.get("cpu_pct")) or 0.0 for c in cols.values() if isinstance(c, Mapping))
    behind = [str(n) for n, c in cols.items() if isinstance(c, Mapping) and c.get("behind")]
    return total, ", ".join(sorted(behind))
