"""Scrape a server's /metrics (vLLM, SGLang, TGI, llama.cpp) into CounterSamples, with reconnects.

Each scrape emits one CounterSample (source "server:<label>") with the numbers of `metrics.derive`:
rates and percentiles since the previous scrape, current gauges, lifetime totals. Such a source has
no kernels: the SourceInfo's extra carries `capabilities` and `missing` for the kernel panes to show.
A target that answers with an HTTP error or a body that is not a server's metrics is "refused" until it
has given one good scrape; model names and error text from the server have their control characters
escaped before anything shows them.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from llmtop.attach.agent_client import CONNECTED, CONNECTING, DISCONNECTED, REFUSED
from llmtop.attach.link import LinkLog, safe_text
from llmtop.attach.metrics import (
    MAX_METRICS_BYTES,
    Histogram,
    LineCache,
    Scrape,
    capabilities,
    derive,
    parse_metrics,
    parse_slots,
)
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


class HttpGetter:
    """Keep-alive HTTP/1.1 GETs with the standard library's http.client, one connection per host.

    A scrape is one small GET a second per target; http.client does it for about a third of httpx's CPU
    (0.4 vs 1.1 ms for a 51 KB vLLM body here), which is most of what 16 targets at 1 Hz may cost.
    Bodies are read with a hard cap, so a huge one is refused without being held. Credentials in the URL
    (http://user:pass@host) go as basic auth.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def _conn(self, scheme: str, netloc: str, host: str, port: int | None) -> http.client.HTTPConnection:
        c = self._conns.get((scheme, netloc))
        if c is None:
            if scheme == "https":
                c = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                context=ssl.create_default_context())
            else:
                c = http.client.HTTPConnection(host, port, timeout=self.timeout)
            self._conns[(scheme, netloc)] = c
        return c

    def _drop(self, key: tuple[str, str]) -> None:
        c = self._conns.pop(key, None)
        if c is not None:
            c.close()

    def get(self, url: str, limit: int = MAX_METRICS_BYTES) -> bytes:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        headers = {"Accept": "text/plain", "Accept-Encoding": "identity", "User-Agent": "llmtop"}
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):
            reused = key in self._conns
            c = self._conn(parts.scheme, parts.netloc, parts.hostname or "", parts.port)
            try:
                c.request("GET", path, headers=headers)
                r = c.getresponse()
                if r.status != 200:
                    r.read(1 << 16)  # what is left of a small error page, so the connection can be reused
                    if r.will_close:
                        self._drop(key)
                    raise HttpStatusError(f"{url}: HTTP {r.status}")
                body = r.read(limit + 1)
            except (http.client.HTTPException, OSError):
                self._drop(key)
                if reused and attempt == 0:
                    continue  # the server closed a kept-alive connection between scrapes: one fresh try
                raise
            if len(body) > limit:
                self._drop(key)
                raise LlmtopError(f"{url}: response larger than {limit} bytes")
            if r.will_close:
                self._drop(key)
            return body
        raise AssertionError("unreachable")

    def close(self) -> None:
        for key in list(self._conns):
            self._drop(key)


def _fetch(client: HttpGetter, url: str, limit: int = MAX_METRICS_BYTES) -> bytes:
    return client.get(url, limit)


def scrape(client: HttpGetter, url: str, flavor: str | None = None, slots: bool = True,
           cache: LineCache | None = None) -> Scrape:
    """Fetch and parse one target (plus llama.cpp /slots when it answers); `cache`: this target's lines
    from its previous scrape, so unchanged lines are not parsed again."""
    sc = parse_metrics(_fetch(client, metrics_url(url)), time.monotonic(), flavor, cache)
    if sc.flavor == "llamacpp" and slots:
        try:
            sc.live_decoded = parse_slots(json.loads(_fetch(client, base_url(url) + "/slots", 1 << 22)))
        except (LlmtopError, ValueError, OSError, http.client.HTTPException):
            sc.live_decoded = None  # /slots disabled (--no-slots): counters alone, rates at request ends
    return sc


def aligned_wait(interval: float, phase: float = 0.0) -> float:
    """Seconds until the next multiple of `interval` (plus `phase`) on the monotonic clock.

    Every target's scrapes land on the same ticks, so a fleet's rows change together once per interval:
    the total row adds numbers of the same moment, and the TUI redraws the Servers pane once per tick
    instead of at nearly every refresh (16 targets at their own phases changed some row every 60 ms)."""
    now = time.monotonic()
    return max(0.0, (now - phase) // interval * interval + interval + phase - now)


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
        self.window_hists: dict[str, Histogram] = {}  # bucket deltas over the window, at the last scrape
        self._history: deque[Scrape] = deque()
        self._lines = LineCache()

    def scrape_once(self, client: HttpGetter) -> dict[str, float]:
        sc = scrape(client, self.url, self.flavor, cache=self._lines)
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
        hists: dict[str, Histogram] = {}
        vals = derive(sc, h[-1] if h else None, h[0] if h else None, hists)
        h.append(sc)
        self.scrapes += 1
        self.latest, self.window_hists = vals, hists
        return vals

    def run(self) -> None:
        t_cpu = time.thread_time()
        delay = self.backoff[0]
        client = HttpGetter(self.timeout)
        try:
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
                    wait = aligned_wait(self.interval)
                except HttpStatusError as e:  # it answers, but not with metrics (404, 503 while restarting)
                    self._lost(safe_text(e), answered=True)
                    wait = self.interval
                except LlmtopError as e:  # a body we refuse: count it, keep the old numbers
                    self.rejected += 1
                    self.link_error = safe_text(e)
                    if self.link != CONNECTED:
                        self.link = DISCONNECTED if self.links.reached else REFUSED
                    wait = self.interval
                except (http.client.HTTPException, OSError) as e:
                    self._lost(safe_text(f"{type(e).__name__}: {e}"))
                    wait, delay = delay, min(delay * 2, self.backoff[1])
                self.account_cpu(t_cpu)
                if self.wait(wait):
                    break
        finally:
            client.close()

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
    "HttpGetter",
    "HttpStatusError",
    "PrometheusCollector",
    "aligned_wait",
    "base_url",
    "load_profile_trace",
    "metrics_url",
    "scrape",
    "start_profile",
    "stop_profile",
]
