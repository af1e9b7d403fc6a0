"""Agent cost and latency on the shipped model (CPU): prints markdown tables.

1. Generation tok/s of the engine alone vs with the agent publishing to one viewer in another process
   (goal: <= 3 % slower). Runs alternate A/B so machine noise hits both; medians are reported.
2. Latency from a kernel's end to that viewer's aggregator (agent drain + wire + viewer + pipeline fold;
   one host, so both processes read the same CLOCK_MONOTONIC), p50/p95/max over every kernel (goal p95
   <= 250 ms). The TUI pane adds at most one refresh period on top.

    python benchmarks/bench_agent.py [--rounds 5] [--tokens 32] [--threads 1] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llmtop.agent as agent_mod
from llmtop.attach import build_attach_pipeline
from llmtop.events import EventBatch
from llmtop.stats import Aggregator


class LatencyAggregator(Aggregator):
    """Records, for every ingested kernel, now - (start + dur) on the shared perf_counter_ns clock."""

    def __init__(self, window_s: float) -> None:
        super().__init__(window_s)
        self.lat_ns: list[np.ndarray] = []

    def ingest(self, batch: EventBatch) -> None:
        if len(batch.kernels):
            now = time.perf_counter_ns()
            self.lat_ns.append(now - (batch.kernels["start_ns"] + batch.kernels["dur_ns"]))
        super().ingest(batch)


def viewer(addr: str, stop_file: str) -> None:
    """Runs in its own process, as `llmtop attach` would; prints its latencies as JSON at the end."""
    agg = LatencyAggregator(600.0)
    p = build_attach_pipeline([f"llmtop://{addr}"], agg)
    p.start()
    while not Path(stop_file).exists():
        time.sleep(0.05)
    time.sleep(0.5)
    p.stop()
    lat = np.concatenate(agg.lat_ns) if agg.lat_ns else np.zeros(0, np.int64)
    print(json.dumps({"lat_ns": lat.tolist(), "decode_steps": p.snapshot().report["tokens"]["decode_steps"]}))


def gen_tok_s(engine: object, tokens: int, drain: bool) -> float:
    t0 = time.perf_counter_ns()
    engine.generate(["Write a long story about a lighthouse keeper."], tokens)  # type: ignore[attr-defined]
    wall = time.perf_counter_ns() - t0
    if drain:  # without the agent something must empty the recorder, as the TUI's collector would
        engine.ops.recorder.drain()  # type: ignore[attr-defined]
    return tokens / (wall / 1e9)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.05, help="agent drain interval, s")
    ap.add_argument("--viewer", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.viewer:
        viewer(*a.viewer)
        return 0
    from llmtop.kernels.torch_backend import TorchOps
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    loaded = load_model("default")
    engine = Engine(loaded, TorchOps(threads=a.threads), max_batch=1)
    gen_tok_s(engine, 8, True)  # warm up
    base, with_agent = [], []
    agent = agent_mod.start("127.0.0.1:0", interval=a.interval)
    with tempfile.TemporaryDirectory() as tmp:
        flag = str(Path(tmp) / "stop")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--viewer", agent.address, flag], stdout=subprocess.PIPE
        )
        while agent.viewers == 0:
            time.sleep(0.02)
        try:
            for _ in range(a.rounds):
                # A: agent not draining (the recorder is emptied after the run); B: agent + viewer live
                agent.remove_recorder(engine.ops.recorder)
                base.append(gen_tok_s(engine, a.tokens, True))
                agent.attach_engine(engine)
                with_agent.append(gen_tok_s(engine, a.tokens, False))
            time.sleep(0.3)
        finally:
            Path(flag).touch()
            out, _ = proc.communicate(timeout=120)
            agent.close()
    res = json.loads(out.decode().strip().splitlines()[-1])
    mb, ma = statistics.median(base), statistics.median(with_agent)
    print(f"model: {loaded.source}, torch threads {a.threads}, {a.tokens} tokens x {a.rounds} rounds\n")
    print("| setup | generation tok/s, prefill included (median) | runs |")
    print("|---|---|---|")
    print(f"| engine alone | {mb:.2f} | {', '.join(f'{x:.2f}' for x in base)} |")
    print(f"| engine + agent + 1 viewer process | {ma:.2f} | {', '.join(f'{x:.2f}' for x in with_agent)} |")
    print(f"\nagent cost: {100 * (mb - ma) / mb:+.2f} % (goal <= 3 %)\n")
    lat = np.array(res["lat_ns"] or [0], dtype=np.float64) / 1e6
    print("| kernel end -> viewer aggregator | p50 ms | p95 ms | max ms | kernels | decode steps |")
    print("|---|---|---|---|---|---|")
    print(
        f"| agent interval {a.interval * 1e3:.0f} ms | {np.percentile(lat, 50):.1f} | "
        f"{np.percentile(lat, 95):.1f} | {lat.max():.1f} | {len(lat)} | {res['decode_steps']} |"
    )
    print("\n(goal p95 <= 250 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
