"""RSS growth of a long run: the aggregator and the TUI (headless, 4 Hz) fed a decode stream for 30 minutes.

Goal (issue 3): RSS growth of a 30-minute `--loop` run with the TUI <= 50 MB (steady state).

Method: a synthetic SmolLM2-135M CPU decode stream (30 layers: 454 kernel events per step, 15 steps/s,
generations of 256 tokens after a 16..64-token prefill, attention growing with context, jittered
durations, matmul shapes) is generated with numpy and fed to a real Aggregator from a feeder thread
(as the pipeline's aggregator thread does, through the provider's lock), while the real LlmtopApp runs
headless (`App.run_test`, 120x40) with an AggregatorProvider at its default 4 Hz refresh. Event time is
compressed: `--speed` (default 10) simulated seconds per wall second, so 30 simulated minutes (12.3 M
kernel events) take ~3 wall minutes; the TUI still refreshes at 4 Hz of wall time (so ~1/10 of a real
run's frames). RSS (psutil) is sampled every simulated minute. "Steady state" is the RSS after the
warm-up (`--warmup-min`, default 5 simulated minutes: the 10 s window, the cells of every kernel's
duration buckets and the allocator's pools have all filled by then); growth = end - steady state.

    nice .venv/bin/python benchmarks/bench_memory.py [--minutes 30] [--speed 10] [--warmup-min 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

from llmtop.events import (
    DECODE,
    KERNEL_DTYPE,
    NO_LAYER,
    OP_CLASS_ID,
    PREFILL,
    STEP_DTYPE,
    EventBatch,
    SourceInfo,
)
from llmtop.stats.aggregator import Aggregator
from llmtop.tui.app import LlmtopApp
from llmtop.tui.provider import AggregatorProvider

N_LAYERS = 30
STEPS_PER_S = 15.0
GEN_TOKENS = 256
_LAYER = (  # (name, op class, base µs, is matmul) of one decoder layer, in launch order
    ("rmsnorm:attn_norm", "norm", 8, False), ("matmul:q_proj", "matmul", 40, True),
    ("matmul:k_proj", "matmul", 14, True), ("matmul:v_proj", "matmul", 14, True), ("rope", "rope", 6, False),
    ("memcpy:kv_write", "memcpy", 3, False), ("attention:decode", "attention", 20, False),
    ("matmul:o_proj", "matmul", 40, True), ("add:attn_residual", "elementwise", 3, False),
    ("rmsnorm:ffn_norm", "norm", 8, False), ("matmul:gate_proj", "matmul", 100, True),
    ("matmul:up_proj", "matmul", 100, True), ("silu_mul", "elementwise", 6, False),
    ("matmul:down_proj", "matmul", 100, True), ("add:ffn_residual", "elementwise", 3, False),
)


class Stream:
    """Vectorized synthetic decode stream on a simulated clock (ns)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        ops = ([("embedding", "embedding", 5, False)]
               + [op for _ in range(N_LAYERS) for op in _LAYER]
               + [("rmsnorm:final_norm", "norm", 8, False), ("matmul:lm_head", "matmul", 900, True),
                  ("sampling", "sampling", 60, False)])
        self.names = sorted({o[0] for o in ops} | {"attention:prefill"})
        nid = {n: i for i, n in enumerate(self.names)}
        self.t_name = np.array([nid[o[0]] for o in ops], np.uint32)
        self.t_opc = np.array([OP_CLASS_ID[o[1]] for o in ops], np.uint8)
        self.t_layer = np.array([NO_LAYER] + [li for li in range(N_LAYERS) for _ in _LAYER] + [NO_LAYER] * 3,
                                np.int16)
        self.t_us = np.array([o[2] for o in ops], np.float64)
        self.t_mm = np.array([o[3] for o in ops], bool)
        self.t_attn = self.t_opc == OP_CLASS_ID["attention"]
        self.prefill_attn = nid["attention:prefill"]
        self.per_step = len(ops)
        self.t = 10**12
        self.step = 0
        self.ctx = 0
        self.left = 0  # decode steps left in the current generation
        self.sent_names = False

    def batch(self, n_steps: int) -> EventBatch:
        p = self.per_step
        k = np.zeros(n_steps * p, KERNEL_DTYPE)
        st = np.zeros(n_steps, STEP_DTYPE)
        step_ns = int(1e9 / STEPS_PER_S)
        for i in range(n_steps):
            if self.left == 0:  # a new generation: prefill of a fresh prompt
                phase, prompt = PREFILL, int(self.rng.integers(16, 65))
                self.ctx, tokens, self.left = prompt, prompt, GEN_TOKENS - 1
            else:
                phase, tokens = DECODE, 1
                self.ctx += 1
                self.left -= 1
            sl = slice(i * p, (i + 1) * p)
            scale = np.where(self.t_attn, 0.5 + self.ctx / 256, 1.0) * (tokens if phase == PREFILL else 1)
            dur = (self.t_us * 1e3 * scale * self.rng.lognormal(0.0, 0.15, p)).astype(np.int64) + 1
            name = self.t_name.copy()
            if phase == PREFILL:
                name[self.t_attn] = self.prefill_attn
            kk = k[sl]
            kk["name"], kk["op_class"], kk["phase"], kk["layer"] = name, self.t_opc, phase, self.t_layer
            kk["step"], kk["batch"], kk["ctx"], kk["dur_ns"] = self.step, 1, self.ctx, dur
            kk["start_ns"] = self.t + np.concatenate([[0], np.cumsum(dur)[:-1]])
            kk["m"] = np.where(self.t_mm, tokens, 0)
            kk["n"] = np.where(self.t_mm, 576, 0)
            kk["k"] = np.where(self.t_mm, 576, 0)
            kern = int(dur.sum())
            st[i] = (phase, 0, self.step, tokens, 1, self.ctx, self.t, max(step_ns, kern + kern // 20), kern)
            self.t += max(step_ns, kern + kern // 20)
            self.step += 1
        new = [] if self.sent_names else list(self.names)
        self.sent_names = True
        return EventBatch(kernels=k, steps=st, names_base=0 if new else len(self.names), new_names=new)


@dataclass(slots=True)
class Result:
    start: float
    samples: list[tuple[float, float]]  # (simulated minutes, RSS MiB)
    steady: float
    end: float
    peak: float
    wall: float
    events: int
    sim_min: float
    frames: int
    rows: int


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def run(minutes: float, speed: float, warmup_min: float) -> Result:
    stream = Stream()
    agg = Aggregator(window_s=10.0)
    agg.set_source(SourceInfo(kind="live", backend="cpu", device="bench", model="synthetic SmolLM2-135M",
                              dtype="float32", timing="synthetic", max_context=8192, n_layers=N_LAYERS))
    provider = AggregatorProvider(agg)
    app = LlmtopApp(provider, refresh_hz=4.0)
    n_frames = [0]
    refresh_now = app.refresh_now

    def counted() -> object:
        n_frames[0] += 1
        return refresh_now()

    app.refresh_now = counted  # type: ignore[method-assign]
    samples: list[tuple[float, float]] = []  # (simulated minutes, RSS MiB)
    sim_end_ns = stream.t + int(minutes * 60e9)
    done = threading.Event()
    events = [0]

    def feed() -> None:
        w0 = time.perf_counter()
        t0 = stream.t
        next_sample = 0.0
        while stream.t < sim_end_ns:
            target = t0 + (time.perf_counter() - w0) * speed * 1e9  # where simulated time should be now
            n = int((target - stream.t) * STEPS_PER_S / 1e9)
            if n <= 0:
                time.sleep(0.01)
                continue
            b = stream.batch(min(n, 64))
            with provider.lock:
                agg.ingest(b)
            events[0] += len(b.kernels)
            sim_min = (stream.t - t0) / 60e9
            if sim_min >= next_sample:
                samples.append((sim_min, rss_mb()))
                next_sample += 1.0
        samples.append(((stream.t - t0) / 60e9, rss_mb()))
        done.set()

    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        start_rss = rss_mb()
        w0 = time.perf_counter()
        feeder = threading.Thread(target=feed, name="feeder", daemon=True)
        feeder.start()
        while not done.is_set():
            await asyncio.sleep(0.25)
        wall = time.perf_counter() - w0
        frames = n_frames[0]
        rows = app.table.row_count
    steady = next((r for m, r in samples if m >= warmup_min), samples[-1][1])
    return Result(start=start_rss, samples=samples, steady=steady, end=samples[-1][1],
                  peak=max(r for _, r in samples), wall=wall, events=events[0], sim_min=samples[-1][0],
                  frames=frames, rows=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="simulated minutes of events")
    ap.add_argument("--speed", type=float, default=10.0, help="simulated seconds per wall second")
    ap.add_argument("--warmup-min", type=float, default=5.0, help="simulated minutes before 'steady state'")
    a = ap.parse_args()
    r = asyncio.run(run(a.minutes, a.speed, a.warmup_min))
    growth = r.end - r.steady
    print(f"Simulated {r.sim_min:.1f} min of a SmolLM2-135M CPU decode ({r.events:,} kernel events) in "
          f"{r.wall:.0f} s wall ({60 * r.sim_min / r.wall:.1f}x real time; asked {a.speed:g}x), TUI headless "
          f"120x40 at 4 Hz ({r.frames} frames, {r.rows} kernel rows); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| simulated min | RSS MiB |")
    print("|---:|---:|")
    for m, rss in r.samples:
        print(f"| {m:.1f} | {rss:.1f} |")
    print("\n| RSS at start (app mounted) | steady state (after warm-up) | end | peak | growth end - steady "
          "| goal |")
    print("|---:|---:|---:|---:|---:|:---:|")
    print(f"| {r.start:.1f} MiB | {r.steady:.1f} MiB | {r.end:.1f} MiB | {r.peak:.1f} MiB | "
          f"{growth:+.1f} MiB | {'met' if growth <= 50 else 'NOT met'} (<= 50 MB) |")


if __name__ == "__main__":
    main()
