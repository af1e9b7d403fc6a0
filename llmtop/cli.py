"""Command line entry point: `llmtop [options]` and, later, `llmtop <subcommand> ...`.

`main` dispatches on argv[0]: a name registered in SUBCOMMANDS runs that subcommand's handler
(report, replay, export, attach, serve register themselves there); anything else is the top-level
live profiler, which for now supports the headless `--once` run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

from llmtop.errors import LlmtopError, UsageError
from llmtop.events import DECODE, OP_CLASSES, PREFILL, EventBatch, NameTable

BACKENDS = ("cpu", "cuda")
DTYPE_CHOICES = ("float32", "bfloat16", "float16")

# name -> handler(argv_rest) -> exit code. Subcommand modules add themselves here.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmtop", description="top for LLM inference: profile a live decode loop")
    p.add_argument("--once", action="store_true", help="run one generation headless and print a summary")
    p.add_argument("--prompt", default="What is the capital of France?", help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt")
    p.add_argument("--backend", default="cpu", help=f"compute backend ({', '.join(BACKENDS)})")
    p.add_argument(
        "--model", default="default", help="'default', a .gguf file, an HF checkpoint dir or a preset"
    )
    p.add_argument("--dtype", default="float32", help=f"compute dtype ({', '.join(DTYPE_CHOICES)})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (also seeds preset weights)")
    p.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    p.add_argument("--no-timing", action="store_true", help="switch per-kernel timing off (step times stay)")
    p.add_argument("--format", default="text", help="output format for --once: text or json")
    return p


def make_ops(backend: str, dtype: str, *, threads: int | None, timing: bool) -> Any:
    """The Ops for a backend name; unknown names and missing hardware raise LlmtopError."""
    from llmtop.kernels.base import KernelRecorder

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPE_CHOICES)})")
    from llmtop.kernels.torch_backend import TorchOps

    return TorchOps(KernelRecorder(enabled=timing), device=backend, dtype=dtype, threads=threads)


def summarize(
    batches: Sequence[EventBatch], generated: int, names: NameTable | None = None
) -> dict[str, Any]:
    """First summary of a run straight from its event batches (the stats module supersedes it).

    `names` resolves kernel ids when the batches are not the whole stream from its start.
    """
    if names is None:
        names = NameTable()
        for b in batches:
            names.extend(b.names_base, b.new_names)
    kernels, steps = [], []
    for b in batches:
        kernels.append(b.kernels)
        steps.append(b.steps)
    k = np.concatenate(kernels) if kernels else np.zeros(0)
    s = np.concatenate(steps) if steps else np.zeros(0)

    def rate(phase: int) -> float:
        sel = s[s["phase"] == phase] if len(s) else s
        dur = int(sel["dur_ns"].sum()) if len(sel) else 0
        return float(sel["tokens"].sum()) / (dur / 1e9) if dur > 0 else 0.0

    prefill = s[s["phase"] == PREFILL] if len(s) else s
    ttft_ms = float(prefill["dur_ns"][0]) / 1e6 if len(prefill) else 0.0
    rows = []
    if len(k):
        ids, inv = np.unique(k["name"], return_inverse=True)
        totals = np.bincount(inv, weights=k["dur_ns"].astype(np.float64))
        counts = np.bincount(inv)
        op_class = np.zeros(len(ids), dtype=np.int64)
        op_class[inv] = k["op_class"]
        for i in np.argsort(-totals, kind="stable"):
            rows.append(
                {
                    "name": names[int(ids[i])],
                    "op_class": OP_CLASSES[int(op_class[i])],
                    "count": int(counts[i]),
                    "total_ms": round(float(totals[i]) / 1e6, 3),
                }
            )
    return {
        "ttft_ms": round(ttft_ms, 3),
        "decode_tok_s": round(rate(DECODE), 3),
        "prefill_tok_s": round(rate(PREFILL), 3),
        "generated": int(generated),
        "kernels": rows,
    }


def run_once(args: argparse.Namespace) -> int:
    from llmtop.kernels.base import SamplingParams
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    if args.format not in ("text", "json"):
        raise UsageError(f"unknown format {args.format!r} (choose from text, json)")
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    # Validate the backend before the (slow) model load, so a missing GPU fails fast.
    ops = make_ops(args.backend, args.dtype, threads=args.threads, timing=not args.no_timing)
    loaded = load_model(args.model, seed=args.seed or 0)
    if loaded.random_weights:
        print(
            f"llmtop: note: {loaded.source} has random weights; the generated text is meaningless",
            file=sys.stderr,
        )
    engine = Engine(loaded, ops, max_batch=1)
    loaded.weights = {}  # the backend holds its own copies (or zero-copy views); drop our refs
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    batches: list[EventBatch] = []
    t0 = time.perf_counter()
    gen = engine.generate([args.prompt], args.max_new_tokens, sampling, chat=not args.no_chat)[0]
    ops.synchronize()  # after this every CUDA event has completed, so one drain resolves all steps
    while (b := ops.recorder.drain()) is not None:
        batches.append(b)
    wall = time.perf_counter() - t0
    summary = summarize(batches, len(gen.token_ids))
    src = engine.source_info()
    if args.format == "json":
        out = {
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "prompt_tokens": gen.prompt_tokens,
            "source": {
                "backend": src.backend,
                "device": src.device,
                "model": src.model,
                "dtype": src.dtype,
                "timing": src.timing,
            },
            "tokens": {k: summary[k] for k in ("ttft_ms", "decode_tok_s", "prefill_tok_s", "generated")},
            "kernels": summary["kernels"],
        }
        print(json.dumps(out, indent=2))
    else:
        print(gen.text)
        print()
        print(f"model {src.model} | {src.backend} {src.dtype} | {src.device} | timing {src.timing}")
        print(
            f"prompt {gen.prompt_tokens} tok | generated {summary['generated']} tok ({gen.finish_reason})"
            f" | TTFT {summary['ttft_ms']:.1f} ms | prefill {summary['prefill_tok_s']:.1f} tok/s"
            f" | decode {summary['decode_tok_s']:.2f} tok/s | wall {wall:.2f} s"
        )
        rows = summary["kernels"]
        if rows:
            total = sum(r["total_ms"] for r in rows) or 1.0
            print(f"{'kernel':<22} {'class':<11} {'count':>7} {'total ms':>10} {'%':>6}")
            for r in rows[:10]:
                pct = 100.0 * r["total_ms"] / total
                print(
                    f"{r['name']:<22} {r['op_class']:<11} {r['count']:>7} {r['total_ms']:>10.2f} {pct:>5.1f}%"
                )
    ops.close()
    return 0


def _run_main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    if args.once:
        return run_once(args)
    raise UsageError("the live TUI is not available in this build yet; use --once for a headless run")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run_main(argv)
    except LlmtopError as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"llmtop: error: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
