"""The Servers pane (issue 16) driven by the real vLLM 0.32 and llama.cpp captures in
tests/fixtures/prometheus/, served by real HTTP servers on 127.0.0.1 and scraped by exactly what `llmtop
attach URL URL` builds; the pane is read through Textual's pilot. Numbers are checked against values
computed here from the raw text.
"""

from __future__ import annotations

import asyncio
import http.server
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixture_paths import PROMETHEUS_DIR as FIX

from llmtop.cli import attach_parser, build_attach_session
from llmtop.tui.app import LlmtopApp
from llmtop.tui.panes import AttentionPane, KernelTable, LayerPane, ServersPane, SourceNote, TokenPane
from llmtop.tui.panes.servers import fmt_s, sort_rows, sparkline

IDLE = FIX / "vllm_cpu_0.32_idle.txt"
AFTER = FIX / "vllm_cpu_0.32_after_requests.txt"
LLAMA = FIX / "llamacpp_server_scrape1_after_request.txt"
SIZE = (200, 50)


class Replay:
    """A real HTTP server on 127.0.0.1 answering GET /metrics with `bodies` in turn, then the last one."""

    def __init__(self, bodies: list[bytes], port: int = 0) -> None:
        self.bodies = bodies
        self.hits = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = outer.bodies[min(outer.hits, len(outer.bodies) - 1)]
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.label = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def _raw(path: Path) -> dict[str, float]:
    """name{labels} -> value straight from the text (no prometheus_client), labels summed away by name."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            key = m.group(1) + (m.group(2) or "")
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def _quantile_by_hand(q: float, metric: str) -> float:
    """Prometheus histogram_quantile over the bucket deltas between the two vLLM captures."""
    a, b = _raw(IDLE), _raw(AFTER)

    def buckets(d: dict[str, float]) -> dict[float, float]:
        out: dict[float, float] = {}
        for k, v in d.items():
            m = re.match(re.escape(metric) + r'_bucket\{.*le="([^"]+)"', k)
            if m:
                le = float(m.group(1))
                out[le] = out.get(le, 0.0) + v
        return out

    ba, bb = buckets(a), buckets(b)
    delta = sorted((le, bb[le] - ba.get(le, 0.0)) for le in bb)
    rank = q * delta[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in delta:
        if c >= rank:
            return prev_le if math.isinf(le) else prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    raise AssertionError


async def _until(pilot: Any, cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await pilot.pause(0.1)
    return cond()


def _session(*argv: str) -> Any:
    return build_attach_session(attach_parser().parse_args([*argv, "--interval", "0.2"]))


def _rows(app: LlmtopApp) -> dict[str, dict[str, Any]]:
    return {str(r["label"]): dict(r) for r in app.query_one(ServersPane).rows}


def test_real_captures_fill_the_servers_pane() -> None:
    vllm = Replay([IDLE.read_bytes(), AFTER.read_bytes()])  # the counters advance between two scrapes
    llama = Replay([LLAMA.read_bytes()])
    sess = _session(vllm.url, llama.url)
    raw_after, raw_llama = _raw(AFTER), _raw(LLAMA)
    gen_vllm = raw_after['vllm:generation_tokens_total{engine="0",model_name="tiny"}']
    gen_llama = raw_llama["llamacpp:tokens_predicted_total"]
    ttft50 = _quantile_by_hand(0.5, "vllm:time_to_first_token_seconds")
    ttft95 = _quantile_by_hand(0.95, "vllm:time_to_first_token_seconds")
    itl50 = _quantile_by_hand(0.5, "vllm:inter_token_latency_seconds")
    e2e50 = _quantile_by_hand(0.5, "vllm:e2e_request_latency_seconds")

    async def main() -> None:
        app = sess.app
        async with app.run_test(size=SIZE) as pilot:
            pane = app.query_one(ServersPane)
            ok = await _until(pilot, lambda: _rows(app).get(vllm.label, {}).get("gen_tokens") == gen_vllm
                              and _rows(app).get(llama.label, {}).get("gen_tokens") == gen_llama
                              and _rows(app).get("total", {}).get("ttft_p50_s") is not None
                              and not math.isnan(_rows(app)["total"]["ttft_p50_s"]))
            rows = _rows(app)
            assert ok, rows
            # one row per target plus the total, the total last
            assert [r["label"] for r in pane.rows] == [*sorted([vllm.label, llama.label]), "total"]
            v, ll, tot = rows[vllm.label], rows[llama.label], rows["total"]
            assert v["kind"] == "vllm" and ll["kind"] == "llamacpp" and v["model"] == "tiny"
            assert v["link"] == ll["link"] == "connected" and tot["link"] == "2/2 connected"
            assert v["ttft_p50_s"] == pytest.approx(ttft50) and v["ttft_p95_s"] == pytest.approx(ttft95)
            assert v["itl_p50_s"] == pytest.approx(itl50) and v["e2e_p50_s"] == pytest.approx(e2e50)
            assert v["preemptions"] == 0 and v["failed"] == 0 and v["aborted"] == 0
            assert math.isnan(ll["ttft_p50_s"])  # llama.cpp exports no histograms
            # the total: sums, and the fleet's percentiles from the summed bucket deltas (vLLM's alone here)
            assert tot["gen_tokens"] == gen_vllm + gen_llama
            assert tot["ttft_p50_s"] == pytest.approx(ttft50)
            # what the terminal shows
            text = pane.text()
            line = {ln.split()[0]: ln for ln in text.splitlines()[1:]}
            assert f"{gen_vllm:.0f}" in line[vllm.label].split() and fmt_s(ttft50) in line[vllm.label]
            assert f"{gen_vllm + gen_llama:.0f}" in line["total"].split() and "2/2 up" in line["total"]
            assert "percentiles over last 30 s (histogram deltas)" in str(pane.border_title)
            # a /metrics-only source: the token pane from the same numbers, one line instead of the op panes
            tok = app.query_one(TokenPane)
            assert f"generated {gen_vllm + gen_llama:.0f}" in tok.text() and "TTFT p50/p95" in tok.text()
            for cls in (LayerPane, AttentionPane, KernelTable):
                assert not app.query_one(cls).display
            note = app.query_one(SourceNote)
            assert note.display and "/metrics has no kernels, layers" in note.content.plain
            assert "llmtop run --" in note.content.plain
            # focus moves once the pane has been styled visible (the frame after the rows arrive)
            assert await _until(pilot, lambda: app.focused is pane), app.focused

            # s cycles the sort column, and the title and the header say which
            await pilot.press("s")
            assert "sort gen tok/s" in str(pane.border_title) and "▼gen t/s" in pane.text().splitlines()[0]
            await pilot.press("s", "s")  # prompt tok/s, then generated: the vLLM target first
            assert "sort generated" in str(pane.border_title)
            assert [r["label"] for r in pane.rows] == [vllm.label, llama.label, "total"]
            # enter drills into the row under the cursor: that target alone, escape comes back
            await pilot.press("home", "enter")
            await pilot.pause(0.3)
            assert [r["label"] for r in pane.rows] == [vllm.label]
            assert vllm.label in str(pane.border_title) and "esc: all targets" in str(pane.border_title)
            assert vllm.label in str(tok.border_title) and f"generated {gen_vllm:.0f}" in tok.text()
            await pilot.press("escape")
            await pilot.pause(0.3)
            assert len(pane.rows) == 3 and "all targets" in str(tok.border_title)

    try:
        with sess:
            asyncio.run(main())
    finally:
        vllm.close()
        llama.close()


def test_a_target_that_goes_away_shows_disconnected_and_comes_back() -> None:
    a = Replay([IDLE.read_bytes(), AFTER.read_bytes()])
    b = Replay([IDLE.read_bytes()])
    sess = _session(a.url, b.url)
    port = b.port

    async def main() -> None:
        nonlocal b
        app = sess.app
        async with app.run_test(size=SIZE) as pilot:
            assert await _until(pilot, lambda: all(r.get("link") == "connected" for r in _rows(app).values()
                                                   if r["kind"] != "total") and len(_rows(app)) == 3)
            b.close()
            assert await _until(pilot, lambda: _rows(app)[b.label]["link"] == "disconnected")
            rows = _rows(app)
            assert math.isnan(rows[b.label]["gen_tok_s"])  # not current: blank, not the last value
            idle_gen = _raw(IDLE)['vllm:generation_tokens_total{engine="0",model_name="tiny"}']
            assert rows[b.label]["gen_tokens"] == idle_gen  # the lifetime count stays
            assert rows["total"]["link"] == "1/2 connected"
            hits = a.hits
            assert await _until(pilot, lambda: a.hits > hits + 2)  # the other one keeps being scraped
            assert _rows(app)[a.label]["link"] == "connected"
            line = next(ln for ln in app.query_one(ServersPane).text().splitlines() if ln.startswith(b.label))
            assert "disconnected" in line
            b = Replay([AFTER.read_bytes()], port=port)
            assert await _until(pilot, lambda: _rows(app)[b.label]["link"] == "connected")

    try:
        with sess:
            asyncio.run(main())
    finally:
        a.close()
        b.close()


def test_sparkline_and_sorting_helpers() -> None:
    # 10 cells over 10 s ending at t=100: one point per second, rising; a gap shows as a blank cell
    pts = [(91.0 + i, float(i)) for i in range(10) if i != 4]
    s = sparkline(pts, 10.0, 10, end=101.0)
    assert len(s) == 10 and s[4] == " " and s[0] == "▁" and s[-1] == "█"
    assert sparkline([], 10.0, 5, end=1.0) == " " * 5
    assert (fmt_s(0.0167), fmt_s(0.0062), fmt_s(1.2), fmt_s(None)) == ("17ms", "6.2ms", "1.20s", "–")
    rows: list[Any] = [{"label": "b", "gen_tok_s": 1.0}, {"label": "a", "gen_tok_s": math.nan},
                       {"label": "total", "kind": "total", "gen_tok_s": 9.0},
                       {"label": "c", "gen_tok_s": 5.0}]
    assert [r["label"] for r in sort_rows(rows, "gen_tok_s")] == ["c", "b", "a", "total"]
    assert [r["label"] for r in sort_rows(rows, "label")] == ["a", "b", "c", "total"]
