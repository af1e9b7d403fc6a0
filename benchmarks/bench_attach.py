"""`llmtop attach` over 16 servers' /metrics: llmtop's CPU, as % of one core, against a bare parse loop.

Goal (issue 16): scraping N = 16 targets at 1 Hz with the TUI at 4 Hz costs <= 5 % of one core.

    .venv/bin/python benchmarks/bench_attach.py [--targets 16] [--seconds 30] [--repeats 3] [--mix]

**Servers**: one child process (so their CPU is not counted) runs `--targets` HTTP servers on 127.0.0.1,
each replaying a real capture from tests/fixtures/prometheus/ (vLLM 0.32's 51 KB /metrics; with `--mix`
every other one is llama.cpp's) with its counters advancing: every counter, histogram bucket, `_sum` and
`_count` line is the capture's value times (1 + 0.05 t) at t seconds after the server started (buckets
stay cumulative; the gauges keep their captured values), so every scrape sees new totals, rates and
percentiles, and almost every line of the body changes between two scrapes, which is the worst case for
llmtop's per-line parse cache (a real server's buckets move only where requests land).

**llmtop**: in this process, exactly what `llmtop attach URL ...` builds (`build_attach_session`: one
`PrometheusCollector` per target at `--interval 1`, the fleet sampler, the pipeline's aggregator thread)
and its Textual app, headless (`app.run_test`, 200×50), refreshing at the default 4 Hz: a frame builds
the snapshot, counters (the Servers rows and their sparkline histories) and status, and repaints what
changed. CPU = `time.process_time()` of the whole process over the measured span (after a 5 s warm-up, so
every target has been scraped and the panes are drawn) / wall time. "scrape only" is the same pipeline
without the app.

**Anchor** (the floor a Prometheus-based viewer pays): a bare loop in this process that every second
fetches the same 16 bodies with `http.client` (keep-alive) and parses each whole with
`prometheus_client.parser.text_string_to_metric_families`, nothing else.

The app ticks at 4 Hz; a tick whose provider reports nothing new since the frame on screen (no scrape
folded, no link or collector change: `PipelineProvider.version`) draws nothing, and the scrapes land on
the same tick (`aligned_wait`), so 16 targets at 1 Hz draw about one frame a second. "every tick" is the
same run with that check off (a frame at every tick, 4 a second), for comparison.

Phases run one after the other, each `--seconds` long, `--repeats` times interleaved (anchor, scrape only,
llmtop, every tick); the table gives medians. The machine is shared: medians, and the anchor in the same
run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import http.server
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "prometheus"
VLLM = FIX / "vllm_cpu_0.32_after_requests.txt"
LLAMACPP = FIX / "llamacpp_server_scrape1_after_request.txt"
SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)\s*$")


# -- the servers (child process) -------------------------------------------------------------------
class Body:
    """A capture whose counter lines advance with time (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.parts: list[tuple[str, float | None]] = []  # (text before the value, base value or None)
        for line in path.read_text().splitlines():
            m = SAMPLE.match(line)
            name = m.group(1) if m else ""
            advancing = m is not None and name.endswith(("_total", "_bucket", "_sum", "_count")) \
                and not name.endswith("_created")
            if advancing:
                assert m is not None
                self.parts.append((line[: m.start(3)], float(m.group(3))))
            else:
                self.parts.append((line, None))
        self.t0 = time.monotonic()

    def render(self) -> bytes:
        f = 1.0 + 0.05 * (time.monotonic() - self.t0)
        out = [text if base is None else f"{text}{base * f!r}" for text, base in self.parts]
        return ("\n".join(out) + "\n").encode()


def serve(n: int, mix: bool) -> None:
    """Child process: n servers, their ports on one stdout line, until stdin closes."""
    ports = []
    for i in range(n):
        body = Body(LLAMACPP if mix and i % 2 else VLLM)

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server's scrapes
            src = body

            def do_GET(self) -> None:
                data = self.src.render() if self.path == "/metrics" else b"not here"
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: object) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        ports.append(srv.server_address[1])
    print(" ".join(map(str, ports)), flush=True)
    sys.stdin.read()  # until the parent closes our stdin


def start_servers(n: int, mix: bool) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(n)] + (["--mix"] if mix else []),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    ports = [int(p) for p in proc.stdout.readline().split()]
    if len(ports) != n:
        raise SystemExit(f"servers did not start: {ports}")
    return proc, ports


