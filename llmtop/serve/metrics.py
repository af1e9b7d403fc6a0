"""`/metrics` for llmtop serve: prometheus_client with vLLM's names, buckets and model_name label, so
dashboards and `llmtop attach http://.../metrics` read it like a vLLM server, and llmtop's own metrics
(llmtop_*, docs/METRICS.md) in the same response once `add_collector` has registered them. A scraper that
asks for OpenMetrics (`Accept: application/openmetrics-text`, as Prometheus does) gets OpenMetrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics:
    """One registry per server (not the global one), so several servers can live in one process."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, lab = self.registry, ["model_name"]
        self._gen = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", lab, registry=r
        )
        self._prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", lab, registry=r)
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            lab,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            lab,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            lab,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self._running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", lab, registry=r
        )
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", lab, registry=r
        )
        self._kv = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", lab, registry=r
        )
        m = model_name
        self.gen, self.prompt = self._gen.labels(m), self._prompt.labels(m)
        self.ttft, self.itl, self.e2e = self._ttft.labels(m), self._itl.labels(m), self._e2e.labels(m)
        self.running, self.waiting, self.kv = (
            self._running.labels(m),
            self._waiting.labels(m),
            self._kv.labels(m),
        )
        self.model_name = m

    def first_token(self, seconds: float) -> None:
        self.gen.inc()
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.gen.inc()
        self.itl.observe(seconds)

    def prompt_tokens(self, n: int) -> None:
        self.prompt.inc(n)

    def finished(self, req: Any, e2e_s: float) -> None:
        self._success.labels(self.model_name, req.finish_reason or "").inc()
        self.e2e.observe(e2e_s)

    def gauges(self, running: int, waiting: int, kv: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv.set(kv)

    def add_collector(self, collector: Any) -> None:
        """Serve another collector's families (llmtop's own metrics) in the same response."""
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for."""
        from llmtop.export.metrics import exposition

        return exposition(self.registry, accept)
