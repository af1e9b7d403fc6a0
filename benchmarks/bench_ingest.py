"""Aggregator ingestion throughput and snapshot time (goal: >= 1,000,000 kernel events/s).

Workload: 300 distinct kernel names spread over 30 layers (10 per layer, like per-layer names in an
imported trace), decode-phase events on a steady clock with ~one step per 300 events, lognormal
durations around per-kernel medians (2 us .. 2 ms), matmul shapes on a third of them. Each batch
size runs over ~30 s of event time so window slices roll over and evict into the archive.

Run: .venv/bin/python benchmarks/bench_ingest.py [--events N] [--repeats R]
Prints a markdown table of medians over the repeats: wall-clock rate (the goal) and the rate per
CPU-second of this process (stable when other work shares the cores). "snapshot, first" is the first
snapshot after the run (it folds what is still pending and builds the snapshot caches); "snapshot,
refresh" is the CPU time of a later one after 0.1 s more of events, i.e. what each 4 Hz UI refresh pays.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from llmtop.events import KERNEL_DTYPE, OP_CLASSES, EventBatch, SourceInfo
from llmtop.stats import Aggregator

N_KERNELS = 300
N_LAYERS = 30


def make_events(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    names = [f"kernel_{i:03d}:L{i % N_LAYERS}" for i in range(N_KERNELS)]
    k = np.zeros(n, KERNEL_DTYPE)
    kid = rng.integers(0, N_KERNELS, n)
    k["name"] = kid
    k["op_class"] = kid % len(OP_CLASSES)
    k["layer"] = kid % N_LAYERS
    k["phase"] = 1
    k["step"] = np.arange(n) // 300
    k["ctx"] = 100 + k["step"] % 2000
    med = np.exp(rng.uniform(np.log(2e3), np.log(2e6), N_KERNELS))
    k["dur_ns"] = np.maximum(1, med[kid] * rng.lognormal(0, 0.25, n)).astype(np.int64)
    k["start_ns"] = 10**12 + np.arange(n, dtype=np.int64) * 30_000  # 30 us apart: ~33k events/s of "time"
    mm = kid % 3 == 0
    k["m"][mm], k["n"][mm], k["k"][mm] = 1, 2048, 2048
    return names, k


def run(batch: int, events: np.ndarray, names: list[str]) -> tuple[float, float, float, float]:
    agg = Aggregator(10.0)
    agg.set_source(SourceInfo(kind="bench", max_context=8192, n_layers=N_LAYERS))
    batches = [EventBatch(kernels=events[i : i + batch], names_base=0 if i == 0 else len(names),
                          new_names=names if i == 0 else []) for i in range(0, len(events), batch)]
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        agg.ingest(b)
    ingest, cpu = time.perf_counter() - t0, time.process_time() - c0
    snaps = []
    for mode in ("window", "cumulative"):
        t1 = time.perf_counter()
        agg.snapshot(mode=mode)
        snaps.append(time.perf_counter() - t1)
    # One refresh later: 0.1 s more of events (3,333 at this rate), then the window snapshot again.
    more = events[-3333:].copy()
    more["start_ns"] += int(events["start_ns"][-1] - events["start_ns"][0]) + 30_000
    agg.ingest(EventBatch(kernels=more, names_base=len(names)))
    agg.flush()
    c1 = time.process_time()
    agg.snapshot(mode="window")
    refresh = time.process_time() - c1
    return len(events) / ingest, len(events) / cpu, max(snaps), refresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    names, events = make_events(a.events)
    run(5000, events[:50_000], names)  # warm up numpy paths
    print(f"{a.events:,} events, {N_KERNELS} kernels x {N_LAYERS} layers, median of {a.repeats} runs\n")
    print("| batch size | ingest, wall (events/s) | ingest, CPU (events per CPU-s) | snapshot, first (ms) "
          "| snapshot, refresh (CPU ms) | goal met |")
    print("|---:|---:|---:|---:|---:|:---:|")
    for batch in (500, 5000, 50_000):
        res = [run(batch, events, names) for _ in range(a.repeats)]
        rate = statistics.median(r[0] for r in res)
        cpu = statistics.median(r[1] for r in res)
        snap = statistics.median(r[2] for r in res)
        refresh = statistics.median(r[3] for r in res)
        ok = "yes" if rate >= 1e6 else "NO"
        print(f"| {batch:,} | {rate:,.0f} | {cpu:,.0f} | {snap * 1e3:.1f} | {refresh * 1e3:.1f} | {ok} |")

if __name__ == "__main__":
    main()
