"""Decode tok/s of the shipped SmolLM2-135M on the wgpu backend vs the torch cpu backend, same machine.

Usage: .venv/bin/python benchmarks/bench_wgpu_decode.py [--tokens 16] [--dtype float32]
tok/s = decode tokens / summed decode-step wall time (prefill excluded); GPU ms/token = summed kernel time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from llmtop.events import DECODE
from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.torch_backend import TorchOps
from llmtop.kernels.wgpu_backend import create_wgpu_ops
from llmtop.model.engine import Engine
from llmtop.model.loader import load_model


def run(name: str, ops, loaded, tokens: int) -> tuple[str, float, float, str]:
    eng = Engine(loaded, ops, max_context=256)
    eng.generate(["The capital of France is"], tokens, chat=False)
    b = ops.recorder.drain()
    dec = b.steps[b.steps["phase"] == DECODE][1:]  # first decode step warms pipelines and bind groups
    wall = dec["dur_ns"].sum() / 1e9
    kern = dec["kernel_ns"].sum() / 1e6 / max(1, len(dec)) if (dec["kernel_ns"] >= 0).all() else float("nan")
    return name, len(dec) / wall, kern, ops.timing


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    print(f"`{' '.join(['python', *sys.argv])}` ({time.strftime('%Y-%m-%d %H:%M')})\n")
    loaded = load_model("default")
    rows = [run("cpu (torch)", TorchOps(KernelRecorder(), device="cpu", dtype=a.dtype), loaded, a.tokens)]
    wops = create_wgpu_ops(KernelRecorder(), a.dtype)
    rows.append(run(f"wgpu ({wops.device_name})", wops, loaded, a.tokens))
    threads = os.environ.get("LP_NUM_THREADS", "unset")  # the wgpu backend may have set it (lavapipe)
    print(f"SmolLM2-135M {a.dtype}, batch 1, {a.tokens} new tokens; LP_NUM_THREADS={threads}\n")
    print("| backend | decode tok/s | kernel ms / token | timing |")
    print("|---|---:|---:|---|")
    for name, tps, kern, timing in rows:
        print(f"| {name} | {tps:.2f} | {kern:.1f} | {timing} |")
    print(f"\nwgpu / cpu: {rows[1][1] / rows[0][1]:.2f}x")
    return 0 if np.isfinite(rows[1][1]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
