"""`llmtop run -- python -m vllm.entrypoints.openai.api_server …` on vLLM's CPU build: a real server.

Runs only where `vllm` is importable: `make test-vllm` (the venv from `make vllm-venv`, docs/VLLM.md).
The test writes a tiny random Llama (2 layers, head_dim 64: vLLM-CPU's attention rejects smaller heads)
with the shipped SmolLM2 tokenizer, serves it under `llmtop run --once`, sends concurrent completions
with `ignore_eos`, stops the server with SIGINT and checks llmtop's report against the token counts
vLLM itself returned in each response's `usage`.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm not importable: run `make test-vllm` (docs/VLLM.md)"),
]

SERVED = "tiny"


def tiny_llama(d: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmtop.model.loader import default_model_path

    gguf = Path(default_model_path())
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cmd(model: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
            "--max-num-seqs", "4", "--served-model-name", SERVED, *extra]


def vllm_env() -> dict[str, str]:
    n = os.cpu_count() or 1
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": f"0-{n - 1}",
            "PYTHONUNBUFFERED": "1"}


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"llmtop run exited early with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("vLLM did not become healthy")


def complete(port: int, i: int) -> dict:
    body = json.dumps({"model": SERVED, "prompt": f"Request {i}: a story about the number {i * 7}",
                       "max_tokens": 10 + i % 5, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["usage"]


def serve_under_llmtop(tmp_path: Path, *extra: str, requests: int = 6) -> tuple[int, dict, list, str]:
    model = tiny_llama(tmp_path / "tiny")
    port = free_port()
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "llmtop", "run", "--once", "--format", "json", "--",
                                 *server_cmd(model, port, *extra)], stdout=o, stderr=e, env=vllm_env())
        try:
            wait_healthy(port, proc)
            with cf.ThreadPoolExecutor(3) as ex:
                usage = list(ex.map(lambda i: complete(port, i), range(requests)))
            proc.send_signal(signal.SIGINT)  # llmtop passes it on; vLLM shuts down; the report follows
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    start = text.find('{\n  "command"')
    assert start >= 0, err.read_text()[-3000:]
    return rc, json.loads(text[start:]), usage, err.read_text()


def test_vllm_server_op_level_and_true_token_counts(tmp_path: Path) -> None:
    rc, rep, usage, err = serve_under_llmtop(tmp_path, "--enforce-eager")
    assert rc == 0, err[-3000:]
    tok = rep["tokens"]
    # vLLM's own counts, from each response: llmtop's steps come from vLLM's scheduler, not from shapes
    assert tok["generated"] == sum(u["completion_tokens"] for u in usage)
    assert tok["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert rep["source"]["n_layers"] == 2
    names = {k["name"]: k for k in rep["kernels"]}
    for n in ("matmul:qkv_proj", "matmul:o_proj", "matmul:gate_up_proj", "matmul:down_proj", "matmul:lm_head",
              "attention:prefill", "attention:decode", "rmsnorm:attn_norm", "rmsnorm:ffn_norm",
              "rmsnorm:final_norm", "rope", "silu_mul", "embedding", "sampling"):
        assert n in names, (n, sorted(names))
    assert {k["op_class"] for k in rep["kernels"]} >= {"matmul", "attention", "norm", "rope", "elementwise"}
    # the shared rotary module is timed under the layer that calls it, in both layers
    assert {row["layer"] for row in rep["layers"]} == {0, 1}
    assert all(row["by_op_class"].get("rope") for row in rep["layers"])
    assert rep["attention"]["steps"] == tok["decode_steps"] > 0
    for phase in ("prefill", "decode"):  # Σ op time ≤ step wall in every step
        a = rep["attribution"][phase]
        assert a["steps"] > 0 and not a["clamped"] and a["kernel_ms"] <= a["wall_ms"]


def test_vllm_compiled_model_is_named_not_silently_empty(tmp_path: Path) -> None:
    """Without --enforce-eager vLLM compiles the model: llmtop says so in one line and still counts tokens."""
    rc, rep, usage, err = serve_under_llmtop(tmp_path, requests=2)
    assert rc == 0, err[-3000:]
    notes = [x for x in err.splitlines() if x.startswith("llmtop: note:") and "--enforce-eager" in x]
    assert len(notes) == 1, err[-3000:]
    assert rep["tokens"]["generated"] == sum(u["completion_tokens"] for u in usage)
