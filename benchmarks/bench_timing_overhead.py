"""Cost of llmtop's own per-kernel timing: decode tok/s with timing on vs off, interleaved runs,
plus torch.profiler(activities=[CPU]) around the same loop as the anchor.

Two estimates of the cost: the ratio of median tok/s over whole runs, and a paired one that is far
less sensitive to a noisy machine: each "on" run is paired with the "off" run next to it (same
prompt, same number of steps, so step i has the same context in both), and the cost is the median
of the per-step differences over the median "off" step.

Usage: python benchmarks/bench_timing_overhead.py [--threads 2] [--tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.torch_backend import TorchOps
from llmtop.model.engine import Engine
from llmtop.model.loader import load_model

PROMPT = "Write a long story about a dragon who learns to fly."


def decode_steps(eng: Engine, tokens: int) -> np.ndarray:
    """Wall ns of each decode step of one generation."""
    rec = eng.ops.recorder
    rec.drain()
    eng.generate([PROMPT], tokens)
    st = rec.drain().steps
    return st["dur_ns"][st["phase"] == 1].astype(np.float64)


def tok_s(steps: np.ndarray) -> float:
    return float(len(steps) / (steps.sum() / 1e9))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    lm = load_model("default")
    engines = {}
    for mode in ("on", "off", "profiler"):
        e = Engine(lm, TorchOps(KernelRecorder(enabled=mode == "on"), device="cpu", threads=a.threads))
        e.eos_ids = frozenset()
        engines[mode] = e
    res: dict[str, list[np.ndarray]] = {m: [] for m in engines}
    decode_steps(engines["on"], 8)  # warm-up
    decode_steps(engines["off"], 8)
    for i in range(a.repeats):  # alternate the order so drift and warm-up hit both modes alike
        for m in ("on", "off") if i % 2 == 0 else ("off", "on"):
            res[m].append(decode_steps(engines[m], a.tokens))
    # the profiler last: its teardown can leave the process slower, which would bias later runs
    for _ in range(a.repeats):
        with profile(activities=[ProfilerActivity.CPU]):
            res["profiler"].append(decode_steps(engines["profiler"], a.tokens))
    rates = {m: [tok_s(x) for x in v] for m, v in res.items()}
    med = {m: statistics.median(v) for m, v in rates.items()}
    diffs = np.concatenate([on - off for on, off in zip(res["on"], res["off"], strict=True)])
    off_step = float(np.median(np.concatenate(res["off"])))
    paired = 100 * float(np.median(diffs)) / off_step
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"SmolLM2-135M fp32 CPU, {a.threads} threads, {a.tokens} tokens, median of {a.repeats} runs\n")
    print("| mode | decode tok/s (median) | runs | cost vs off |")
    print("|---|---|---|---|")
    for m, label in (("off", "timing off"), ("on", "llmtop timing on"), ("profiler", "torch.profiler CPU")):
        runs = ", ".join(f"{x:.2f}" for x in rates[m])
        print(f"| {label} | {med[m]:.2f} | {runs} | {100 * (1 - med[m] / med['off']):+.1f}% |")
    print(f"\npaired per-step cost of llmtop timing: {paired:+.2f}% "
          f"(median step difference {np.median(diffs) / 1e3:+.0f} µs over a {off_step / 1e6:.2f} ms step, "
          f"{len(diffs)} step pairs)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