# -- the three phases ---------------------------------------------------------------------------
def anchor(ports: list[int], seconds: float) -> float:
    """% of one core: fetch and fully parse every body once a second, with prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=5) for p in ports]
    c0, w0 = time.process_time(), time.monotonic()
    tick = w0
    while time.monotonic() - w0 < seconds:
        for c in conns:
            c.request("GET", "/metrics")
            body = c.getresponse().read().decode()
            for fam in text_string_to_metric_families(body):
                for _ in fam.samples:
                    pass
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
    c1, w1 = time.process_time(), time.monotonic()
    for c in conns:
        c.close()
    return 100.0 * (c1 - c0) / (w1 - w0)


def urls(ports: list[int]) -> list[str]:
    return [f"http://127.0.0.1:{p}/metrics" for p in ports]


def _session(ports: list[int]) -> object:
    from llmtop.cli import attach_parser, build_attach_session

    return build_attach_session(attach_parser().parse_args([*urls(ports), "--interval", "1"]))


def scrape_only(ports: list[int], seconds: float, warmup: float) -> float:
    sess = _session(ports)
    with sess:  # type: ignore[attr-defined]
        time.sleep(warmup)
        c0, w0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        c1, w1 = time.process_time(), time.monotonic()
    return 100.0 * (c1 - c0) / (w1 - w0)


def with_tui(ports: list[int], seconds: float, warmup: float,
             every_tick: bool = False) -> tuple[float, int, int]:
    """(% of one core, frames drawn while measured, server rows on screen at the end). `every_tick`: draw at
    every 4 Hz tick even when nothing was scraped since the last frame (the provider reports no version)."""
    from llmtop.tui.panes import ServersPane

    sess = _session(ports)
    if every_tick:
        sess.app.provider.version = lambda: None  # type: ignore[attr-defined]
    out: list[float] = []
    frames: list[int] = []
    rows: list[int] = []

    async def main() -> None:
        app = sess.app  # type: ignore[attr-defined]
        async with app.run_test(size=(200, 50)) as pilot:
            await pilot.pause(warmup)
            n0 = len(app.frames)
            c0, w0 = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            c1, w1 = time.process_time(), time.monotonic()
            out.append(100.0 * (c1 - c0) / (w1 - w0))
            frames.append(min(len(app.frames), 256) - min(n0, 256))
            rows.append(len([r for r in app.query_one(ServersPane).rows if r.get("kind") != "total"]))

    with sess:  # type: ignore[attr-defined]
        asyncio.run(main())
    return out[0], frames[0], rows[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mix", action="store_true", help="every other server replays llama.cpp's capture")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.mix)
        return
    proc, ports = start_servers(args.targets, args.mix)
    res: dict[str, list[float]] = {"anchor": [], "scrape": [], "tui": [], "every": []}
    info = every_info = ""
    try:
        for _ in range(args.repeats):
            res["anchor"].append(anchor(ports, args.seconds))
            res["scrape"].append(scrape_only(ports, args.seconds, args.warmup))
            pct, frames, rows = with_tui(ports, args.seconds, args.warmup)
            res["tui"].append(pct)
            info = f"{frames / args.seconds:.1f} frames/s drawn, {rows} server rows"
            pct_e, frames_e, _ = with_tui(ports, args.seconds, args.warmup, every_tick=True)
            res["every"].append(pct_e)
            every_info = f"{frames_e / args.seconds:.1f} frames/s drawn"
            print(f"  run: anchor {res['anchor'][-1]:.2f} %  scrape only {res['scrape'][-1]:.2f} %  "
                  f"llmtop {pct:.2f} % ({info})  every tick {pct_e:.2f} % ({every_info})",
                  file=sys.stderr, flush=True)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    med = {k: statistics.median(v) for k, v in res.items()}
    body = "vLLM 0.32 and llama.cpp captures, alternating" if args.mix else "vLLM 0.32 capture (51 KB)"
    print(f"| `benchmarks/bench_attach.py --targets {args.targets} --seconds {args.seconds:g} --repeats "
          f"{args.repeats}{' --mix' if args.mix else ''}` ({args.targets} servers, {body}, 1 Hz scrapes) "
          "| CPU, % of one core (median) | goal |")
    print("|---|---:|---|")
    print(f"| anchor: http.client + `prometheus_client` full parse of every body, nothing else | "
          f"{med['anchor']:.2f} | |")
    print(f"| llmtop attach, scraping only (collectors, derive, aggregator thread; no UI) | "
          f"{med['scrape']:.2f} | |")
    print(f"| **llmtop attach with the TUI at 4 Hz** (headless 200×50; a tick with nothing scraped since the "
          f"last frame draws nothing: {info}) | **{med['tui']:.2f}** | ≤ 5 % |")
    print(f"| same, drawing at every tick ({every_info}) | {med['every']:.2f} | |")
    print(f"| llmtop with the TUI / anchor | {med['tui'] / med['anchor']:.2f}× | |")
    def runs(k: str) -> str:
        return ", ".join(f"{x:.2f}" for x in res[k])

    print(f"\n(runs: anchor {runs('anchor')}; scrape only {runs('scrape')}; llmtop {runs('tui')}; "
          f"every tick {runs('every')}; "
          f"{os.cpu_count()} CPUs, {socket.gethostname()})")


if __name__ == "__main__":
    main()
