"""A real Prometheus scraping a real `llmtop serve` on the shipped model.

`llmtop serve` runs on 127.0.0.1 (free ports); clients send requests with known max_tokens; its /metrics is
read directly (vllm:* and llmtop_* in one response, text or OpenMetrics) and, when Debian's `prometheus`
binary is installed (.ci/ensure_prometheus.sh), a Prometheus server on a free loopback port with temporary
storage scrapes it every second. Its HTTP API (/api/v1/query) must then hold what the clients got:
`vllm:generation_tokens_total` and `llmtop_generated_tokens_total` equal to the completion tokens the
clients received, `llmtop_kernel_seconds_total` > 0 and no more than the wall time the requests took.
Every query of dashboards/llmtop.json is then run against it and must return data (the GPU panel aside
on a machine without an NVIDIA GPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond: Any, timeout: float, poll: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return False


class Served:
    """The server, and what its clients received (tokens, and the wall time their requests spanned)."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.tokens = 0
        self.busy_s = 0.0  # sum over request bursts of first-send-to-last-answer wall time
        self.requests = 0
        self.longest = 0  # the most tokens one request got

    def burst(self, max_tokens: list[int]) -> int:
        """Send one request per entry at once (half streaming); returns the completion tokens received."""
        got: list[int] = []
        lock = threading.Lock()

        def one(i: int, n: int) -> None:
            # a count the model continues rather than ends: the clients get max_tokens each
            body = {"prompt": f"Count from {i} to {i + 60}: {i}, {i + 1}, {i + 2},", "max_tokens": n}
            if i % 2:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
                usage = None
                with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=120) as r:
                    assert r.status_code == 200
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            usage = json.loads(line[6:]).get("usage") or usage
                assert usage is not None
            else:
                r = httpx.post(f"{self.url}/v1/completions", json=body, timeout=120)
                assert r.status_code == 200, r.text
                usage = r.json()["usage"]
            assert 1 <= usage["completion_tokens"] <= n
            with lock:
                got.append(usage["completion_tokens"])

        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(max_tokens)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        self.busy_s += time.monotonic() - t0
        assert len(got) == len(max_tokens)
        self.tokens += sum(got)
        self.requests += len(got)
        self.longest = max(self.longest, *got)
        return sum(got)

    def metrics(self, accept: str | None = None) -> tuple[dict[str, float], str]:
        """({sample name: value summed over labels}, content type) of /metrics."""
        r = httpx.get(f"{self.url}/metrics", headers={"Accept": accept} if accept else {}, timeout=10)
        assert r.status_code == 200
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(r.text.replace("# EOF\n", "")):
            for s in fam.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
        return out, r.headers["content-type"]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    port, agent_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("LLMTOP_AGENT", "LLMTOP_METRICS_PORT"):
        env.pop(k, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtop.serve", "--backend", "cpu", "--model", "default", "--port", str(port),
         "--agent", f"127.0.0.1:{agent_port}", "--threads", "1", "--max-batch", "4"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    s = Served(proc, port)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"llmtop serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            return httpx.get(f"{s.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert _wait(healthy, 120), "llmtop serve did not come up"
        yield s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_serve_metrics_hold_what_the_clients_got(served: Served) -> None:
    """/metrics itself: vllm:* and llmtop_* in one response, equal to the clients' completion tokens."""
    served.burst([5, 7, 3])

    def settled() -> bool:  # the agent publishes every 50 ms; the llmtop families are rebuilt once a second
        m, _ = served.metrics()
        return m.get("llmtop_generated_tokens_total") == served.tokens

    assert _wait(settled, 10), served.metrics()[0].get("llmtop_generated_tokens_total")
    m, ctype = served.metrics()
    assert ctype.startswith("text/plain")
    assert m["vllm:generation_tokens_total"] == served.tokens
    # prefills batch requests together; every token after a request's first is one of its decode steps
    assert m["llmtop_step_seconds_count"] >= 1 + served.longest - 1, m
    assert 0 < m["llmtop_kernel_seconds_total"] <= served.busy_s
    assert m["llmtop_kernel_calls_total"] == m["llmtop_kernel_events_total"]
    assert m["llmtop_process_resident_memory_bytes"] > 0
    om, ctype = served.metrics(OPENMETRICS)
    assert ctype.startswith("application/openmetrics-text")
    assert om["vllm:generation_tokens_total"] == served.tokens  # the colon kept in OpenMetrics too
    assert om["llmtop_generated_tokens_total"] == served.tokens


class PromServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None


@pytest.fixture()
def prometheus(served: Served, tmp_path: Path) -> Iterator[PromServer]:
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary on PATH (.ci/ensure_prometheus.sh installs Debian's `prometheus`)")
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "llmtop-serve", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{served.port}"]}]}],
    }))
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert _wait(ready, 30), "prometheus did not become ready"
        yield PromServer(url)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_real_prometheus_scrapes_llmtop_serve(served: Served, prometheus: PromServer) -> None:
    assert _wait(lambda: prometheus.value('up{job="llmtop-serve"}') == 1.0, 20), httpx.get(
        f"{prometheus.url}/api/v1/targets", timeout=5).text
    served.burst([6, 4, 8, 5])
    want = served.tokens

    def scraped(expr: str) -> Any:
        return lambda: prometheus.value(expr) == want

    # a scrape after the last answer (1 s interval), and the llmtop families rebuilt (at most 1 s old)
    assert _wait(scraped("sum(vllm:generation_tokens_total)"), 20), prometheus.query(
        "vllm:generation_tokens_total")
    assert _wait(scraped("sum(llmtop_generated_tokens_total)"), 20), prometheus.query(
        "llmtop_generated_tokens_total")
    kernel_s = prometheus.value("sum(llmtop_kernel_seconds_total)")
    assert kernel_s is not None and 0 < kernel_s <= served.busy_s
    series = prometheus.query("llmtop_kernel_seconds_total")
    kernels = {r["metric"]["kernel"] for r in series}
    assert {"matmul:q_proj", "attention:decode", "other"} <= kernels
    assert all(r["metric"]["job"] == "llmtop-serve" for r in series)
    assert prometheus.value("sum(vllm:request_success_total)") == served.requests
    assert prometheus.value('sum(llmtop_step_seconds_count{phase="decode"})') >= served.longest - 1

    # every dashboard query resolves against this Prometheus
    sys.path.insert(0, str(Path(__file__).parent))
    from test_dashboard import DASHBOARD, metric_names, queries, substitute

    empty = []
    for title, expr in queries(json.loads(DASHBOARD.read_text())):
        if expr.startswith("label_values("):
            sel = expr[len("label_values("):].rsplit(",", 1)[0]
            assert prometheus.query(f"count({sel})"), title
            continue
        if not prometheus.query(substitute(expr)):
            empty.append((title, expr))
    # without an NVIDIA GPU the GPU gauges are absent; everything else has data
    gpu_only = [e for e in empty if all(n.startswith("llmtop_gpu_") for n in metric_names(e[1]))]
    assert empty == gpu_only, empty
