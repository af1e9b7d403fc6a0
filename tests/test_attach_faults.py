"""`llmtop attach --once` against targets that fail: real `llmtop` processes and real HTTP servers.

Exit 2 when no target ever answered (nothing listening, 404, not a metrics page); an outage lived through
is a `warnings` line with its length and the target's status says so; control characters a server sends
(model names, error text) never reach the terminal raw.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixture_paths import PROMETHEUS_DIR

import llmtop.agent as agent_mod
from llmtop.agent import wire
from llmtop.attach import attach_once, build_attach_pipeline, target_rows
from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.stats import Aggregator

ROOT = Path(__file__).resolve().parents[1]
IDLE = PROMETHEUS_DIR / "vllm_cpu_0.32_idle.txt"
AFTER = PROMETHEUS_DIR / "vllm_cpu_0.32_after_requests.txt"
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m"  # set the window title, clear the screen, a C1 CSI

# A real metrics server in its own process: GET /metrics serves FILE (404 without one, or for any other
# path); one line on stdout per request it answered, after the line with its port.
SERVER = r"""
import http.server, sys
body = open(sys.argv[2], "rb").read() if len(sys.argv) > 2 else None
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = body is not None and self.path == "/metrics"
        data = body if ok else b"not here"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        print("GET", self.path, flush=True)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


