"""`llmtop serve` aggregate throughput with 1, 4 and 8 concurrent streaming clients: a markdown table.

Starts `python -m llmtop.serve` in a subprocess (CPU, shipped model, max batch 8), then for each
concurrency C runs C clients that each send `--requests` streaming completions back to back. Aggregate
tok/s = completion tokens received by all clients / wall time; the speed-up is against one client.

    python benchmarks/bench_serve.py [--clients 1,4,8] [--requests 2] [--tokens 24] [--threads 1]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(port: int, n: int, tokens: int, out: list[tuple[int, float]]) -> None:
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {
        "prompt": "Once upon a time, in a small village by the sea,",
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for _ in range(n):
        t0 = time.perf_counter()
        got = 0
        with httpx.stream("POST", url, json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    d = json.loads(line[6:])
                    if d.get("usage"):
                        got = d["usage"]["completion_tokens"]
        out.append((got, time.perf_counter() - t0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="cpu")
    a = ap.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmtop.serve",
            "--backend",
            a.backend,
            "--port",
            str(port),
            "--threads",
            str(a.threads),
            "--max-batch",
            "8",
            "--agent",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end or proc.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        client(port, 1, 4, [])  # warm up
        rows = []
        for c in (int(x) for x in a.clients.split(",")):
            out: list[tuple[int, float]] = []
            ts = [threading.Thread(target=client, args=(port, a.requests, a.tokens, out)) for _ in range(c)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            toks = sum(g for g, _ in out)
            lat = sorted(d for _, d in out)
            rows.append((c, toks, wall, toks / wall, lat[len(lat) // 2]))
        base = rows[0][3]
        print(
            f"backend {a.backend}, torch threads {a.threads}, {a.requests} req x {a.tokens} tok per client\n"
        )
        print("| clients | tokens | wall s | aggregate tok/s | vs 1 client | median request s |")
        print("|---|---|---|---|---|---|")
        for c, toks, wall, tps, med in rows:
            print(f"| {c} | {toks} | {wall:.1f} | {tps:.1f} | {tps / base:.2f}x | {med:.1f} |")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
