"""`llmtop attach URL [URL ...]`: viewer-side clients feeding the usual Pipeline/Aggregator.

Targets: llmtop://host:port (or tcp://, or host:port) is an llmtop agent and fills every pane;
http(s)://host:port[/metrics] is a server's Prometheus endpoint (vLLM, SGLang, TGI, llama.cpp) and fills the
request-level numbers. `target_rows(pipeline)` gives one row per target plus a total for the TUI.

`attach_once` (`llmtop attach --once`) collects for a while and reports; each row says whether its target
ever answered (`reached`) and how long it was disconnected after that (`disconnected_s`, `outages`), every
outage is a line of the report's top-level `warnings`, and `require_reached` raises `Unreached` (exit 2)
when no target answered at all. Remote text arrives with its control characters escaped (link.py).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from llmtop.attach.agent_client import CONNECTED, AgentCollector, NameStream, agent_url
from llmtop.attach.link import LinkLog, outage_lines, safe_text
from llmtop.attach.prometheus import PrometheusCollector, start_profile, stop_profile
from llmtop.collectors.pipeline import Pipeline
from llmtop.errors import LlmtopError
from llmtop.events import SourceInfo


@dataclass(slots=True)
class TargetRow:
    label: str
    kind: str  # "agent", a server flavor ("vllm", "llamacpp", ...), or "total"
    link: str  # connecting / connected / disconnected / refused
    error: str | None
    gen_tok_s: float
    gen_tokens: float  # lifetime total seen
    running: float
    waiting: float
    kv_cache: float  # 0..1, NaN when unknown
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p50_s: float
    itl_p95_s: float
    dropped: int  # events lost on the way (agent buffer + local queue)
    rejected: int  # malformed / oversized frames or bodies
    reached: bool = False  # the target answered at least once (a welcome, a /metrics body we could read)
    disconnected_s: float = 0.0  # seconds disconnected after the first answer (NaN on the total row)
    outages: list[dict[str, Any]] = field(default_factory=list)  # {start_s, duration_s, ongoing}

    @property
    def status(self) -> str:
        """The link as a report says it: never "connected" alone over an outage it lived through."""
        if self.kind == "total" or not self.outages:
            return self.link
        n = len(self.outages)
        return f"{self.link}; disconnected {self.disconnected_s:.1f} s" + (f" ({n} outages)" if n > 1 else "")


def build_attach_pipeline(
    urls: list[str],
    aggregator: Any,
    *,
    token: str | None = None,
    interval: float = 1.0,
    pipeline: Pipeline | None = None,
    backoff: tuple[float, float] | None = None,
) -> Pipeline:
    """A Pipeline (not started) with one collector per URL; its source is kept current as targets answer.
    `backoff`: (first, longest) wait between reconnect attempts (default: each collector's own)."""
    if not urls:
        raise LlmtopError("attach needs at least one URL")
    p = pipeline or Pipeline(aggregator)
    stream = NameStream()
    lock = threading.Lock()
    sources: dict[int, SourceInfo] = {}

    def make_on_source(i: int) -> Any:
        def on_source(src: SourceInfo) -> None:
            with lock:
                sources[i] = src
                p.set_source(_combined_source(sources, len(urls)))

        return on_source

    labels: set[str] = set()
    for i, url in enumerate(urls):
        u = url.strip()
        kw: dict[str, Any] = {"backoff": backoff} if backoff is not None else {}
        if agent_url(u):
            c: Any = AgentCollector(u, token, stream=stream, on_source=make_on_source(i), **kw)
        elif u.startswith(("http://", "https://")):
            c = PrometheusCollector(u, interval=interval, on_source=make_on_source(i), **kw)
        else:
            raise LlmtopError(
                f"cannot attach to {url!r}: use llmtop://host:port or http(s)://host:port/metrics"
            )
        if c.name in labels:
            raise LlmtopError(f"target given twice: {url}")
        labels.add(c.name)
        p.add(c)
    p.set_source(SourceInfo(kind="attach", extra={"urls": list(urls), "link": "connecting"}))
    p.add_note("link", lambda: link_summary(p))  # the header's error bar says when a target is down
    return p


def _combined_source(sources: dict[int, SourceInfo], n: int) -> SourceInfo:
    if n == 1 and 0 in sources:
        return sources[0]
    first = sources[min(sources)]
    extra = {"targets": [s.to_dict() for _, s in sorted(sources.items())]}
    missing = sorted({m for s in sources.values() for m in s.extra.get("missing", [])})
    if missing and all("missing" in s.extra for s in sources.values()):
        extra["missing"] = missing
    return SourceInfo(
        kind="attach",
        backend=first.backend,
        device=first.device,
        model=first.model,
        dtype=first.dtype,
        timing=first.timing,
        max_context=first.max_context,
        n_layers=first.n_layers,
        extra=extra,
    )


def _nan(d: dict[str, float], k: str) -> float:
    return float(d.get(k, math.nan))


def _link_fields(links: LinkLog) -> dict[str, Any]:
    now = time.monotonic()
    return {
        "reached": links.reached,
        "disconnected_s": links.disconnected_s(now),
        "outages": [asdict(o) for o in links.outages(now)],
    }


def target_rows(pipeline: Pipeline) -> list[TargetRow]:
    """One row per attach collector, then a "total" row (sums; percentiles are not summable: NaN)."""
    rows: list[TargetRow] = []
    for c in pipeline.collectors:
        if isinstance(c, AgentCollector):
            lat = pipeline.counters.latest().get(f"{c.label}:serve")
            g = lat.values if lat is not None else {}
            rows.append(
                TargetRow(
                    c.label,
                    "agent",
                    c.link,
                    c.link_error or c.error,
                    c.tok_per_s(),
                    float(c.gen_tokens),
                    _nan(g, "running"),
                    _nan(g, "waiting"),
                    _nan(g, "kv_cache"),
                    math.nan,
                    math.nan,
                    math.nan,
                    math.nan,
                    c.dropped_remote_total + c.dropped_events,
                    c.rejected_frames,
                    **_link_fields(c.links),
                )
            )
        elif isinstance(c, PrometheusCollector):
            v = c.latest
            rows.append(
                TargetRow(
                    c.label,
                    c.flavor or "metrics",
                    c.link,
                    c.link_error or c.error,
                    _nan(v, "gen_tok_s"),
                    _nan(v, "gen_tokens_total"),
                    _nan(v, "running"),
                    _nan(v, "waiting"),
                    _nan(v, "kv_cache"),
                    _nan(v, "ttft_p50_s"),
                    _nan(v, "ttft_p95_s"),
                    _nan(v, "itl_p50_s"),
                    _nan(v, "itl_p95_s"),
                    c.dropped_events,
                    c.rejected,
                    **_link_fields(c.links),
                )
            )
    if len(rows) > 1:

        def tot(attr: str) -> float:
            vals = [getattr(r, attr) for r in rows if not math.isnan(getattr(r, attr))]
            return float(sum(vals)) if vals else math.nan

        up = sum(r.link == CONNECTED for r in rows)
        rows.append(
            TargetRow(
                "total",
                "total",
                f"{up}/{len(rows)} connected",
                None,
                tot("gen_tok_s"),
                tot("gen_tokens"),
                tot("running"),
                tot("waiting"),
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                sum(r.dropped for r in rows),
                sum(r.rejected for r in rows),
                any(r.reached for r in rows),
                math.nan,
            )
        )
    return rows


def attach_report(
    pipeline: Pipeline, rows: list[TargetRow] | None = None, **snapshot_kw: Any
) -> dict[str, Any]:
    """The usual report dict plus an "attach" section with the target rows (NaN -> None for JSON; each
    with its `status`) and the targets' outages, refusals and never-reached ones in top-level `warnings`
    (the key report.render prints above the tables and keeps in JSON)."""
    rep = dict(pipeline.snapshot(**snapshot_kw).report)
    rows = target_rows(pipeline) if rows is None else rows
    rep["attach"] = [
        {**{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()},
         "status": r.status}
        for r in rows
    ]
    warnings = [str(w) for w in rep.get("warnings") or []]
    rep["warnings"] = list(dict.fromkeys(warnings + target_warnings(rows)))
    return rep


def target_warnings(rows: list[TargetRow]) -> list[str]:
    """One line per outage, per target that never answered, per target that sent what we refused."""
    out: list[str] = []
    for r in rows:
        if r.kind == "total":
            continue
        label = safe_text(r.label)
        if not r.reached:
            out.append(f"{label}: never reached ({safe_text(r.error or r.link)})")
        out += outage_lines(label, r.outages)
        if r.rejected:
            what = "frames" if r.kind == "agent" else "responses"
            out.append(f"{label}: {r.rejected} malformed or oversized {what} refused")
    return out


class Unreached(LlmtopError):
    """`llmtop attach --once` reached none of its targets (unreachable, refused, not a metrics endpoint)."""

    exit_code = 2


def require_reached(report: dict[str, Any], duration_s: float | None = None) -> None:
    """Raise Unreached unless some target of an attach report answered at least once."""
    rows = [r for r in report.get("attach") or [] if r.get("kind") != "total"]
    if any(r.get("reached") for r in rows):
        return
    during = f" in {duration_s:g} s" if duration_s is not None else ""
    why = "; ".join(f"{r.get('label')} ({r.get('error') or r.get('link') or 'no answer'})" for r in rows)
    raise Unreached(safe_text(f"no target answered{during}: {why or 'no targets'}"))


def attach_once(
    urls: list[str],
    aggregator: Any,
    *,
    token: str | None = None,
    duration_s: float = 3.0,
    interval: float = 1.0,
) -> dict[str, Any]:
    """`llmtop attach --once`: collect for `duration_s` (at least two scrapes, so rates exist), report.

    Reconnects are tried at least every second (an outage's measured length is off by less than that);
    the caller decides what a report whose targets never answered means (`require_reached`)."""
    p = build_attach_pipeline(urls, aggregator, token=token, interval=interval,
                              backoff=(0.2, max(1.0, min(interval, 5.0))))
    p.start()
    try:
        time.sleep(max(duration_s, 0.0))
        rows = target_rows(p)  # before stop(), which closes the connections
    finally:
        p.stop()
    return attach_report(p, rows)


def link_summary(pipeline: Pipeline) -> str | None:
    """One header line when some target is not connected, e.g. "disconnected: 127.0.0.1:7070 (retrying)"."""
    bad = [r for r in target_rows(pipeline) if r.kind != "total" and r.link != CONNECTED]
    if not bad:
        return None
    parts = []
    for r in bad:
        why = "retrying" if r.link in ("disconnected", "connecting") else (r.error or r.link)
        parts.append(f"{r.link}: {r.label} ({why})")
    return "; ".join(parts)


def profile_targets(pipeline: Pipeline) -> list[str]:
    """URLs of the vLLM/SGLang targets whose /start_profile the TUI key may call."""
    return [
        c.url
        for c in pipeline.collectors
        if isinstance(c, PrometheusCollector) and c.flavor in ("vllm", "sglang")
    ]


__all__ = [
    "TargetRow",
    "Unreached",
    "attach_once",
    "attach_report",
    "build_attach_pipeline",
    "link_summary",
    "profile_targets",
    "require_reached",
    "start_profile",
    "stop_profile",
    "target_rows",
    "target_warnings",
]
