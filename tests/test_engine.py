"""Decode engine on the shipped SmolLM2-135M GGUF: answers, event accounting, batching, sampling, CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from llmtop.cli import main
from llmtop.errors import LlmtopError
from llmtop.events import DECODE, PREFILL
from llmtop.kernels.base import KernelRecorder, SamplingParams
from llmtop.kernels.factory import pick_backend
from llmtop.kernels.torch_backend import TorchOps
from llmtop.model.engine import Engine
from llmtop.model.loader import load_model

LAYER_OPS = [
    "rmsnorm:attn_norm",
    "matmul:q_proj",
    "matmul:k_proj",
    "matmul:v_proj",
    "rope",
    "memcpy:kv_write",
    "attention:decode",
    "matmul:o_proj",
    "add:attn_residual",
    "rmsnorm:ffn_norm",
    "matmul:gate_proj",
    "matmul:up_proj",
    "silu_mul",
    "matmul:down_proj",
    "add:ffn_residual",
]


@pytest.fixture(scope="module")
def loaded():
    return load_model("default")


@pytest.fixture(scope="module")
def engine(loaded):
    return Engine(loaded, TorchOps(KernelRecorder(), device="cpu"), max_batch=2)


def test_capital_of_france(engine):
    engine.ops.recorder.drain()
    g = engine.generate(["What is the capital of France?"], 24)[0]
    assert "Paris" in g.text
    assert g.finish_reason == "eos" and g.token_ids[-1] in engine.eos_ids


def test_events_one_per_op_and_within_step_wall(engine, loaded):
    rec = engine.ops.recorder
    rec.drain()
    gens = engine.generate(["Count from one to ten."], 6)
    batch = rec.drain()
    steps, k = batch.steps, batch.kernels
    n_layers = loaded.config.n_layers
    assert list(steps["phase"]) == [PREFILL] + [DECODE] * (len(gens[0].token_ids) - 1)
    assert np.all(np.diff(steps["step"]) == 1)
    for s in steps:
        ks = k[k["step"] == s["step"]]
        assert s["kernel_ns"] == ks["dur_ns"].sum()
        assert 0 < ks["dur_ns"].sum() <= s["dur_ns"], "kernel time must fit in the step's wall time"
        assert np.all(ks["start_ns"] >= s["start_ns"])
        assert np.all(ks["start_ns"] + ks["dur_ns"] <= s["start_ns"] + s["dur_ns"])
        assert np.all(np.diff(ks["start_ns"]) >= 0)
    names = [rec.names[int(i)] for i in k["name"]]
    dec_step = steps["step"][steps["phase"] == DECODE][0]
    dec_names = [n for n, st in zip(names, k["step"], strict=True) if st == dec_step]
    expected = ["embedding"] + LAYER_OPS * n_layers + ["rmsnorm:final_norm", "matmul:lm_head", "sampling"]
    assert len(dec_names) == 1 + n_layers * 15 + 3
    assert dec_names == expected
    dk = k[k["step"] == dec_step]
    assert list(dk["layer"][1:-3]) == [i for i in range(n_layers) for _ in range(15)]
    cfg = loaded.config
    q = dk[np.array(dec_names) == "matmul:q_proj"][0]
    assert (q["m"], q["n"], q["k"]) == (1, cfg.q_dim, cfg.hidden_size)
    head = dk[np.array(dec_names) == "matmul:lm_head"][0]
    assert (head["m"], head["n"], head["k"]) == (1, cfg.vocab_size, cfg.hidden_size)
    # prefill: attention:prefill in every layer, lm_head on one row per sequence only
    pk = k[k["step"] == steps["step"][0]]
    pnames = np.array(names)[k["step"] == steps["step"][0]]
    assert (pnames == "attention:prefill").sum() == n_layers
    assert pk[pnames == "matmul:lm_head"][0]["m"] == 1
    assert pk[pnames == "matmul:q_proj"][0]["m"] == gens[0].prompt_tokens


def test_batch_equals_single(engine):
    prompts = ["Tell me a fact about the sun.", "Hi!"]
    alone = [engine.generate([p], 10)[0] for p in prompts]
    together = engine.generate(prompts, 10)
    for a, t in zip(alone, together, strict=True):
        assert a.token_ids == t.token_ids
        assert a.finish_reason == t.finish_reason


def test_seeded_sampling_reproducible(engine):
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=1234)
    a = engine.generate(["Write a poem about cats."], 8, p)[0]
    b = engine.generate(["Write a poem about cats."], 8, p)[0]
    assert a.token_ids == b.token_ids
    others = [
        engine.generate(["Write a poem about cats."], 8, SamplingParams(1.0, 50, 0.95, seed=s))[0].token_ids
        for s in (1, 2)
    ]
    assert any(o != a.token_ids for o in others)


def test_edge_cases(engine, loaded):
    g = engine.generate(["Hello"], 0)[0]
    assert g.token_ids == [] and g.text == "" and g.prompt_tokens > 0
    g = engine.generate([""], 3, chat=False)[0]  # empty prompt: starts from BOS
    assert 1 <= len(g.token_ids) <= 3
    stop = threading.Event()
    stop.set()
    assert engine.generate(["Hello"], 5, stop_event=stop)[0].finish_reason == "stopped"
    with pytest.raises(LlmtopError, match="max_batch"):
        engine.generate(["a", "b", "c"], 2)
    short = Engine(loaded, TorchOps(KernelRecorder(), device="cpu"), max_context=16)
    with pytest.raises(LlmtopError, match="longer than the context"):
        short.generate(["word " * 40], 4, chat=False)
    # a prompt that fits leaves room only up to the context: generation stops at "length"
    g = short.generate(["one two three"], 50, chat=False)[0]
    assert g.finish_reason in ("length", "eos") and g.prompt_tokens + len(g.token_ids) <= 17


def test_on_tokens_streams_every_step(engine):
    prompts = ["Count from one to ten.", "Name a color."]
    ids = [engine.encode_prompt(p) for p in prompts]
    seen: list[tuple[int, list, list]] = []
    gens = engine.generate(ids, [7, 3], on_tokens=lambda s, t, f: seen.append((s, list(t), list(f))))
    assert [s for s, _, _ in seen] == list(range(len(seen)))  # step 0 = prefill, then one per decode step
    for b, g in enumerate(gens):
        streamed = [t[b] for _, t, _ in seen if t[b] is not None]
        assert streamed == g.token_ids  # every kept token, in order, nothing after the row finished
        ends = [(i, f[b]) for i, (_, _, f) in enumerate(seen) if f[b] is not None]
        assert ends == [(len(streamed) - 1, g.finish_reason)]
    assert len(gens[1].token_ids) <= 3
    # token-id prompts and text prompts are the same generation
    assert engine.generate(prompts, [7, 3])[0].token_ids == gens[0].token_ids


def test_on_tokens_can_stop_rows(engine):
    stopped_at: list[int] = []

    def stop_row0(step: int, tokens: list, finished: list) -> list[int]:
        if step == 2:
            stopped_at.append(step)
            return [0]
        assert step < 2 or tokens[0] is None  # a stopped row yields no more tokens
        return []

    engine.eos_ids, eos = frozenset(), engine.eos_ids
    try:
        a, b = engine.generate(["Hello", "Tell me a story."], 6, on_tokens=stop_row0)
    finally:
        engine.eos_ids = eos
    assert stopped_at == [2]
    assert a.finish_reason == "stopped" and len(a.token_ids) == 3
    assert b.finish_reason == "length" and len(b.token_ids) == 6
    with pytest.raises(LlmtopError, match="outside the vocabulary"):
        engine.generate([[1, 10**9]], 2)


def test_timing_off_keeps_steps(loaded):
    ops = TorchOps(KernelRecorder(enabled=False), device="cpu")
    assert ops.timing == "off"
    eng = Engine(loaded, ops)
    eng.generate(["Hi"], 3)
    b = ops.recorder.drain()
    assert len(b.kernels) == 0 and len(b.steps) >= 1 and np.all(b.steps["kernel_ns"] == -1)
    info = eng.source_info()
    assert info.kind == "live" and info.backend == "cpu" and info.timing == "off"
    assert info.n_layers == loaded.config.n_layers


def test_aggregator_report_from_batches(loaded):
    from llmtop.stats.aggregator import Aggregator

    # a fresh recorder: its first batch carries the name table the aggregator needs
    engine = Engine(loaded, TorchOps(KernelRecorder(), device="cpu"))
    rec = engine.ops.recorder
    g = engine.generate(["Name three colors."], 8)[0]
    agg = Aggregator()
    agg.set_source(engine.source_info())
    agg.ingest(rec.drain())
    s = agg.snapshot(mode="cumulative").report
    t = s["tokens"]
    assert t["ttft_ms"] > 0 and t["prefill_tok_s"] > 0 and t["generated"] == len(g.token_ids)
    if len(g.token_ids) > 1:
        assert t["decode_tok_s"] > 0
    totals = [r["total_ms"] for r in s["kernels"]]
    assert totals == sorted(totals, reverse=True)
    assert {r["name"] for r in s["kernels"]} >= {"matmul:lm_head", "attention:prefill", "sampling"}


def test_cli_once_text_and_json(capsys):
    assert main(["--once", "--prompt", "What is the capital of France?", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "decode" in out and "matmul:" in out
    rc = main(["--once", "--prompt", "Hi", "--max-new-tokens", "4", "--format", "json", "--seed", "3",
               "--temperature", "0.7", "--top-k", "20", "--top-p", "0.9"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) >= {"text", "source", "tokens", "kernels"}
    # --backend auto: cuda where torch sees a GPU, else cpu
    assert d["source"]["backend"] == pick_backend() and d["source"]["model"].endswith(".gguf")
    assert set(d["tokens"]) >= {"ttft_ms", "decode_tok_s", "prefill_tok_s", "generated"}
    assert 1 <= d["tokens"]["generated"] <= 4
    assert {"name", "op_class", "count", "total_ms"} <= set(d["kernels"][0])


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["--backend", "tpu"], "unknown backend 'tpu'", 2),
        (["--backend", "cuda"], "CUDA backend unavailable", 1),
        (["--model", "no-such-preset"], "unknown model", 1),
        (["--max-new-tokens", "-2"], "--max-new-tokens", 2),
        (["--format", "xml"], "unknown format", 2),
        (["--dtype", "int3"], "unknown dtype", 2),
        (["--bogus"], "unrecognized arguments", 2),
    ],
)
def test_cli_bad_input_one_line(capsys, args, needle, code):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present, so --backend cuda is valid here")
    rc = main(["--once", "--max-new-tokens", "1", *args])
    err = capsys.readouterr().err
    assert rc == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtop: error: ") and needle in lines[0]


def test_cli_preset_notes_random_weights(capsys):
    assert main(["--once", "--model", "smollm2-135m", "--max-new-tokens", "2", "--format", "json"]) == 0
    cap = capsys.readouterr()
    assert "random weights" in cap.err and "meaningless" in cap.err
    assert json.loads(cap.out)["source"]["model"].startswith("preset:")
