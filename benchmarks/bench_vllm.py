"""A real vLLM CPU server with and without `llmtop run`: client-side tok/s, side by side (markdown table).

Run it with the vLLM venv's Python (`make vllm-venv`, docs/VLLM.md):

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--rounds 3] [--requests 16] [--concurrency 4]
        [--tokens 64] [--layers 30]

The model is SmolLM2-135M-shaped (30 layers, hidden 576, 9 heads of 64, 3 KV heads, vocab 49,152) with
random weights and the shipped SmolLM2 tokenizer, written once to a temp dir (nothing is downloaded). Per
round, in turn: plain vLLM | `llmtop run --once --ops layers` | `llmtop run --once --ops all`, each a fresh
server with `--enforce-eager` (hooks cannot fire in compiled graphs). Per server: 2 warm-up requests,
then `--requests` completions at `--concurrency`, `ignore_eos`, `--tokens` each; tok/s = completion tokens
summed from the responses' `usage` / wall time of the batch, as a client sees it. Reported: the median over
rounds of each configuration's tok/s, and the median of its paired ratio to the same round's plain server.
llmtop's own decode tok/s and generated-token count (its report) are shown beside the client's truth.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SERVED = "bench"


def build_model(d: Path, layers: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmtop.model.loader import default_model_path

    gguf = Path(default_model_path())
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def complete(port: int, i: int, tokens: int) -> dict:
    body = json.dumps({"model": SERVED, "prompt": f"Request {i}: write about the number {i * 7} and more",
                       "max_tokens": tokens, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["usage"]


def one_server(model: Path, mode: str, args: argparse.Namespace, tmp: Path) -> dict:
    port = free_port()
    serve = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host",
             "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048",
             "--max-num-seqs", str(args.concurrency), "--enforce-eager", "--served-model-name", SERVED]
    cmd = serve if mode == "plain" else [sys.executable, "-m", "llmtop", "run", "--once", "--format", "json",
                                         "--ops", mode, "--", *serve]
    n = os.cpu_count() or 1
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"0-{n - 1}"}
    out = tmp / f"{mode}.out"
    with out.open("w") as o:
        proc = subprocess.Popen(cmd, stdout=o, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: server did not start; see {out}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            for i in range(2):
                complete(port, 1000 + i, 8)
            t = time.perf_counter()
            with cf.ThreadPoolExecutor(args.concurrency) as ex:
                usage = list(ex.map(lambda i: complete(port, i, args.tokens), range(args.requests)))
            wall = time.perf_counter() - t
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    gen = sum(u["completion_tokens"] for u in usage)
    res = {"tok_s": gen / wall, "generated": gen + 2 * 8}  # + the warm-up requests' tokens
    if mode != "plain":
        text = out.read_text()
        start = text.find('{\n  "command"')
        if start >= 0:
            rep = json.loads(text[start:])
            res["llmtop_generated"] = rep["tokens"]["generated"]
            res["llmtop_decode_tok_s"] = rep["tokens"]["decode_tok_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    modes = ("plain", "layers", "all")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        model = build_model(tmp / "model", args.layers)
        for r in range(args.rounds):
            for m in modes:
                runs[m].append(one_server(model, m, args, tmp))
                print(f"round {r + 1} {m}: {runs[m][-1]}", file=sys.stderr, flush=True)
    print(f"\nvLLM-CPU, {args.layers}-layer SmolLM2-135M-shaped random model, {args.requests} requests x "
          f"{args.tokens} tokens at concurrency {args.concurrency}, {args.rounds} rounds (medians)\n")
    print("| configuration | client tok/s | vs plain (paired) | llmtop generated = truth "
          "| llmtop decode tok/s |")
    print("|---|---|---|---|---|")
    for m in modes:
        tok = statistics.median(x["tok_s"] for x in runs[m])
        pairs = zip(runs[m], runs["plain"], strict=True)
        ratio = statistics.median(x["tok_s"] / p["tok_s"] for x, p in pairs)
        if m == "plain":
            print(f"| vLLM alone | {tok:.1f} | 1.00 | – | – |")
            continue
        same = all(x.get("llmtop_generated") == x["generated"] for x in runs[m])
        dec = statistics.median(x.get("llmtop_decode_tok_s", float("nan")) for x in runs[m])
        print(f"| `llmtop run --ops {m}` | {tok:.1f} | {ratio:.3f} ({(ratio - 1) * 100:+.1f} %) | "
              f"{'yes' if same else 'NO'} | {dec:.1f} |")


if __name__ == "__main__":
    main()
