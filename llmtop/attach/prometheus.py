"""Scrape a server's /metrics (vLLM, SGLang, TGI, llama.cpp) into CounterSamples, with reconnects.

Each scrape emits one CounterSample (source "server:<label>") with the numbers of `metrics.derive`:
rates and percentiles since the previous scrape, current gauges, lifetime totals. Such a source has
no kernels: the SourceInfo's extra carries `capabilities` and `missing` for the kernel panes to show.
A target that answers with an HTTP error or a body that is not a server's metrics is "refused" until it
has given one good scrape; model names and error text from the server have their control characters
escaped before anything shows them.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from llmtop.attach.agent_client import CONNECTED, CONNECTING, DISCONNECTED, REFUSED
from llmtop.attach.link import LinkLog, safe_text
from llmtop.attach.metrics import MAX_METRICS_BYTES, Scrape, capabilities, derive, parse_metrics, parse_slots
from llmtop.collectors.base import Collector
from llmtop.collectors.replay import FoldTarget, LoadSummary, load_into
from llmtop.errors import LlmtopError
from llmtop.events import CounterSample, Marker, SourceInfo
from llmtop.numfmt import printable


def metrics_url(url: str) -> str:
    """http://host:port -> http://host:port/metrics (an explicit path is kept)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LlmtopError(f"not an http(s) URL: {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def base_url(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path
    if path.endswith("/metrics"):
        path = path[: -len("/metrics")]
    return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


class HttpStatusError(LlmtopError):
    """The target answered with an HTTP status other than 200 (404: not a metrics endpoint)."""


def _fetch(client: Any, url: str, limit: int = MAX_METRICS_BYTES) -> bytes:
    """GET with a hard size cap, read in chunks so a huge body is refused without holding it."""
    with client.stream("GET", url) as r:
        if r.status_code != 200:
            raise HttpStatusError(f"{url}: HTTP {r.status_code}")
        buf = bytearray()
        for chunk in r.iter_bytes():
            buf += chunk
            if len(buf) > limit:
                raise LlmtopError(f"{url}: response larger than {limit} bytes")
        return bytes(buf)


def scrape(client: Any, url: str, flavor: str | None = None, slots: bool = True) -> Scrape:
    """Fetch and parse one target (plus llama.cpp /slots when it answers)."""
    sc = parse_metrics(_fetch(client, metrics_url(url)), time.monotonic(), flavor)
    if sc.flavor == "llamacpp" and slots:
        try:
            sc.live_decoded = parse_slots(json.loads(_fetch(client, base_url(url) + "/slots", 1 << 22)))
        except (LlmtopError, ValueError, OSError):
            sc.live_decoded = None  # /slots disabled (--no-slots): counters alone, rates at request ends
    return sc


