"""Prometheus parsing on real captures (vLLM 0.32, llama.cpp), checked against numbers computed here
independently from the raw text; plus a scraping collector against a real local HTTP server."""

from __future__ import annotations

import http.server
import json
import math
import re
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from fixture_paths import PROMETHEUS_DIR as FIX

from llmtop.attach.metrics import (
    MAX_METRICS_BYTES,
    capabilities,
    derive,
    detect_flavor,
    parse_metrics,
    parse_slots,
)
from llmtop.attach.prometheus import PrometheusCollector
from llmtop.collectors.queue import BoundedQueue
from llmtop.errors import LlmtopError
from llmtop.events import CounterSample

LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def raw(path: Path) -> dict[str, list[tuple[str, float]]]:
    """name -> [(labels text, value)] straight from the text, no prometheus_client."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def raw_buckets(d: dict, name: str) -> list[tuple[float, float]]:
    b = [(float(re.search(r'le="([^"]+)"', lab).group(1)), v) for lab, v in d[name + "_bucket"]]
    return sorted(b)


def quantile_by_hand(q: float, buckets: list[tuple[float, float]]) -> float:
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    raise AssertionError


def test_vllm_capture_rates_and_percentiles() -> None:
    idle, after = FIX / "vllm_cpu_0.32_idle.txt", FIX / "vllm_cpu_0.32_after_requests.txt"
    a, b = parse_metrics(idle.read_text(), t=100.0), parse_metrics(after.read_bytes(), t=110.0)
    assert a.flavor == b.flavor == "vllm"
    assert b.models == ["tiny"]
    ri, ra = raw(idle), raw(after)
    gen = ra["vllm:generation_tokens_total"][0][1] - ri["vllm:generation_tokens_total"][0][1]
    prompt = ra["vllm:prompt_tokens_total"][0][1] - ri["vllm:prompt_tokens_total"][0][1]
    assert gen > 0
    v = derive(b, a)
    assert v["gen_tok_s"] == pytest.approx(gen / 10.0)
    assert v["prompt_tok_s"] == pytest.approx(prompt / 10.0)
    assert v["running"] == ra["vllm:num_requests_running"][0][1]
    assert v["kv_cache"] == ra["vllm:kv_cache_usage_perc"][0][1]
    for key, metric in (
        ("ttft", "vllm:time_to_first_token_seconds"),
        ("itl", "vllm:inter_token_latency_seconds"),
        ("e2e", "vllm:e2e_request_latency_seconds"),
    ):
        bi, ba = dict(raw_buckets(ri, metric)), raw_buckets(ra, metric)
        delta = [(le, c - bi.get(le, 0.0)) for le, c in ba]
        assert v[f"{key}_count"] == delta[-1][1] > 0
        for q in (0.5, 0.9, 0.95, 0.99):
            assert v[f"{key}_p{round(q * 100)}_s"] == pytest.approx(quantile_by_hand(q, delta)), (key, q)
        s = ra[metric + "_sum"][0][1] - ri[metric + "_sum"][0][1]
        assert v[f"{key}_mean_s"] == pytest.approx(s / delta[-1][1])


def test_llamacpp_capture_and_slots() -> None:
    idle = parse_metrics((FIX / "llamacpp_server_idle.txt").read_text(), t=0.0)
    s1 = parse_metrics((FIX / "llamacpp_server_scrape1_after_request.txt").read_text(), t=4.0)
    s2 = parse_metrics((FIX / "llamacpp_server_scrape2_after_request.txt").read_text(), t=5.0)
    assert idle.flavor == s1.flavor == "llamacpp"
    r0, r1 = raw(FIX / "llamacpp_server_idle.txt"), raw(FIX / "llamacpp_server_scrape1_after_request.txt")
    gen = r1["llamacpp:tokens_predicted_total"][0][1] - r0["llamacpp:tokens_predicted_total"][0][1]
    assert derive(s1, idle)["gen_tok_s"] == pytest.approx(gen / 4.0)
    # the throughput gauge resets at each scrape but the counters do not: no new tokens, rate 0
    assert derive(s2, s1)["gen_tok_s"] == 0.0
    assert "ttft_p50_s" not in derive(s1, idle)  # llama.cpp has no histograms
    slots = json.loads((FIX / "llamacpp_slots.json").read_text())
    expected = sum(nt["n_decoded"] for s in slots if s.get("is_processing") for nt in s.get("next_token", []))
    assert parse_slots(slots) == expected
    busy = [dict(slots[1], is_processing=True, next_token=[{"n_decoded": 7}])]
    assert parse_slots(busy) == 7.0
    # live tokens of running requests count towards the rate before the counters move
    s1.live_decoded, s2.live_decoded = 0.0, 12.0
    assert derive(s2, s1)["gen_tok_s"] == pytest.approx(12.0)


def test_flavor_detection_and_bad_input() -> None:
    assert detect_flavor({"sglang:num_running_reqs", "process_cpu"}) == "sglang"
    assert detect_flavor({"tgi_queue_size"}) == "tgi"
    assert detect_flavor({"python_gc"}) is None
    with pytest.raises(LlmtopError, match="no vLLM"):
        parse_metrics("python_gc_objects_collected_total 3\n")
    with pytest.raises(LlmtopError, match="malformed"):
        parse_metrics("vllm:num_requests_running{ 1 2 3\n")
    with pytest.raises(LlmtopError, match="exceeds"):
        parse_metrics(b"#" * (MAX_METRICS_BYTES + 1))
    tgi = parse_metrics(
        "tgi_queue_size 3\ntgi_batch_current_size 2\n"
        'tgi_request_duration_bucket{le="1.0"} 4\ntgi_request_duration_bucket{le="+Inf"} 4\n'
        "tgi_request_duration_sum 2.0\ntgi_request_duration_count 4\n"
    )
    v = derive(tgi, None)
    assert (v["waiting"], v["running"], v["e2e_count"]) == (3.0, 2.0, 4.0)
    assert v["e2e_p50_s"] == pytest.approx(0.5)


class _Handler(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []
    posts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        body = self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # a vLLM with a profiler answers these two
        self.posts.append(self.path)
        code = 200 if self.path in ("/start_profile", "/stop_profile") else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def _serve(port: int = 0) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _wait(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_collector_scrapes_rejects_and_reconnects() -> None:
    idle = (FIX / "vllm_cpu_0.32_idle.txt").read_bytes()
    after = (FIX / "vllm_cpu_0.32_after_requests.txt").read_bytes()
    _Handler.bodies = [idle, b"vllm:num_requests_running{ garbage\n", after]
    srv = _serve()
    port = srv.server_address[1]
    q: BoundedQueue = BoundedQueue()
    c = PrometheusCollector(f"http://127.0.0.1:{port}", interval=0.05, backoff=(0.05, 0.2))
    c.start(q)
    try:
        assert _wait(lambda: c.scrapes >= 3)
        assert c.rejected == 1  # the garbage body, counted, numbers kept
        assert c.link == "connected" and c.flavor == "vllm"
        assert c.source is not None and "kernels" in c.source.extra["missing"]
        assert c.latest["gen_tokens_total"] == 194.0
        samples = [i for i in q.get_many(0) if isinstance(i, CounterSample)]
        assert samples and samples[-1].source == f"server:127.0.0.1:{port}"
        srv.shutdown()
        srv.server_close()
        assert _wait(lambda: c.link == "disconnected")
        assert c.latest["gen_tokens_total"] == 194.0  # last data kept
        srv = _serve(port)
        assert _wait(lambda: c.link == "connected")
    finally:
        c.stop()
        c.join(5)
        srv.shutdown()
        srv.server_close()
    assert not c.alive


def test_profile_start_stop() -> None:
    from llmtop.attach.prometheus import start_profile, stop_profile

    _Handler.bodies = [b""]
    srv = _serve()
    url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    try:
        start_profile(url)
        stop_profile(url)
        assert _Handler.posts[-2:] == ["/start_profile", "/stop_profile"]
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(LlmtopError):
        start_profile(url, timeout=2)  # nothing listens any more: one-line error


def _sglang_body(*, gen: float, prompt: float, cached: float, requests: float, retracted: float,
                 aborted: float, ttft: list[float]) -> str:
    """A /metrics body the way an SGLang server writes it: prometheus_client registering the names, types
    and labels of sglang/srt/metrics/collector.py (TokenizerMetricsCollector and the scheduler's)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    reg = CollectorRegistry()
    labels = {"model_name": "Qwen/Qwen3-0.6B", "engine_type": "unified", "tp_rank": "0", "pp_rank": "0"}

    def counter(name: str, v: float) -> None:  # prometheus_client adds the _total a name lacks
        Counter(name.removesuffix("_total"), "x", list(labels), registry=reg).labels(**labels).inc(v)

    counter("sglang:generation_tokens_total", gen)
    counter("sglang:prompt_tokens_total", prompt)
    counter("sglang:cached_tokens_total", cached)
    counter("sglang:num_requests_total", requests)
    counter("sglang:num_retracted_requests_total", retracted)
    counter("sglang:num_aborted_requests_total", aborted)
    Gauge("sglang:num_running_reqs", "x", list(labels), registry=reg).labels(**labels).set(3)
    Gauge("sglang:num_queue_reqs", "x", list(labels), registry=reg).labels(**labels).set(1)
    Gauge("sglang:token_usage", "x", list(labels), registry=reg).labels(**labels).set(0.25)
    h = Histogram("sglang:time_to_first_token_seconds", "x", list(labels), registry=reg,
                  buckets=[0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4])
    for v in ttft:
        h.labels(**labels).observe(v)
    return generate_latest(reg).decode()


def test_sglang_requests_retractions_aborts_and_radix_cache_hits() -> None:
    """SGLang's own counters fill the same row keys as vLLM's: finished requests per second, retractions
    as preemptions, aborted requests, and the radix-cache hit rate from cached / prompt tokens."""
    a = parse_metrics(_sglang_body(gen=100, prompt=400, cached=100, requests=4, retracted=0, aborted=0,
                                   ttft=[0.15] * 4), t=10.0)
    b = parse_metrics(_sglang_body(gen=300, prompt=1400, cached=700, requests=14, retracted=2, aborted=1,
                                   ttft=[0.15] * 4 + [0.5] * 10), t=20.0)
    assert a.flavor == b.flavor == "sglang"
    d = derive(b, a)
    assert d["gen_tok_s"] == pytest.approx(20.0) and d["req_s"] == pytest.approx(1.0)
    assert d["preemptions_window"] == 2 and d["aborted_window"] == 1
    assert d["prefix_hit"] == pytest.approx(600 / 1000)
    assert d["running"] == 3 and d["waiting"] == 1 and d["kv_cache"] == 0.25
    assert 0.4 <= d["ttft_p50_s"] <= 0.6  # the ten new ones, in the 0.4-0.6 bucket
    can, missing = capabilities(b)
    assert {"preemptions", "aborted requests", "prefix-cache hit rate", "finished requests"} <= set(can)
    assert "failed requests" in missing  # SGLang exports no failure counter outside PD disaggregation
