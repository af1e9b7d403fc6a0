"""`llmtop attach URL [URL ...]`: viewer-side clients feeding the usual Pipeline/Aggregator.

Targets: llmtop://host:port (or tcp://, or host:port) is an llmtop agent and fills every pane;
http(s)://host:port[/metrics] is a server's Prometheus endpoint (vLLM, SGLang, TGI, llama.cpp) and fills the
request-level numbers. `target_rows(pipeline)` gives one row per target plus a total; `server_table`
(registered on the pipeline as its "targets" table) is the same rows as plain dicts for the TUI's
Servers pane, with the numbers of a target that is not connected blanked (never shown as current).
`AttachFleet` owns the set of targets (the command line's, plus a `--targets` file's, which targets.py
re-reads when it changes); `FleetSampler` keeps a history of the total row for its sparklines.

`attach_once` (`llmtop attach --once`) collects for a while and reports; each row says whether its target
ever answered (`reached`) and how long it was disconnected after that (`disconnected_s`, `outages`), every
outage is a line of the report's top-level `warnings`, and `require_reached` raises `Unreached` (exit 2)
when no target answered at all. Remote text arrives with its control characters escaped (link.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llmtop.attach.agent_client import CONNECTED, AgentCollector, NameStream, agent_url
from llmtop.attach.link import LinkLog, outage_lines, safe_text
from llmtop.attach.metrics import Histogram
from llmtop.attach.prometheus import PrometheusCollector, aligned_wait, start_profile, stop_profile
from llmtop.collectors.base import Collector
from llmtop.collectors.pipeline import Pipeline
from llmtop.errors import LlmtopError
from llmtop.events import CounterSample, SourceInfo


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
    model: str = ""  # served model name(s), escaped
    prompt_tok_s: float = math.nan
    e2e_p50_s: float = math.nan
    req_s: float = math.nan  # finished requests per second
    prefix_hit: float = math.nan  # 0..1: prompt tokens found in the prefix cache over the window
    preemptions: float = math.nan  # in the window (percentile window of the scrape, default 30 s)
    aborted: float = math.nan  # requests the server aborted (client gone) in the window
    failed: float = math.nan  # requests that ended in an error in the window
    window_s: float = math.nan  # how much time the window numbers cover now

    @property
    def status(self) -> str:
        """The link as a report says it: never "connected" alone over an outage it lived through."""
        if self.kind == "total" or not self.outages:
            return self.link
        n = len(self.outages)
        return f"{self.link}; disconnected {self.disconnected_s:.1f} s" + (f" ({n} outages)" if n > 1 else "")


class AttachFleet:
    """The attach pipeline's targets: makes their collectors, keeps the combined source current as they
    answer, and adds or removes the targets a `--targets` file lists (command-line URLs always stay)."""

    def __init__(self, pipeline: Pipeline, *, token: str | None, interval: float,
                 backoff: tuple[float, float] | None, own_window_s: float | None = None) -> None:
        self.pipeline = pipeline
        # With several targets each agent also folds its own events (`AgentCollector.own`) over this
        # window, so a drill-in shows that target alone on every pane; None: one target, no second fold.
        self.own_window_s = own_window_s
        self.token = token
        self.interval = interval
        self.backoff = backoff
        self.stream = NameStream()  # one name table across every agent target
        self._lock = threading.Lock()
        self._sources: dict[str, SourceInfo] = {}  # collector name -> what that target said it is
        self._fixed: list[str] = []  # collector names from the command line
        self._from_file: dict[str, Any] = {}  # collector name -> collector, for targets of the file

    def make(self, url: str) -> Any:
        """A collector for one URL (not added); LlmtopError for a URL that is neither kind."""
        u = url.strip()
        kw: dict[str, Any] = {"backoff": self.backoff} if self.backoff is not None else {}
        if agent_url(u):
            c: Any = AgentCollector(u, self.token, stream=self.stream, **kw)
            if self.own_window_s is not None:
                from llmtop.stats.aggregator import Aggregator

                c.own = Aggregator(window_s=self.own_window_s)
        elif u.startswith(("http://", "https://")):
            c = PrometheusCollector(u, interval=self.interval, **kw)
        else:
            raise LlmtopError(f"cannot attach to {url!r}: use llmtop://host:port or http(s)://host:port/metrics")
        name = c.name
        c.on_source = lambda src: self._on_source(name, src)
        return c

    def names(self) -> list[str]:
        return [c.name for c in _attach_collectors(self.pipeline)]

    def add_fixed(self, url: str) -> None:
        c = self.make(url)
        if c.name in self.names():
            raise LlmtopError(f"target given twice: {url}")
        self._fixed.append(c.name)
        self.pipeline.add(c)

    def set_file_targets(self, urls: Sequence[str]) -> None:
        """Make the file's targets exactly `urls` (besides the command line's): start the new ones, stop
        the ones no longer listed. A URL naming a target already attached is not attached twice."""
        want: dict[str, str] = {}
        for url in urls:
            try:
                c = self.make(url)
            except LlmtopError:
                continue  # read_targets already refused such lines
            want.setdefault(c.name, url)
        for name in [n for n in self._from_file if n not in want]:
            c = self._from_file.pop(name)
            self.pipeline.remove(c)
            with self._lock:
                self._sources.pop(name, None)
                self._publish()
        have = set(self.names())
        for name, url in want.items():
            if name not in have:
                c = self.make(url)
                self._from_file[name] = c
                self.pipeline.add(c)

    def _on_source(self, name: str, src: SourceInfo) -> None:
        with self._lock:
            self._sources[name] = src
            self._publish()

    def _publish(self) -> None:
        order = self.names()
        srcs = [self._sources[n] for n in order if n in self._sources]
        if srcs:
            self.pipeline.set_source(_combined_source(srcs, len(order)))


TOTAL_SOURCE = "servers:total"  # the CounterStore source of the fleet's total row
_TOTAL_SERIES = ("gen_tok_s", "prompt_tok_s", "ttft_p50_s", "itl_p50_s", "running", "waiting")


class FleetSampler(Collector):
    """Samples the total row once per scrape interval into the CounterStore (source TOTAL_SOURCE), so the
    fleet's tok/s and TTFT have a history to draw, like each target's own scrapes.

    The sample is derived from what the targets already delivered, not news from a source: it goes
    straight into the pipeline's CounterStore instead of through the queue, so it is not recorded and
    does not by itself make the TUI draw a frame (the next scrapes, 50 ms later, do, and show it)."""

    name = "fleet"

    def __init__(self, pipeline: Pipeline, interval: float) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.interval = interval

    def run(self) -> None:
        t_cpu = time.thread_time()
        # just before the next scrape tick: every scrape of this one has landed long since
        while not self.wait(aligned_wait(self.interval, 0.95 * self.interval)):
            rows = target_rows(self.pipeline, live=True)
            if len(rows) > 1:
                tot = rows[-1]
                vals = {k: float(getattr(tot, k)) for k in _TOTAL_SERIES if not math.isnan(getattr(tot, k))}
                self.pipeline.counters.add(CounterSample(TOTAL_SOURCE, time.perf_counter_ns(), vals))
                self.emitted_events += 1
            self.account_cpu(t_cpu)


def build_attach_pipeline(
    urls: list[str],
    aggregator: Any,
    *,
    token: str | None = None,
    interval: float = 1.0,
    pipeline: Pipeline | None = None,
    backoff: tuple[float, float] | None = None,
    targets_file: str | None = None,
    targets_poll_s: float = 1.0,
) -> Pipeline:
    """A Pipeline (not started) with one collector per URL; its source is kept current as targets answer.
    `backoff`: (first, longest) wait between reconnect attempts (default: each collector's own).
    `targets_file`: more URLs, one per line (targets.py), re-read every `targets_poll_s` when it changes;
    a missing, unreadable or bad file is refused here with one line."""
    from llmtop.attach.targets import TargetsWatcher, read_targets

    file_urls = read_targets(targets_file) if targets_file is not None else []
    if not urls and targets_file is None:
        raise LlmtopError("attach needs at least one URL")
    p = pipeline or Pipeline(aggregator)
    many = len(urls) + len(file_urls) > 1 or targets_file is not None
    fleet = AttachFleet(p, token=token, interval=interval, backoff=backoff,
                        own_window_s=float(getattr(aggregator, "window_s", 10.0)) if many else None)
    for url in urls:
        fleet.add_fixed(url)
    every = list(urls)
    if targets_file is not None:
        fleet.set_file_targets(file_urls)
        every += [u for u in file_urls if u not in every]
        watcher = TargetsWatcher(targets_file, fleet, poll_s=targets_poll_s)
        p.add(watcher)
        p.add_note("targets", lambda: watcher.problem)
    if len(every) > 1 or targets_file is not None:
        p.add(FleetSampler(p, interval))
    p.set_source(SourceInfo(kind="attach", extra={"urls": every, "link": "connecting"}))
    live = _LiveRows(p)
    # the header's error bar says when a target is down; the Servers pane shows the rows
    p.add_note("link", lambda: link_summary(p, live()[1]))
    p.add_table("targets", lambda: server_table(p, live()))
    return p


def _combined_source(sources: list[SourceInfo], n: int) -> SourceInfo:
    """One SourceInfo for `n` targets of which `sources` (in target order) have answered."""
    if n == 1 and len(sources) == 1:
        return sources[0]
    first = sources[0]
    extra: dict[str, Any] = {"targets": [s.to_dict() for s in sources]}
    missing = sorted({m for s in sources for m in s.extra.get("missing", [])})
    if missing and all("missing" in s.extra for s in sources):
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


# The numbers that describe a target now (rates, gauges, window statistics): blanked in a live table
# while the target is not connected, since its last values are not current. Lifetime totals stay.
_CURRENT = ("gen_tok_s", "running", "waiting", "kv_cache", "ttft_p50_s", "ttft_p95_s", "itl_p50_s",
            "itl_p95_s", "prompt_tok_s", "e2e_p50_s", "req_s", "prefix_hit", "preemptions", "aborted",
            "failed", "window_s")
_SUMMED = ("gen_tok_s", "gen_tokens", "running", "waiting", "prompt_tok_s", "req_s", "preemptions",
           "aborted", "failed")


def _model(c: Any) -> str:
    src = getattr(c, "source", None)
    return str(src.model or "") if src is not None else ""


def _attach_collectors(pipeline: Pipeline) -> list[Any]:
    """The target collectors, in target order (a copy: the --targets watcher may change the list)."""
    return [c for c in list(pipeline.collectors) if isinstance(c, AgentCollector | PrometheusCollector)]


def target_rows(pipeline: Pipeline, *, live: bool = False,
                collectors: list[Any] | None = None) -> list[TargetRow]:
    """One row per attach collector, then a "total" row when there are several: sums of rates, counts
    and gauges, the fullest KV cache, and percentiles of the targets' summed histogram deltas (the
    fleet's own percentiles, when their buckets agree; NaN otherwise, since percentiles do not add).

    `live`: a target that is not connected has its current numbers blanked (NaN) and leaves the total's
    current numbers; its lifetime token count stays in both."""
    rows: list[TargetRow] = []
    fleet_hists: dict[str, list[Any]] = {}
    for c in _attach_collectors(pipeline) if collectors is None else collectors:
        if isinstance(c, AgentCollector):
            lat = pipeline.counters.latest().get(f"{c.label}:serve")
            g = lat.values if lat is not None else {}
            row = TargetRow(
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
                model=_model(c),
            )
        elif isinstance(c, PrometheusCollector):
            v = c.latest
            row = TargetRow(
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
                model=_model(c),
                prompt_tok_s=_nan(v, "prompt_tok_s"),
                e2e_p50_s=_nan(v, "e2e_p50_s"),
                req_s=_nan(v, "req_s"),
                prefix_hit=_nan(v, "prefix_hit"),
                preemptions=_nan(v, "preemptions_window"),
                aborted=_nan(v, "aborted_window"),
                failed=_nan(v, "failed_window"),
                window_s=_nan(v, "window_s"),
            )
            if not live or c.link == CONNECTED:
                for k, h in c.window_hists.items():
                    fleet_hists.setdefault(k, []).append(h)
                q, hit = v.get("prefix_queries_window"), v.get("prefix_hits_window")
                if q is not None and hit is not None:
                    fleet_hists.setdefault("prefix", []).append((q, hit))
        else:
            continue
        if live and row.link != CONNECTED:
            for k in _CURRENT:
                setattr(row, k, math.nan)
        rows.append(row)
    if len(rows) > 1:
        rows.append(_total_row(rows, fleet_hists))
    return rows


def _total_row(rows: list[TargetRow], fleet: dict[str, list[Any]]) -> TargetRow:
    def tot(attr: str) -> float:
        vals = [getattr(r, attr) for r in rows if not math.isnan(getattr(r, attr))]
        return float(sum(vals)) if vals else math.nan

    def fleet_q(key: str, q: float) -> float:
        h = Histogram.merged(fleet.get(key, []))
        return h.quantile(q) if h is not None else math.nan

    kv = [r.kv_cache for r in rows if not math.isnan(r.kv_cache)]
    prefix = fleet.get("prefix", [])
    queries = sum(q for q, _ in prefix)
    up = sum(r.link == CONNECTED for r in rows)
    total = TargetRow(
        "total",
        "total",
        f"{up}/{len(rows)} connected",
        None,
        *(math.nan,) * 9,
        sum(r.dropped for r in rows),
        sum(r.rejected for r in rows),
        any(r.reached for r in rows),
        math.nan,
    )
    for k in _SUMMED:
        setattr(total, k, tot(k))
    total.kv_cache = max(kv) if kv else math.nan  # the fullest cache is the one that preempts first
    total.ttft_p50_s, total.ttft_p95_s = fleet_q("ttft", 0.5), fleet_q("ttft", 0.95)
    total.itl_p50_s, total.itl_p95_s = fleet_q("itl", 0.5), fleet_q("itl", 0.95)
    total.e2e_p50_s = fleet_q("e2e", 0.5)
    if queries > 0:
        total.prefix_hit = sum(h for _, h in prefix) / queries
    return total


# TargetRow fields a table row carries (the outage list stays in reports: the `status` text says it).
_TABLE_FIELDS = tuple(f for f in TargetRow.__dataclass_fields__ if f != "outages")


class _LiveRows:
    """target_rows(live=True) with the collectors they came from, computed at most every `ttl` seconds: one
    TUI refresh asks for them three times (the table, the header's link note, the status), and a target's
    numbers change only when it is scraped."""

    def __init__(self, pipeline: Pipeline, ttl: float = 0.2) -> None:
        self.pipeline = pipeline
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -math.inf
        self._folded = -1
        self._value: tuple[list[Any], list[TargetRow]] = ([], [])

    def __call__(self) -> tuple[list[Any], list[TargetRow]]:
        with self._lock:
            now = time.monotonic()
            # a scrape folded since (its sample is folded after the collector updated its numbers) is
            # news at once; links and outage lengths change without one, hence the time limit too
            folded = self.pipeline.folded_items
            if now - self._at >= self.ttl or folded != self._folded:
                cs = _attach_collectors(self.pipeline)
                self._value = (cs, target_rows(self.pipeline, live=True, collectors=cs))
                self._at, self._folded = now, folded
            return self._value


def server_table(pipeline: Pipeline,
                 live: tuple[list[Any], list[TargetRow]] | None = None) -> list[dict[str, Any]]:
    """The live target rows as dicts for the TUI's Servers pane: every TargetRow field but the outage
    list, plus `status` (the link with its outages), `source` (the CounterStore source of the target's
    scrapes: its history draws the sparklines; "" for agents), `url` and `spark_s` (the percentile
    window, which the sparklines span)."""
    if live is None:
        cs = _attach_collectors(pipeline)
        live = (cs, target_rows(pipeline, live=True, collectors=cs))
    cs, rows = live
    out = []
    for i, r in enumerate(rows):
        d = {f: getattr(r, f) for f in _TABLE_FIELDS}
        c = cs[i] if i < len(cs) else None  # the total row comes last
        d["status"] = r.status
        d["source"] = (TOTAL_SOURCE if r.kind == "total"
                       else f"server:{r.label}" if isinstance(c, PrometheusCollector) else "")
        d["url"] = safe_text(getattr(c, "url", "")) if c is not None else ""
        windows = [x.window_s for x in ([c] if c is not None else cs) if isinstance(x, PrometheusCollector)]
        if windows:
            d["spark_s"] = max(windows)  # sparklines span the percentile window
        out.append(d)
    return out


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
    targets_file: str | None = None,
) -> dict[str, Any]:
    """`llmtop attach --once`: collect for `duration_s` (at least two scrapes, so rates exist), report.

    Reconnects are tried at least every second (an outage's measured length is off by less than that);
    the caller decides what a report whose targets never answered means (`require_reached`)."""
    p = build_attach_pipeline(urls, aggregator, token=token, interval=interval,
                              backoff=(0.2, max(1.0, min(interval, 5.0))), targets_file=targets_file)
    p.start()
    try:
        time.sleep(max(duration_s, 0.0))
        rows = target_rows(p)  # before stop(), which closes the connections
    finally:
        p.stop()
    return attach_report(p, rows)


def link_summary(pipeline: Pipeline, rows: list[TargetRow] | None = None) -> str | None:
    """One header line when some target is not connected, e.g. "disconnected: 127.0.0.1:7070 (retrying)"."""
    rows = target_rows(pipeline) if rows is None else rows
    bad = [r for r in rows if r.kind != "total" and r.link != CONNECTED]
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
    "AttachFleet",
    "TargetRow",
    "Unreached",
    "attach_once",
    "attach_report",
    "build_attach_pipeline",
    "link_summary",
    "profile_targets",
    "require_reached",
    "server_table",
    "start_profile",
    "stop_profile",
    "target_rows",
    "target_warnings",
]
