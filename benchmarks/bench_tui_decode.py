"""Decode tok/s with the whole live profiler running vs the engine headless with timing off.

Goal (live-profiler issue): the TUI costs <= 5 % of decode tok/s.

- headless: Engine + TorchOps with the recorder disabled (no per-kernel timing), generate() in
  this thread; tok/s from the step records (step walls are kept with timing off).
- live: exactly what `llmtop --no-loop --ignore-eos` builds (cli.build_live_session: the engine with
  timing on in its worker process, EngineProcessCollector + ProcessCollector + GpuCollector threads,
  aggregator thread, the Textual app refreshing at 4 Hz) run under Textual's headless driver at
  120x40; tok/s from the aggregator's cumulative report (the same step records). The headless driver
  composes every frame but writes no bytes to a terminal.
- live --in-process: the same with the engine in a thread of the UI process (the earlier design),
  for contrast.

Runs rotate through the modes with the same prompt and token count; medians and the ratio to
headless are printed as a markdown table.

Usage: python benchmarks/bench_tui_decode.py [--threads 2] [--tokens 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import torch

from llmtop.cli import build_live_session, build_parser
from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.torch_backend import TorchOps
from llmtop.model.engine import Engine
from llmtop.model.loader import load_model

PROMPT = "Write a long story about a dragon who learns to fly."


def headless(lm, threads: int, tokens: int) -> float:
    eng = Engine(lm, TorchOps(KernelRecorder(enabled=False), device="cpu", threads=threads))
    eng.eos_ids = frozenset()  # always generate `tokens`
    eng.generate([PROMPT], tokens)
    st = eng.ops.recorder.drain().steps
    dec = st[st["phase"] == 1]
    return float(dec["tokens"].sum() / (dec["dur_ns"].sum() / 1e9))


async def live(threads: int, tokens: int, in_process: bool) -> float:
    args = build_parser().parse_args(
        ["--backend", "cpu", "--threads", str(threads), "--no-loop", "--prompt", PROMPT,
         "--max-new-tokens", str(tokens), "--refresh", "4", "--ignore-eos"]
        + (["--in-process"] if in_process else [])
    )
    session = build_live_session(args)
    producer = next(c for c in session.pipeline.collectors if c.name == "engine")
    with session:
        async with session.app.run_test(size=(120, 40)) as pilot:
            while producer.alive:
                await pilot.pause(0.25)
            await pilot.pause(0.5)  # one more refresh with the final numbers
        rep = session.pipeline.snapshot(mode="cumulative").report
    return float(rep["tokens"]["decode_tok_s"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    lm = load_model("default")
    headless(lm, a.threads, 8)  # warm-up
    modes = ["headless", "live", "in_process"]
    res: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(a.repeats):
        for mode in modes[i % 3:] + modes[: i % 3]:  # rotate the order so drift hits every mode alike
            if mode == "headless":
                res[mode].append(headless(lm, a.threads, a.tokens))
            else:
                res[mode].append(asyncio.run(live(a.threads, a.tokens, mode == "in_process")))
    med = {m: statistics.median(v) for m, v in res.items()}
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"SmolLM2-135M fp32 CPU, {a.threads} threads, {a.tokens} new tokens, median of {a.repeats}\n")
    print("| run | decode tok/s (median) | runs | vs headless (ratio of medians) "
          "| vs headless (median of per-round ratios) |")
    print("|---|---|---|---|---|")
    for m, label in (("headless", "engine headless, timing off"),
                     ("live", "llmtop live TUI (4 Hz), engine in its worker process (default)"),
                     ("in_process", "llmtop live TUI (4 Hz) --in-process")):
        runs = ", ".join(f"{x:.2f}" for x in res[m])
        # per round: this mode against the headless run of the same round (same machine state, roughly)
        paired = statistics.median(x / h for x, h in zip(res[m], res["headless"], strict=True))
        print(f"| {label} | {med[m]:.2f} | {runs} | {100 * (med[m] / med['headless'] - 1):+.1f}% "
              f"| {100 * (paired - 1):+.1f}% |")


if __name__ == "__main__":
    main()
