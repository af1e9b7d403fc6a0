"""`llmtop attach URL [URL ...]`: viewer-side clients feeding the usual Pipeline/Aggregator.

Targets: llmtop://host:port (or tcp://, or host:port) is an llmtop agent and fills every pane;
http(s)://host:port[/metrics] is a server's Prometheus endpoint (vLLM, SGLang, TGI, llama.cpp) and fills the
request-level numbers. `target_rows(pipeline)` gives one row per target plus a total for the TUI.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from llmtop.attach.agent_client import CONNECTED, AgentCollector, NameStream, agent_url
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


def build_attach_pipeline(
    urls: list[str],
    aggregator: Any,
    *,
    token: str | None = None,
    interval: float = 1.0,
    pipeline: Pipeline | None = None,
) -> Pipeline:
    """A Pipeline (not started) with one collector per URL; its source is kept current as targets answer."""
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
        if agent_url(u):
            c: Any = AgentCollector(u, token, stream=stream, on_source=make_on_source(i))
        elif u.startswith(("http://", "https://")):
            c = PrometheusCollector(u, interval=interval, on_source=make_on_source(i))
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
            )
        )
    return rows


def attach_report(
    pipeline: Pipeline, rows: list[TargetRow] | None = None, **snapshot_kw: Any
) -> dict[str, Any]:
    """The usual report dict plus an "attach" section with the target rows (NaN -> None for JSON)."""
    rep = dict(pipeline.snapshot(**snapshot_kw).report)
    rows = target_rows(pipeline) if rows is None else rows
    rep["attach"] = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
        for r in rows
    ]
    return rep


def attach_once(
    urls: list[str],
    aggregator: Any,
    *,
    token: str | None = None,
    duration_s: float = 3.0,
    interval: float = 1.0,
) -> dict[str, Any]:
    """`llmtop attach --once`: collect for `duration_s` (at least two scrapes, so rates exist), report."""
    p = build_attach_pipeline(urls, aggregator, token=token, interval=interval)
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
    "attach_once",
    "attach_report",
    "build_attach_pipeline",
    "link_summary",
    "profile_targets",
    "start_profile",
    "stop_profile",
    "target_rows",
]
