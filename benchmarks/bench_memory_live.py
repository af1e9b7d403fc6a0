"""RSS and CPU of a real `llmtop --loop` run with the TUI, minute by minute (default 30 minutes).

Goals (issue 3): RSS growth of a 30-minute `--loop` run with the TUI <= 50 MB (steady state); TUI CPU
at 4 Hz during a live run <= 15 % of one core.

Method: exactly what `llmtop --backend cpu --loop --max-new-tokens 256` builds (cli.build_live_session:
the shipped SmolLM2-135M in its engine worker process over the built-in prompts, process and GPU
collectors, the aggregator thread, the Textual app at 4 Hz), the app under Textual's headless driver at
120x40 (it composes every frame; only the bytes to a terminal are skipped). Every minute: RSS of the UI
process and of the engine worker (psutil), the UI process's CPU time over that minute (all its threads:
UI, aggregator, collectors) as % of one core, and tokens generated so far. "Steady state" is the RSS
after `--warmup-min` minutes (the 10 s window, every kernel's duration buckets and the allocators' pools
have filled); growth = end - steady state, per process and summed.

    nice .venv/bin/python benchmarks/bench_memory_live.py [--minutes 30] [--warmup-min 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import psutil

from llmtop.cli import build_live_session, build_parser

MIB = 1024 * 1024


async def run(minutes: float, interval_s: float) -> list[dict[str, float]]:
    argv = ["--backend", "cpu", "--loop", "--max-new-tokens", "256", "--refresh", "4"]
    args = build_parser().parse_args(argv)
    session = build_live_session(args)
    producer = next(c for c in session.pipeline.collectors if c.name == "engine")
    ui, worker = psutil.Process(), psutil.Process(producer.pid)
    rows: list[dict[str, float]] = []
    with session:
        async with session.app.run_test(size=(120, 40)) as pilot:
            t0 = time.monotonic()
            c_prev = sum(ui.cpu_times()[:2])
            w_prev = sum(worker.cpu_times()[:2])
            t_prev = t0
            while True:
                await pilot.pause(interval_s - (time.monotonic() - t0) % interval_s)
                now = time.monotonic()
                c, w = sum(ui.cpu_times()[:2]), sum(worker.cpu_times()[:2])
                rep = session.pipeline.snapshot(mode="cumulative").report
                rows.append({
                    "min": (now - t0) / 60, "ui_rss": ui.memory_info().rss / MIB,
                    "worker_rss": worker.memory_info().rss / MIB,
                    "ui_cpu": 100 * (c - c_prev) / (now - t_prev),
                    "worker_cpu": 100 * (w - w_prev) / (now - t_prev),
                    "generated": rep["tokens"]["generated"], "events": rep["events"],
                    "dropped": rep["dropped"]["total"],
                })
                c_prev, w_prev, t_prev = c, w, now
                if producer.error:
                    raise SystemExit(f"engine failed: {producer.error}")
                if now - t0 >= minutes * 60 - 1:
                    break
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup-min", type=float, default=5)
    ap.add_argument("--interval", type=float, default=60, help="seconds between samples")
    a = ap.parse_args()
    rows = asyncio.run(run(a.minutes, a.interval))
    print(f"command: {' '.join([sys.executable, *sys.argv])}\n")
    print("| minute | UI RSS MiB | worker RSS MiB | UI process CPU % | worker CPU % | tokens | events "
          "| dropped |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['min']:.1f} | {r['ui_rss']:.1f} | {r['worker_rss']:.1f} | {r['ui_cpu']:.1f} | "
              f"{r['worker_cpu']:.0f} | {r['generated']:,} | {r['events']:,} | {r['dropped']:,} |")
    steady = next((r for r in rows if r["min"] >= a.warmup_min - 1e-6), rows[0])
    end = rows[-1]
    g_ui, g_w = end["ui_rss"] - steady["ui_rss"], end["worker_rss"] - steady["worker_rss"]
    ui_cpu = sorted(r["ui_cpu"] for r in rows)[len(rows) // 2]
    print(f"\nsteady state at minute {steady['min']:.1f}; growth to minute {end['min']:.1f}: "
          f"UI {g_ui:+.1f} MiB, worker {g_w:+.1f} MiB, total {g_ui + g_w:+.1f} MiB (goal <= 50 MB); "
          f"UI process CPU median {ui_cpu:.1f} % of one core (goal <= 15 %)")


if __name__ == "__main__":
    main()