class Server:
    """The server process; `hits` counts the requests it answered."""

    def __init__(self, tmp: Path, port: int = 0, body: Path | None = None) -> None:
        script = tmp / "metrics_server.py"
        script.write_text(SERVER)
        args = [sys.executable, str(script), str(port)] + ([str(body)] if body else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.lines.get(timeout=30))
        self.hits = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_hits(self, n: int, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while self.hits < n:
            self.lines.get(timeout=max(0.01, end - time.monotonic()))
            self.hits += 1

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ATTACH = [sys.executable, "-m", "llmtop", "attach", "--once"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _attach(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ATTACH, *args], capture_output=True, text=True, timeout=timeout, env=ENV,
                          cwd=ROOT)


def _start_attach(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*ATTACH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT)


def test_unreachable_targets_exit_2_in_time() -> None:
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    r = _attach("--duration", "1", f"http://127.0.0.1:{port}/metrics", f"llmtop://127.0.0.1:{port}",
                timeout=30)
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - t0 < 30
    assert r.stdout == ""
    err = r.stderr.strip()
    assert err.startswith("llmtop: error: no target answered in 1 s:") and len(err.splitlines()) == 1
    assert err.count(f"127.0.0.1:{port}") == 2 and "refused" in err.lower()


def test_404_and_not_metrics_exit_2(tmp_path: Path) -> None:
    srv = Server(tmp_path)  # 404 for everything
    page = tmp_path / "page.html"
    page.write_text("<html><body>" + HOSTILE + "hello</body></html>\n")
    html = Server(tmp_path, body=page)  # 200, but a web page
    try:
        r = _attach("--duration", "1", f"http://127.0.0.1:{srv.port}", timeout=30)
        assert r.returncode == 2, r.stderr
        assert "HTTP 404" in r.stderr and r.stdout == ""
        r = _attach("--duration", "1", "--format", "json", f"http://127.0.0.1:{html.port}/metrics",
                    timeout=30)
        assert r.returncode == 2, r.stderr
        assert "no target answered" in r.stderr and r.stdout == ""
        assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    finally:
        srv.kill()
        html.kill()


def test_one_target_reached_is_exit_0_and_the_other_a_warning(tmp_path: Path) -> None:
    srv = Server(tmp_path, body=IDLE)
    dead = _free_port()
    try:
        r = _attach("--duration", "1.5", "--interval", "0.2", "--format", "json",
                    f"http://127.0.0.1:{srv.port}", f"http://127.0.0.1:{dead}", timeout=30)
    finally:
        srv.kill()
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    rows = {x["label"]: x for x in rep["attach"]}
    assert rows[f"127.0.0.1:{srv.port}"]["reached"] and not rows[f"127.0.0.1:{dead}"]["reached"]
    assert any(w.startswith(f"127.0.0.1:{dead}: never reached") for w in rep["warnings"])
    assert rows[f"127.0.0.1:{srv.port}"]["status"] == "connected"


def test_outage_mid_run_is_a_warning_with_its_length(tmp_path: Path) -> None:
    srv = Server(tmp_path, body=IDLE)
    port = srv.port
    att = _start_attach("--duration", "9", "--interval", "0.2", "--format", "json",
                        f"http://127.0.0.1:{port}/metrics")
    down_s = 2.5
    try:
        srv.wait_hits(2)  # the attach process is scraping
        srv.kill()
        t_down = time.monotonic()
        time.sleep(down_s)
        srv = Server(tmp_path, port=port, body=AFTER)
        srv.wait_hits(1)  # and scrapes again
        lived = time.monotonic() - t_down
        out, err = att.communicate(timeout=60)
    finally:
        if att.poll() is None:
            att.kill()
        srv.kill()
    assert att.returncode == 0, err
    rep = json.loads(out)
    row = rep["attach"][0]
    assert row["reached"] and row["link"] == "connected" and len(row["outages"]) == 1
    o = row["outages"][0]
    # from the first failed scrape to the first good one: less than the server was away, by at most one
    # scrape interval, and at most the time we waited for its next scrape
    assert down_s - 0.5 <= o["duration_s"] <= lived + 0.2 and not o["ongoing"]
    assert row["disconnected_s"] == pytest.approx(o["duration_s"])
    assert row["status"] == f"connected; disconnected {o['duration_s']:.1f} s"
    lines = [w for w in rep["warnings"] if w.startswith(f"127.0.0.1:{port}: disconnected ")]
    assert lines == [f"127.0.0.1:{port}: disconnected {o['duration_s']:.1f} s "
                     f"(from {o['start_s']:.1f} s into the run, then reconnected)"]


def test_agent_outage_and_an_ongoing_one() -> None:
    port = _free_port()
    e = SyntheticEngine(n_layers=2, step_time_s=0.005)
    a = agent_mod.start(f"127.0.0.1:{port}", engine=e)
    p = build_attach_pipeline([f"llmtop://127.0.0.1:{port}"], Aggregator(30.0), backoff=(0.05, 0.2))
    p.start()
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and target_rows(p)[0].link != "connected":
            time.sleep(0.02)
        a.close()
        time.sleep(1.0)
        a = agent_mod.start(f"127.0.0.1:{port}", engine=e)
        while time.monotonic() < end and not (target_rows(p)[0].link == "connected"
                                               and target_rows(p)[0].outages):
            time.sleep(0.02)
        row = target_rows(p)[0]
        assert row.link == "connected" and len(row.outages) == 1 and not row.outages[0]["ongoing"]
        assert 0.9 <= row.outages[0]["duration_s"] < 5
        assert row.status.startswith("connected; disconnected ")
        a.close()  # and gone again, until the end
        while time.monotonic() < end and target_rows(p)[0].link == "connected":
            time.sleep(0.02)
        time.sleep(0.3)
        row = target_rows(p)[0]
        assert len(row.outages) == 2 and row.outages[1]["ongoing"] and row.outages[1]["duration_s"] >= 0.3
        assert row.link == "disconnected" and "2 outages" in row.status
    finally:
        p.stop()
        a.close()


def test_remote_control_characters_are_escaped(tmp_path: Path) -> None:
    body = tmp_path / "hostile.txt"
    body.write_bytes(IDLE.read_bytes().replace(b'model_name="tiny"', f'model_name="{HOSTILE}"'.encode()))
    srv = Server(tmp_path, body=body)
    try:
        outs = {fmt: _attach("--duration", "0.6", "--interval", "0.2", "--format", fmt,
                             f"http://127.0.0.1:{srv.port}", timeout=30)
                for fmt in ("text", "markdown", "json")}
    finally:
        srv.kill()
    for fmt, r in outs.items():
        assert r.returncode == 0, (fmt, r.stderr)
        for c in ("\x1b", "\x07", "\x9b"):
            assert c not in r.stdout and c not in r.stderr, fmt
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m" in outs["text"].stdout
    assert json.loads(outs["json"].stdout)["source"]["model"] == HOSTILE.translate(
        {c: f"\\x{c:02x}" for c in (0x1B, 0x07, 0x9B)})


def test_hostile_agent_text_is_escaped() -> None:
    """Kernel names, the source and a refusal message from an agent arrive escaped."""
    a = agent_mod.start("127.0.0.1:0")
    a.set_source(a.source.__class__(kind="live", model="m" + HOSTILE))
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with a.step("decode", tokens=1), a.kernel("evil" + HOSTILE, "matmul"):
                pass
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        rep = attach_once([f"llmtop://{a.address}"], Aggregator(30.0), duration_s=1.0)
    finally:
        stop.set()
        t.join(5)
        a.close()
    names = [k["name"] for k in rep["kernels"]]
    assert any(n.startswith("evil\\x1b]0;pwned") for n in names)
    assert not any(c in json.dumps(rep, ensure_ascii=False) for c in ("\x1b", "\x07", "\x9b"))

    # a fake agent that refuses with a hostile message
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def fake() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                wire.read_hello(conn)
                conn.sendall(wire.encode_welcome(wire.BAD_TOKEN, time.perf_counter_ns(), HOSTILE))

    threading.Thread(target=fake, daemon=True).start()
    try:
        rep = attach_once([f"llmtop://127.0.0.1:{srv.getsockname()[1]}"], Aggregator(), duration_s=0.5)
    finally:
        srv.close()
    row = rep["attach"][0]
    assert row["link"] == "refused" and not row["reached"]
    assert "\\x1b]0;pwned" in row["error"] and "\x1b" not in row["error"]