class PrometheusCollector(Collector):
    """Scrapes `url` every `interval` seconds; `latest` holds the last derived numbers (kept when the
    server goes away, with link = "disconnected")."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        label: str | None = None,
        interval: float = 1.0,
        on_source: Callable[[SourceInfo], None] | None = None,
        timeout: float = 2.0,
        backoff: tuple[float, float] = (0.5, 10.0),
        window_s: float = 30.0,
    ) -> None:
        self.url = metrics_url(url)
        super().__init__(label or f"metrics {urlsplit(self.url).netloc}")
        self.label = label or urlsplit(self.url).netloc
        self.interval = interval
        self.on_source = on_source
        self.timeout = timeout
        self.backoff = backoff
        self.link = CONNECTING
        self.link_error: str | None = None
        self.links = LinkLog()  # first good scrape and outages, for the --once report
        self.flavor: str | None = None
        self.source: SourceInfo | None = None
        self.latest: dict[str, float] = {}
        self.scrapes = 0
        self.rejected = 0  # malformed / oversized / unknown bodies
        self.window_s = window_s  # percentiles cover the last window_s, so an idle scrape is not blank
        self._history: deque[Scrape] = deque()

    def scrape_once(self, client: Any) -> dict[str, float]:
        sc = scrape(client, self.url, self.flavor)
        if self.flavor is None or self.source is None:
            self.flavor = sc.flavor
            can, missing = capabilities(sc)
            self.source = SourceInfo(
                kind="attach",
                backend=sc.flavor,
                device="remote",
                model=printable(", ".join(sc.models)),
                timing="server metrics",
                extra={
                    "url": self.url,
                    "flavor": sc.flavor,
                    "capabilities": can,
                    "missing": missing,
                    "note": f"{sc.flavor} /metrics: request-level numbers only, no kernel timings",
                    "profile": sc.flavor in ("vllm", "sglang"),
                },
            )
            if self.on_source is not None:
                self.on_source(self.source)
        h = self._history
        while len(h) > 1 and sc.t - h[1].t >= self.window_s:
            h.popleft()
        vals = derive(sc, h[-1] if h else None, h[0] if h else None)
        h.append(sc)
        self.scrapes += 1
        self.latest = vals
        return vals

    def run(self) -> None:
        import httpx

        t_cpu = time.thread_time()
        delay = self.backoff[0]
        with httpx.Client(timeout=self.timeout) as client:
            while not self.stopping:
                try:
                    vals = self.scrape_once(client)
                    if self.link == DISCONNECTED:
                        self._mark(f"{self.label}: reconnected")
                    self.link, self.link_error = CONNECTED, None
                    self.links.up()
                    delay = self.backoff[0]
                    assert self._queue is not None
                    self.emit(CounterSample(f"server:{self.label}", time.perf_counter_ns(), vals))
                    wait = self.interval
                except HttpStatusError as e:  # it answers, but not with metrics (404, 503 while restarting)
                    self._lost(safe_text(e), answered=True)
                    wait = self.interval
                except LlmtopError as e:  # a body we refuse: count it, keep the old numbers
                    self.rejected += 1
                    self.link_error = safe_text(e)
                    if self.link != CONNECTED:
                        self.link = DISCONNECTED if self.links.reached else REFUSED
                    wait = self.interval
                except (httpx.HTTPError, OSError) as e:
                    self._lost(safe_text(f"{type(e).__name__}: {e}"))
                    wait, delay = delay, min(delay * 2, self.backoff[1])
                self.account_cpu(t_cpu)
                if self.wait(wait):
                    break

    def _lost(self, why: str, *, answered: bool = False) -> None:
        """A failed scrape: disconnected (an outage once it had given metrics), or refused when it never
        has and `answered` something else (an HTTP error)."""
        if self.stopping:
            return
        if self.link == CONNECTED:
            self._mark(f"{self.label}: disconnected")
        self.links.down()
        refused = answered and not self.links.reached
        self.link, self.link_error = (REFUSED if refused else DISCONNECTED), why
        self._history.clear()  # rates restart after the gap

    def fail(self, e: BaseException | str) -> None:
        super().fail(e)
        self.error = safe_text(self.error or "")

    def _mark(self, text: str) -> None:
        if self._queue is not None:
            self._queue.put(Marker(time.perf_counter_ns(), text))


# -- server-side profiling (vLLM, SGLang) --------------------------------------------------------
def _profile_call(url: str, what: str, timeout: float) -> str:
    import httpx

    target = base_url(url) + f"/{what}"
    try:
        r = httpx.post(target, timeout=timeout)
    except httpx.HTTPError as e:
        raise LlmtopError(f"{target}: {type(e).__name__}: {e}") from None
    if r.status_code == 404:
        raise LlmtopError(f"{target}: not found (start the server with a profiler configured)")
    if r.status_code >= 400:
        raise LlmtopError(f"{target}: HTTP {r.status_code}: {r.text[:200].strip()}")
    return r.text


def start_profile(url: str, timeout: float = 30.0) -> str:
    """POST /start_profile on a vLLM or SGLang server (needs its profiler configured)."""
    return _profile_call(url, "start_profile", timeout)


def stop_profile(url: str, timeout: float = 600.0) -> str:
    """POST /stop_profile; vLLM with stack collection can take minutes, hence the long timeout."""
    return _profile_call(url, "stop_profile", timeout)


def load_profile_trace(path: str, aggregator: FoldTarget) -> LoadSummary:
    """Fold a trace the server's profiler wrote (e.g. *.pt.trace.json.gz) into an aggregator, through
    the trace importers; returns their LoadSummary. The kernel panes then show the server's kernels."""
    return load_into(path, aggregator)


__all__ = [
    "HttpStatusError",
    "PrometheusCollector",
    "base_url",
    "load_profile_trace",
    "metrics_url",
    "scrape",
    "start_profile",
    "stop_profile",
]
