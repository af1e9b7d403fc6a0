"""The Servers pane over two real `llmtop serve` processes on the shipped model (issue 16).

Real clients send completions with `max_tokens`; the tokens each got (their `usage`) are what the pane must
show: per server within 10 s of the last answer, with a tok/s above 0 while they generate, and a total row
equal to the sum. Killing one server shows it "disconnected" while the other keeps updating. The viewer is
exactly what `llmtop attach URL URL` builds, read through Textual's pilot.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from llmtop.cli import attach_parser, build_attach_session
from llmtop.tui.panes import ServersPane, TokenPane

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLMTOP_AGENT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "llmtop.serve", "--backend", "cpu", "--model", "default", "--port", str(port),
         "--agent", "off", "--threads", "1", "--max-batch", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


def _healthy(proc: subprocess.Popen[bytes], port: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not come up")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def _complete(port: int, prompts: list[str], max_tokens: int, got: list[int]) -> None:
    """Sequential completions; appends each one's completion_tokens (the count the client received)."""
    for p in prompts:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"prompt": p, "max_tokens": max_tokens}, timeout=120)
        assert r.status_code == 200, r.text
        got.append(int(r.json()["usage"]["completion_tokens"]))


def _clients(port: int, n: int, max_tokens: int) -> tuple[threading.Thread, list[int]]:
    got: list[int] = []
    prompts = [f"Write a short story about the number {i}." for i in range(n)]
    t = threading.Thread(target=_complete, args=(port, prompts, max_tokens, got), daemon=True)
    t.start()
    return t, got


def _rows(app: Any) -> dict[str, dict[str, Any]]:
    return {str(r["label"]): dict(r) for r in app.query_one(ServersPane).rows}


async def _until(pilot: Any, cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await pilot.pause(0.1)
    return cond()


def test_two_serve_processes_two_rows_total_and_a_kill() -> None:
    ports = [_free_port(), _free_port()]
    procs = [_start_serve(p) for p in ports]
    try:
        for proc, port in zip(procs, ports, strict=True):
            _healthy(proc, port)
        labels = [f"127.0.0.1:{p}" for p in ports]
        urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
        args = attach_parser().parse_args([*urls, "--interval", "0.25"])
        sess = build_attach_session(args)

        async def main() -> None:
            app = sess.app
            async with app.run_test(size=(200, 50)) as pilot:
                assert await _until(pilot, lambda: len(_rows(app)) == 3 and all(
                    r["link"] == "connected" for r in _rows(app).values() if r["kind"] != "total"), 30)
                # clients with known token counts on both servers, at the same time
                (t0, got0), (t1, got1) = _clients(ports[0], 3, 24), _clients(ports[1], 2, 16)
                t_start = time.monotonic()
                seen_rate = [0.0, 0.0]

                def rates() -> bool:
                    rows = _rows(app)
                    for i, lab in enumerate(labels):
                        r = rows[lab].get("gen_tok_s")
                        if r is not None and r == r:
                            seen_rate[i] = max(seen_rate[i], r)
                    return all(x > 0 for x in seen_rate)

                assert await _until(pilot, rates, 10), seen_rate  # tok/s > 0 within 10 s
                t0.join(120)
                t1.join(120)
                assert len(got0) == 3 and len(got1) == 2 and all(n > 0 for n in got0 + got1)
                want = {labels[0]: float(sum(got0)), labels[1]: float(sum(got1))}
                def all_shown() -> bool:
                    return all(_rows(app)[k]["gen_tokens"] == v for k, v in want.items())

                shown = await _until(pilot, all_shown, 10)
                assert shown, (_rows(app), want, time.monotonic() - t_start)
                rows = _rows(app)
                assert rows["total"]["gen_tokens"] == sum(want.values())  # the total is their sum
                assert rows["total"]["link"] == "2/2 connected"
                text = app.query_one(ServersPane).text()
                line = {ln.split()[0]: ln for ln in text.splitlines()[1:]}
                for k, v in want.items():
                    assert f"{v:.0f}" in line[k].split() and "connected" in line[k]
                assert f"{sum(want.values()):.0f}" in line["total"].split()
                assert f"generated {sum(want.values()):.0f}" in app.query_one(TokenPane).text()
                ttft = rows[labels[0]]["ttft_p50_s"]
                assert ttft == ttft and ttft > 0  # the histogram deltas of the window: requests happened

                # one server dies: its row says so, the other keeps updating
                _kill(procs[1])
                assert await _until(pilot, lambda: _rows(app)[labels[1]]["link"] == "disconnected", 15)
                assert _rows(app)[labels[1]]["gen_tokens"] == want[labels[1]]  # what it generated stays
                t2, got2 = _clients(ports[0], 1, 8)
                t2.join(120)
                more = want[labels[0]] + sum(got2)
                assert await _until(pilot, lambda: _rows(app)[labels[0]]["gen_tokens"] == more, 10)
                rows = _rows(app)
                assert rows[labels[0]]["link"] == "connected" and rows["total"]["link"] == "1/2 connected"
                line = next(ln for ln in app.query_one(ServersPane).text().splitlines()
                            if ln.startswith(labels[1]))
                assert "disconnected" in line

        with sess:
            asyncio.run(main())
    finally:
        for proc in procs:
            _kill(proc)
