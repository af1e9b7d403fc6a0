"""End to end on real processes: `python -m llmtop.serve` on the shipped model, concurrent streaming
clients, a viewer attached through the agent and /metrics, then a server kill and restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmtop.attach import build_attach_pipeline, target_rows
from llmtop.attach.agent_client import AgentCollector
from llmtop.attach.prometheus import PrometheusCollector
from llmtop.stats import Aggregator

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _start_server(http_port: int, agent_port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLMTOP_AGENT", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmtop.serve",
            "--backend",
            "cpu",
            "--model",
            "default",
            "--port",
            str(http_port),
            "--agent",
            f"127.0.0.1:{agent_port}",
            "--threads",
            "1",
            "--max-batch",
            "4",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not _wait(healthy, 120):
        proc.kill()
        raise AssertionError("server did not come up")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def _stream(http_port: int, prompt: str, max_tokens: int, out: list, chat: bool) -> None:
    url = f"http://127.0.0.1:{http_port}/v1/{'chat/completions' if chat else 'completions'}"
    body: dict = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})
    chunks, usage, finish = 0, None, None
    with httpx.stream("POST", url, json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            ch = d["choices"][0]
            if ch["finish_reason"] is None:
                chunks += 1
            else:
                finish, usage = ch["finish_reason"], d.get("usage")
    out.append((chunks, usage, finish))


def test_serve_attach_counts_and_reconnect() -> None:
    http_port, agent_port = _free_port(), _free_port()
    proc = _start_server(http_port, agent_port)
    p = build_attach_pipeline(
        [f"llmtop://127.0.0.1:{agent_port}", f"http://127.0.0.1:{http_port}/metrics"],
        Aggregator(30.0),
        interval=0.2,
    )
    agent_c = next(c for c in p.collectors if isinstance(c, AgentCollector))
    prom_c = next(c for c in p.collectors if isinstance(c, PrometheusCollector))
    agent_c.backoff = (0.1, 0.5)
    prom_c.backoff = (0.1, 0.5)
    p.start()
    try:
        assert _wait(lambda: agent_c.link == "connected" and prom_c.link == "connected")
        results: list = []
        prompts = ["Name a color.", "Count to three.", "Say hello."]
        threads = [
            threading.Thread(target=_stream, args=(http_port, pr, 6, results, i % 2 == 0))
            for i, pr in enumerate(prompts)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 3
        received = sum(c for c, _, _ in results)
        assert all(u is not None and u["completion_tokens"] == c for c, u, _ in results)
        assert all(f in ("stop", "length") for _, _, f in results)
        assert 3 <= received <= 18
        # the viewer saw exactly the tokens the clients received, through the agent and through /metrics
        assert _wait(lambda: agent_c.gen_tokens == received, 10), (agent_c.gen_tokens, received)
        assert _wait(lambda: prom_c.latest.get("gen_tokens_total") == received, 10)
        assert prom_c.latest.get("ttft_count") == 3.0
        rows = {r.label: r for r in target_rows(p)}
        assert rows["total"].gen_tokens == 2 * received
        events_before = p.ingested_events
        assert events_before > 0
        snap = p.snapshot(mode="cumulative").report
        assert snap["kernels"] and snap["source"]["kind"] == "attach"
        assert _wait(lambda: p.snapshot(mode="cumulative").report["tokens"]["generated"] == received, 5)

        _kill(proc)  # the server dies mid-run
        assert _wait(lambda: agent_c.link == "disconnected" and prom_c.link == "disconnected")
        assert agent_c.gen_tokens == received  # last data kept
        assert p.snapshot().report["kernels"]
        proc = _start_server(http_port, agent_port)
        assert _wait(lambda: agent_c.link == "connected" and agent_c.connects == 2, 30)
        assert _wait(lambda: prom_c.link == "connected", 30)
        r = httpx.post(
            f"http://127.0.0.1:{http_port}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60
        ).json()
        n = r["usage"]["completion_tokens"]
        assert r["choices"][0]["finish_reason"] in ("stop", "length") and 1 <= n <= 3
        assert _wait(lambda: agent_c.gen_tokens == received + n, 10)
        assert not p.status().errors
    finally:
        p.stop()
        _kill(proc)


def test_serve_rejects_bad_requests() -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from llmtop.serve.app import build_app
    from llmtop.serve.metrics import ServeMetrics
    from llmtop.serve.scheduler import Scheduler

    class _Eng:
        max_batch, max_context, tokenizer = 2, 64, None

        def encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
            return [1] * len(prompt)

    eng = _Eng()
    app = build_app(eng, Scheduler(eng), ServeMetrics("m"), "m")
    with TestClient(app) as c:
        assert c.post("/v1/completions", content=b"{not json").status_code == 400
        assert c.post("/v1/completions", json={"prompt": 3}).status_code == 400
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 0}).status_code == 400
        assert c.post("/v1/completions", json={"prompt": "x", "temperature": -1}).status_code == 400
        assert c.post("/v1/chat/completions", json={"messages": []}).status_code == 400
        r = c.post("/v1/completions", json={"prompt": "x" * 100})
        assert r.status_code == 400 and "context" in r.json()["error"]["message"]
        assert "vllm:num_requests_waiting" in c.get("/metrics").text
