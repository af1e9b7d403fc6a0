"""TUI frame time: one refresh (snapshot + pane update + render) with 300 distinct kernels, 30 layers.

Goal (issue 3): p95 <= 25 ms per frame. Runs the real LlmtopApp headless (`App.run_test`) over a real
Aggregator fed through a real KernelRecorder; between frames one more decode step is ingested so every
frame has changed numbers to push into the panes, as in a live run.

    nice .venv/bin/python benchmarks/bench_tui.py [--frames 60]

Prints a markdown table. "snapshot" is Aggregator.snapshot (the stats engine's share); "update" is
swapping it into the panes (keyed rows, lazy cell formatting); "paint" is a full repaint of the whole
screen by Textual's compositor (what export_screenshot renders: an upper bound, since a real frame
repaints only the widgets that changed); "frame" is their sum. Wall-clock times: on a shared, loaded
machine they are noisy, so the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import numpy as np

from llmtop.events import DECODE, NO_LAYER, OP_CLASSES, PREFILL, EventBatch, SourceInfo
from llmtop.kernels.base import KernelRecorder
from llmtop.stats.aggregator import Aggregator
from llmtop.tui.app import LlmtopApp
from llmtop.tui.provider import AggregatorProvider

N_LAYERS = 30
KERNELS_PER_LAYER = 10  # 30 x 10 = 300 distinct kernel names
STEP_NS = 25_000_000  # event-time spacing of decode steps (40 tok/s)


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


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


async def run(size: tuple[int, int], frames: int) -> dict[str, list[float]]:
    maker = StepMaker()
    agg = Aggregator(window_s=10.0)
    agg.set_source(
        SourceInfo(
            kind="live",
            backend="cpu",
            device="bench",
            model="bench-300-kernels",
            dtype="float32",
            timing="synthetic",
            max_context=8192,
            n_layers=N_LAYERS,
        )
    )
    agg.ingest(maker.batch(200))
    app = LlmtopApp(AggregatorProvider(agg), refresh_hz=0.01)  # frames are driven below, not by the timer
    out: dict[str, list[float]] = {"snapshot": [], "update": [], "paint": [], "frame": []}
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for _ in range(frames):
            agg.ingest(maker.batch(4))
            t0 = time.perf_counter()
            timing = app.refresh_now()
            t1 = time.perf_counter()
            # Private, but it is exactly the paint Textual does for a frame (and for screenshots).
            app.screen._compositor.render_update(full=True)
            t2 = time.perf_counter()
            await pilot.pause()  # let Textual settle (not timed: the pilot's own waits dominate it)
            assert timing is not None
            out["snapshot"].append(timing.snapshot_ms)
            out["update"].append(timing.update_ms)
            out["paint"].append((t2 - t1) * 1e3)
            out["frame"].append((t2 - t0) * 1e3)
        rows = app.query_one("#kernels").row_count
        assert rows >= 300, f"expected 300+ kernel rows, table has {rows}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()
    print(
        f"TUI frame time, {N_LAYERS * KERNELS_PER_LAYER} distinct kernels, {N_LAYERS} layers, "
        f"{args.frames} frames (goal: frame p95 <= 25 ms); load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs\n"
    )
    print("| terminal | part | p50 ms | p95 ms | max ms |")
    print("|---|---|---:|---:|---:|")
    for size in ((120, 40), (80, 24)):
        res = asyncio.run(run(size, args.frames))
        for part, xs in res.items():
            print(
                f"| {size[0]}×{size[1]} | {part} | {statistics.median(xs):.1f} | {pct(xs, 95):.1f} | "
                f"{max(xs):.1f} |"
            )


if __name__ == "__main__":
    main()
