"""`llmtop serve` under faults, on real processes and real sockets (the shipped SmolLM2 on the CPU):
poison requests next to normal ones, clients that disconnect mid-generation, SIGTERM under load, and the
start-up checks that must refuse before the model loads."""

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

pytest.importorskip("uvicorn")
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
CTX = 1024
LONG = "Hello"  # greedy SmolLM2 rambles on after this one (a repeating phrase), no early EOS
DRAIN_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float = 20.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return False


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("LLMTOP_AGENT", "LLMTOP_AGENT_TOKEN", "LLMTOP_API_KEY"):
        env.pop(k, None)
    return env


def _llmtop(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "llmtop", *args], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=timeout)
    return r, time.monotonic() - t0


class Server:
    """`llmtop serve` (the CLI entry point) in its own session, stderr to a file."""

    def __init__(self, log: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmtop", "serve", "--backend", "cpu", "--model", "default",
                 "--port", str(self.port), "--agent", "off", "--threads", "1", "--max-batch", "4",
                 "--max-context", str(CTX), "--log-level", "info", *extra],
                cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.stderr()[-2000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not _wait(healthy, 180, 0.1):
            self.kill()
            raise AssertionError("server did not come up")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> dict[tuple[str, str], float]:
        """{(sample name, finished_reason label or ""): value}"""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, s.labels.get("finished_reason", ""))] = s.value
        return out

    def gauge(self, name: str, label: str = "") -> float:
        return self.metrics().get((name, label), 0.0)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve") / "stderr.log")
    yield s
    s.kill()


def _post(url: str, body: dict | bytes, path: str = "/v1/completions",
          timeout: float = 120) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(url + path, content=body, headers={"content-type": "application/json"},
                          timeout=timeout)
    return httpx.post(url + path, json=body, timeout=timeout)


POISON = [
    b'{"prompt": "Hi", "max_tokens": 1e20}',
    b'{"prompt": "Hi", "max_tokens": Infinity}',
    b'{"prompt": "Hi", "max_tokens": NaN}',
    b'{"prompt": "Hi", "temperature": NaN, "max_tokens": 4}',
    b'{"prompt": "Hi", "seed": 1180591620717411303424, "max_tokens": 4}',
    b'{"prompt": "Hi", "stream": "false", "max_tokens": 4}',
    b'{"prompt": "Hi", "model": "gpt-4o", "max_tokens": 4}',
    b'{"prompt": "Hi", "max_tokens": 2000}',
    b'{"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 1e20}',
]


