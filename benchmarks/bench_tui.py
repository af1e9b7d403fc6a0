"""TUI cost: frame time with 300 distinct kernels and 30 layers, and the UI thread's CPU during a live run.

Goals (issue 3): frame p95 <= 25 ms; TUI CPU at 4 Hz during a live run <= 15 % of one core.

    nice .venv/bin/python benchmarks/bench_tui.py [--frames 60] [--live-seconds 20]

**Frame** = what a user waits for per refresh tick:
  1. `snapshot`: Aggregator.snapshot (statistics -> report dict), via the app's provider; in the app this
     runs in a worker thread (`LlmtopApp._snapshot_worker`), here it is timed on its own;
  2. `update`: swapping the snapshot into the panes (`LlmtopApp._apply`, UI thread);
  3. `textual`: Textual's own refresh of what changed, measured inside Textual by wrapping the calls its
     update timer makes (`Screen._refresh_layout` when a layout is needed, `Compositor.update_widgets`,
     `Compositor.render_update`) plus encoding the resulting update to terminal escape sequences
     (`CompositorUpdate.render_segments`), which a real terminal driver does and the headless driver
     skips. Only regions whose widgets called refresh() are re-rendered, exactly as in a live session.
`UI thread` = update + textual (what blocks keys and the screen); `refresh` = snapshot + update + textual
(from the tick to the frame on screen). Times are wall clock and, because this machine is shared (wall
time there includes waiting for a core), also CPU time of the UI thread (`time.thread_time`).
`full repaint` is a separate line: a forced repaint of the whole screen + encoding (what a resize or
theme change costs), not part of a frame.

Between frames one more batch of decode steps is ingested and folded (`Aggregator.flush`; not timed:
in a live run the aggregator thread does that, at most `COALESCE_S` after the events arrive), so every
frame has changed numbers, as in a live run.

**Live CPU**: the real app, headless, with `PipelineProvider` over a live pipeline (`SyntheticEngine` with
30 layers = 454 kernel events per step at ~15 steps/s: a SmolLM2-135M CPU decode's event rate; process
and GPU collectors on, as `llmtop` runs them) at the default 4 Hz refresh. The UI thread's CPU time
(`time.thread_time` in the app's thread, which is the one the app's event loop runs in) plus the CPU time
of every snapshot built in the worker threads, over the run, divided by the run's wall time, is "TUI CPU,
% of one core"; terminal encoding is included as above.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmtop.events import DECODE, NO_LAYER, OP_CLASSES, PREFILL, EventBatch, SourceInfo
from llmtop.kernels.base import KernelRecorder
from llmtop.stats.aggregator import Aggregator
from llmtop.tui.app import LlmtopApp
from llmtop.tui.provider import AggregatorProvider, PipelineProvider

N_LAYERS = 30
KERNELS_PER_LAYER = 10  # 30 x 10 = 300 distinct kernel names
STEP_NS = 25_000_000  # event-time spacing of decode steps (40 tok/s)
LIVE_LAYERS = 30  # SmolLM2-135M: 4 + 15 * 30 = 454 kernel events per step
LIVE_STEPS_PER_S = 15.0


class StepMaker:
    """Emits decode steps of 300 distinct kernels through a real KernelRecorder (synthetic clock)."""

    def __init__(self, seed: int = 0) -> None:
        self.rec = KernelRecorder()
        self.rng = np.random.default_rng(seed)
        self.kernels = [
            (layer, *self.rec.kernel_id(f"L{layer:02d}.kernel_{j}", OP_CLASSES[j % len(OP_CLASSES)]))
            for layer in range(N_LAYERS)
            for j in range(KERNELS_PER_LAYER)
        ]
        self.head = self.rec.kernel_id("lm_head", "matmul")
        self.step = 0
        self.t = 1_000_000_000

    def batch(self, n_steps: int) -> EventBatch:
        for _ in range(n_steps):
            phase = PREFILL if self.step == 0 else DECODE
            ctx = 32 + self.step
            self.rec.begin_step(phase, self.step, 32 if phase == PREFILL else 1, 1, ctx)
            t = self.t
            durs = self.rng.integers(5_000, 60_000, len(self.kernels))
            for (layer, nid, opc), d in zip(self.kernels, durs, strict=True):
                self.rec.add(nid, opc, layer, t, int(d), 1, 576, 576)
                t += int(d)
            self.rec.add(*self.head, NO_LAYER, t, 200_000, 1, 49152, 576)
            self.rec.end_step()
            self.step += 1
            self.t += STEP_NS
        batch = self.rec.drain()
        assert batch is not None
        # The recorder stamps steps with the wall clock; keep them on the synthetic clock instead.
        batch.steps["start_ns"] = self.t - STEP_NS * (len(batch.steps) - np.arange(len(batch.steps)))
        batch.steps["dur_ns"] = STEP_NS
        return batch


class TextualMeter:
    """Times the work Textual's update timer does for a refresh, by wrapping the calls it makes.

    Private Textual attributes, but exactly the code path of a real frame: layout (only when needed),
    compositor update of the dirty widgets, rendering the changed regions, and (done here, because the
    headless driver skips it) encoding that update into the bytes a terminal would receive.
    """

    def __init__(self, app: LlmtopApp) -> None:
        self.app = app
        self.wall = 0.0
        self.cpu = 0.0
        self.bytes = 0
        screen = app.screen
        comp = screen._compositor
        screen._refresh_layout = self._timed(screen._refresh_layout)
        comp.update_widgets = self._timed(comp.update_widgets)
        comp.render_update = self._timed(comp.render_update, encode=True)

    def _timed(self, fn: Callable[..., Any], encode: bool = False) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            w0, c0 = time.perf_counter(), time.thread_time()
            out = fn(*a, **kw)
            if encode and out is not None:
                self.bytes += len(out.render_segments(self.app.console))
            self.wall += time.perf_counter() - w0
            self.cpu += time.thread_time() - c0
            return out

        return wrapper

    def take(self) -> tuple[float, float]:
        out = (self.wall * 1e3, self.cpu * 1e3)
        self.wall = self.cpu = 0.0
        return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_source() -> SourceInfo:
    return SourceInfo(kind="live", backend="cpu", device="bench", model="bench-300-kernels", dtype="float32",
                      timing="synthetic", max_context=8192, n_layers=N_LAYERS)


async def frames(size: tuple[int, int], n_frames: int) -> dict[str, list[float]]:
    maker = StepMaker()
    agg = Aggregator(window_s=10.0)
    agg.set_source(bench_source())
    agg.ingest(maker.batch(200))
    app = LlmtopApp(AggregatorProvider(agg), refresh_hz=0.01)  # frames are driven below, not by the timer
    parts = ("snapshot", "update", "textual", "ui_thread", "refresh", "full_repaint")
    out: dict[str, list[float]] = {k: [] for k in (*parts, *(p + "_cpu" for p in parts))}
    snap_cpu: list[float] = []
    provider_snapshot = app.provider.snapshot

    def timed_snapshot(*a: Any, **kw: Any) -> Any:
        c0 = time.thread_time()
        try:
            return provider_snapshot(*a, **kw)
        finally:
            snap_cpu.append((time.thread_time() - c0) * 1e3)

    app.provider.snapshot = timed_snapshot  # type: ignore[method-assign]
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        meter = TextualMeter(app)
        for _ in range(n_frames):
            agg.ingest(maker.batch(4))
            agg.flush()  # the aggregator thread's work in a live run (it folds within COALESCE_S)
            meter.take()
            c0 = time.thread_time()
            timing = app.refresh_now()
            c1 = time.thread_time()
            await pilot.pause()  # Textual's update timer runs the (metered) refresh of the changed regions
            tx_wall, tx_cpu = meter.take()
            assert timing is not None
            out["snapshot"].append(timing.snapshot_ms)
            out["update"].append(timing.update_ms)
            out["textual"].append(tx_wall)
            out["ui_thread"].append(timing.update_ms + tx_wall)
            out["refresh"].append(timing.total_ms + tx_wall)
            out["snapshot_cpu"].append(snap_cpu[-1])
            out["update_cpu"].append((c1 - c0) * 1e3 - snap_cpu[-1])
            out["textual_cpu"].append(tx_cpu)
            out["ui_thread_cpu"].append((c1 - c0) * 1e3 - snap_cpu[-1] + tx_cpu)
            out["refresh_cpu"].append((c1 - c0) * 1e3 + tx_cpu)
            app.screen._compositor.render_update(full=True)  # wrapped: also encodes
            full_wall, full_cpu = meter.take()
            out["full_repaint"].append(full_wall)
            out["full_repaint_cpu"].append(full_cpu)
        rows = app.query_one("#kernels").row_count
        assert rows >= 300, f"expected 300+ kernel rows, table has {rows}"
    return out


async def live_cpu(seconds: float, size: tuple[int, int]) -> dict[str, float]:
    from llmtop.collectors.pipeline import live_pipeline
    from llmtop.collectors.synthetic import SyntheticEngine

    # The engine sleeps step_time_s per step on top of its own Python cost; ~15 steps/s overall.
    engine = SyntheticEngine(n_layers=LIVE_LAYERS, step_time_s=0.9 / LIVE_STEPS_PER_S)
    agg = Aggregator(window_s=10.0)
    pipeline = live_pipeline(engine, agg, max_new_tokens=256, loop=True)
    provider = PipelineProvider(pipeline)
    app = LlmtopApp(provider, refresh_hz=4.0)
    n_frames = [0]
    snap_cpu = [0.0]
    apply = app._apply
    snapshot = provider.snapshot

    def counted(*a: Any) -> Any:
        n_frames[0] += 1
        return apply(*a)

    def timed_snapshot(*a: Any) -> Any:
        c0 = time.thread_time()
        try:
            return snapshot(*a)
        finally:
            snap_cpu[0] += time.thread_time() - c0

    app._apply = counted  # type: ignore[method-assign]
    provider.snapshot = timed_snapshot  # type: ignore[method-assign]
    pipeline.start()
    try:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            TextualMeter(app)  # only for the terminal encoding the headless driver skips
            await asyncio.sleep(2.0)  # warm-up: first prefill, first window
            n0, c0, w0, s0 = n_frames[0], time.thread_time(), time.perf_counter(), snap_cpu[0]
            ev0 = pipeline.ingested_events
            await asyncio.sleep(seconds)
            cpu, wall = time.thread_time() - c0 + snap_cpu[0] - s0, time.perf_counter() - w0
            frames_done = n_frames[0] - n0
            events = pipeline.ingested_events - ev0
            snap = app.snapshot.report
    finally:
        pipeline.stop()
    return {
        "wall_s": wall,
        "cpu_pct": 100.0 * cpu / wall,
        "frames_per_s": frames_done / wall,
        "events_per_s": events / wall,
        "steps_per_s": events / wall / (4 + 15 * LIVE_LAYERS),
        "kernels": len(snap["kernels"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--live-seconds", type=float, default=20.0, help="0 skips the live CPU measurement")
    args = ap.parse_args()
    print(
        f"TUI frame, {N_LAYERS * KERNELS_PER_LAYER} distinct kernels, {N_LAYERS} layers, {args.frames} "
        "frames "
        f"(goal: frame p95 <= 25 ms); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print("| terminal | part | wall p50 ms | wall p95 ms | wall max ms | CPU p50 ms | CPU p95 ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in ((120, 40), (80, 24)):
        res = asyncio.run(frames(size, args.frames))
        labels = {"snapshot": "snapshot (worker thread)", "update": "update (UI thread)",
                  "textual": "textual (UI thread)",
                  "ui_thread": "**frame on the UI thread** (update + textual)",
                  "refresh": "refresh, tick to screen (snapshot + update + textual)",
                  "full_repaint": "full repaint (not in a frame)"}
        for part, label in labels.items():
            xs, cs = res[part], res[part + "_cpu"]
            print(f"| {size[0]}×{size[1]} | {label} | {statistics.median(xs):.1f} | {pct(xs, 95):.1f} | "
                  f"{max(xs):.1f} | {statistics.median(cs):.1f} | {pct(cs, 95):.1f} |")
    if args.live_seconds > 0:
        r = asyncio.run(live_cpu(args.live_seconds, (120, 40)))
        print(f"\nLive run, 4 Hz refresh, {r['wall_s']:.0f} s, 120×40 (goal: TUI CPU <= 15 % of one core); "
              f"load average {os.getloadavg()[0]:.1f}\n")
        print("| events/s | steps/s | frames/s | kernel rows "
              "| TUI CPU (UI thread + snapshots), % of one core |")
        print("|---:|---:|---:|---:|---:|")
        print(f"| {r['events_per_s']:,.0f} | {r['steps_per_s']:.1f} | {r['frames_per_s']:.1f} "
              f"| {r['kernels']} | {r['cpu_pct']:.1f} |")


if __name__ == "__main__":
    main()