def test_poison_and_normal_requests_together(server: Server) -> None:
    results: dict[str, httpx.Response] = {}

    def go(key: str, body: dict | bytes, path: str = "/v1/completions") -> None:
        results[key] = _post(server.url, body, path)

    threads = [threading.Thread(target=go, args=(f"poison{i}", b, "/v1/chat/completions" if b"messages" in b
                                                 else "/v1/completions")) for i, b in enumerate(POISON)]
    threads += [threading.Thread(target=go, args=(f"normal{i}", {"prompt": p, "max_tokens": 8}))
                for i, p in enumerate(["Name a color.", "Count to three.", "Say hello."])]
    threads.append(threading.Thread(target=go, args=(
        "chat", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}, "/v1/chat/completions")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(len(POISON)):
        r = results[f"poison{i}"]
        assert r.status_code == (404 if b"gpt-4o" in POISON[i] else 400), (POISON[i], r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    for key in ("normal0", "normal1", "normal2", "chat"):
        r = results[key]
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 1 <= body["usage"]["completion_tokens"] <= 8
    log = server.stderr()
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


def _start_nonstreaming(url: str, max_tokens: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": LONG, "max_tokens": max_tokens}).encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def _generating(server: Server, since: float, n: int = 1) -> bool:
    m = server.metrics()
    return (m.get(("vllm:num_requests_running", ""), 0) >= n
            and m.get(("vllm:generation_tokens_total", ""), 0) >= since + 3)


def _assert_aborted_and_free(server: Server, aborts_before: float) -> None:
    abort = ("vllm:request_success_total", "abort")
    assert _wait(lambda: server.metrics().get(abort, 0) == aborts_before + 1, 5), server.metrics()
    g0 = server.gauge("vllm:generation_tokens_total")
    time.sleep(0.5)
    assert server.gauge("vllm:generation_tokens_total") == g0  # nothing generates for the gone client
    assert server.gauge("vllm:num_requests_running") == 0
    t0 = time.monotonic()
    r = _post(server.url, {"prompt": "Hi", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert time.monotonic() - t0 < 10  # not queued behind a ~1,000-token generation (~40 s here)


def test_disconnected_nonstreaming_client_aborts(server: Server) -> None:
    aborts = server.gauge("vllm:request_success_total", "abort")
    gen = server.gauge("vllm:generation_tokens_total")
    s = _start_nonstreaming(server.url, CTX - 50)
    try:
        assert _wait(lambda: _generating(server, gen), 60, 0.1)
    finally:
        s.close()  # the client goes away before its answer
    _assert_aborted_and_free(server, aborts)
    assert _wait(lambda: "aborted after" in server.stderr() and "client disconnected" in server.stderr(), 5)


def test_disconnected_streaming_client_aborts(server: Server) -> None:
    aborts = server.gauge("vllm:request_success_total", "abort")
    body = {"prompt": LONG, "max_tokens": CTX - 50, "stream": True}
    chunks = 0
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks += 1
                if chunks == 3:
                    break  # leaving the block closes the connection mid-stream
    _assert_aborted_and_free(server, aborts)


def test_sigterm_under_load_drains_then_exits(tmp_path) -> None:
    srv = Server(tmp_path / "stderr.log")
    out: dict[str, object] = {}

    def stream(key: str, max_tokens: int) -> None:
        finish = None
        try:
            with httpx.stream("POST", f"{srv.url}/v1/completions", timeout=60,
                              json={"prompt": LONG, "max_tokens": max_tokens, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
        except httpx.HTTPError as e:
            finish = f"error: {e!r}"
        out[key] = finish

    def plain(key: str, max_tokens: int) -> None:
        try:
            r = _post(srv.url, {"prompt": LONG, "max_tokens": max_tokens}, timeout=60)
            out[key] = r.json()["choices"][0]["finish_reason"]
        except httpx.HTTPError as e:
            out[key] = f"error: {e!r}"

    def gauge(name: str) -> float:
        return srv.gauge(f"vllm:num_requests_{name}")

    # Batches form when a generation starts: while a first request runs, queue four more, so that they
    # make the next batch together. Three would run ~40 s; one finishes inside the drain window.
    blocker = threading.Thread(target=plain, args=("blocker", 80))
    batch = [threading.Thread(target=stream, args=("s1", CTX - 50)),
             threading.Thread(target=stream, args=("s2", CTX - 50)),
             threading.Thread(target=plain, args=("p1", CTX - 50)),
             threading.Thread(target=plain, args=("short", 40))]
    try:
        blocker.start()
        assert _wait(lambda: gauge("running") == 1, 60, 0.02)
        for t in batch:
            t.start()
        assert _wait(lambda: gauge("waiting") == 4, 60, 0.02), srv.metrics()
        assert gauge("running") == 1, "the first request ended before the others were queued"
        assert _wait(lambda: gauge("running") == 4, 60, 0.02), srv.metrics()
        g = srv.gauge("vllm:generation_tokens_total")
        assert _wait(lambda: srv.gauge("vllm:generation_tokens_total") >= g + 8, 60, 0.05)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(DRAIN_S + 10)
        elapsed = time.monotonic() - t0
    finally:
        srv.kill()
    for t in [blocker, *batch]:
        t.join(30)
    log = srv.stderr()
    assert rc == 0, log[-2000:]
    assert DRAIN_S - 0.5 <= elapsed <= DRAIN_S + 2.5, (elapsed, log[-2000:])
    assert out == {"blocker": "length", "s1": "abort", "s2": "abort", "p1": "abort", "short": "length"}, out
    assert "SIGTERM: stopping; 4 request(s) in flight get up to 5 s to finish" in log
    assert "drain timeout: aborted 3 request(s)" in log
    assert "Traceback" not in log


def test_sigterm_when_idle_exits_at_once(tmp_path) -> None:
    srv = Server(tmp_path / "stderr.log")
    try:
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(DRAIN_S + 10)
        elapsed = time.monotonic() - t0
    finally:
        srv.kill()
    assert rc == 0 and elapsed < 2.0, (rc, elapsed, srv.stderr()[-2000:])


# -- refused before the model loads (a model path that does not exist proves the order) -------------------

MISSING = "/nonexistent/model.gguf"


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmtop: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_agent_without_token_refused_before_model_load() -> None:
    r, took = _llmtop("serve", "--port", str(_free_port()), "--agent", f"0.0.0.0:{_free_port()}",
                      "--model", MISSING)
    assert r.returncode == 2
    line = _one_error_line(r)
    assert "not loopback" in line and "token" in line and "model" not in line
    assert took < 20


def test_agent_port_in_use_refused_before_model_load() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r, took = _llmtop("serve", "--port", str(_free_port()), "--agent", f"127.0.0.1:{port}",
                          "--model", MISSING)
        assert r.returncode == 1
        assert "agent cannot listen" in _one_error_line(r)
        # the HTTP port in use: the same, before the model loads
        r, _ = _llmtop("serve", "--port", str(port), "--agent", "off", "--model", MISSING)
        assert r.returncode == 1 and "cannot listen on 127.0.0.1" in _one_error_line(r)
    assert took < 20
    # with a token the agent may bind beyond loopback; the next failure is then the model's
    r, _ = _llmtop("serve", "--port", str(_free_port()), "--agent", f"0.0.0.0:{_free_port()}",
                   "--agent-token", "t", "--model", MISSING)
    assert r.returncode == 1 and "model" in _one_error_line(r)


def test_host_beyond_loopback_warns_without_api_key() -> None:
    warning = "warning: --host 0.0.0.0 is not loopback and the HTTP API has no authentication"
    r, _ = _llmtop("serve", "--host", "0.0.0.0", "--port", str(_free_port()), "--agent", "off",
                   "--model", MISSING)
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 2, r.stderr
    assert lines[0].startswith("llmtop serve: " + warning) and "--api-key" in lines[0]
    assert lines[1].startswith("llmtop: error: ")
    for args in (["--host", "0.0.0.0", "--api-key", "k"], ["--host", "127.0.0.1"], ["--host", "localhost"]):
        r, _ = _llmtop("serve", *args, "--port", str(_free_port()), "--agent", "off", "--model", MISSING)
        assert r.returncode == 1 and "warning" not in r.stderr, (args, r.stderr)
    r, _ = _llmtop("serve", "--api-key", "", "--agent", "off", "--model", MISSING)
    assert r.returncode == 2 and "--api-key is empty" in _one_error_line(r)
