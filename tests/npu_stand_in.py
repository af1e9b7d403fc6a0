"""What the NPU tests drive llmtop with, since no NPU is reachable: a fake `pyxrt` (tests/fake_pyxrt/, put on
PYTHONPATH only by these tests), an mlir-air-shaped decode loop written by the tests (DECODE_SCRIPT), and an
mlir-air `make profile` log written from the seed's published numbers (`mlir_air_log`).

Nothing here is a backend: llmtop never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fixture_paths import FIXTURES

FAKE_PYXRT_DIR = Path(__file__).resolve().parent / "fake_pyxrt"
MLIR_AIR_NUMBERS = FIXTURES / "npu" / "mlir_air_llama32_1b_numbers.json"

# An mlir-air llama32_1b-shaped run (programming_examples/llms/llama32_1b, paraphrased): load the ELF kernels,
# pre-load weights into per-layer BOs (outside any step), one prefill, then decode tokens, each
# 16 x (rms_gemv_rope -> decode attention on the CPU -> o_gemv_ffn) + final norm (CPU) + lm_head_gemv. Every
# call goes through KernelCache.load_and_run's shape: map() + copy + sync(TO_DEVICE) per written arg, run +
# set_arg + start + wait2, sync(FROM_DEVICE) + a view over map() per output. The script times the three
# segments itself (as mlir-air's Profiler does) and writes them, with its call counts, to OUT.
# argv: MODE OUT N_TOKENS. MODE zero: no llmtop import; host: CPU host ops marked with llmtop.agent's manual
# API (steps and layers inferred); steps: steps, layers and host ops marked.
DECODE_SCRIPT = r'''
import contextlib
import json
import sys
import time

import numpy as np
import pyxrt as xrt

assert getattr(xrt, "FAKE", False), "the tests drive the stand-in, never a real binding"
MODE, OUT, N_TOKENS = sys.argv[1], sys.argv[2], int(sys.argv[3])
N_LAYERS = 16
perf = time.perf_counter_ns
TO = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
FROM = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
agent = None
if MODE != "zero":
    import llmtop.agent

    agent = llmtop.agent.start()

truth = {"calls": {}, "write_ns": {}, "run_ns": {}, "read_ns": {}, "bytes_w": {}, "bytes_r": {},
         "setup_calls": {}, "host": {}, "host_ns": {}, "prefill_ns": 0, "token_ns": [], "loads": 0}


def add(d, k, v):
    d[k] = d.get(k, 0) + v


@contextlib.contextmanager
def host(name, cls):
    """A CPU host op: marked with the agent (modes host, steps), timed by the script either way."""
    ctx = agent.kernel(name, cls) if agent is not None else contextlib.nullcontext()
    with ctx:
        t0 = perf()
        yield
        add(truth["host_ns"], name, perf() - t0)
        add(truth["host"], name, 1)


def layer(i):
    return agent.layer(i) if MODE == "steps" else contextlib.nullcontext()


def step(phase, **kw):
    return agent.step(phase, **kw) if MODE == "steps" else contextlib.nullcontext()


class Cache:
    def __init__(self):
        self.kernels = {}
        self.bos = {}
        self.dev = xrt.device(0)

    def load(self, name):
        ctx = xrt.hw_context(self.dev, xrt.elf(f"{name}.elf"))
        self.kernels[name] = xrt.ext.kernel(ctx, "main:" + name)
        truth["loads"] += 3

    def run(self, name, arrays, outputs, static=(), key=None, setup=False):
        key = key or name
        first = key not in self.bos
        if first:
            self.bos[key] = [xrt.ext.bo(self.dev, a.nbytes) for a in arrays]
        bos = self.bos[key]
        t0 = perf()
        nbw = 0
        for i, a in enumerate(arrays):
            if i in static and not first:
                continue
            dst = np.frombuffer(bos[i].map(), dtype=np.uint8, count=a.nbytes)
            np.copyto(dst, a.reshape(-1).view(np.uint8))
            bos[i].sync(TO)
            nbw += a.nbytes
        t1 = perf()
        r = xrt.run(self.kernels[name])
        for i, b in enumerate(bos):
            r.set_arg(i, b)
        r.start()
        r.wait2()
        t2 = perf()
        for o in outputs:
            bos[o].sync(FROM)
        outs = [np.frombuffer(bos[o].map(), dtype=arrays[o].dtype, count=arrays[o].size) for o in outputs]
        t3 = perf()
        if setup:
            add(truth["setup_calls"], name, 1)
        else:
            add(truth["calls"], name, 1)
            add(truth["write_ns"], name, t1 - t0)
            add(truth["run_ns"], name, t2 - t1)
            add(truth["read_ns"], name, t3 - t2)
            add(truth["bytes_w"], name, nbw)
            add(truth["bytes_r"], name, sum(arrays[o].nbytes for o in outputs))
        return outs, t3


D, KV = 2048, 512
rng = np.random.default_rng(0)


def act(n=D):
    return rng.standard_normal(n).astype(np.float16)


w = {n: act(4096) for n in ("wq", "wo", "lm")}
cache = Cache()
for name in ("rms_gemms_rope", "o_ffn", "rms_gemv_rope", "o_gemv_ffn", "lm_head_gemv"):
    cache.load(name)
# prepare_runtime: weights pre-loaded into per-layer BOs (mlir-air's profile leaves these calls out)
for li in range(N_LAYERS):
    cache.run("rms_gemv_rope", [act(), w["wq"], act(), act(KV)], [2], static={1}, key=f"rgr_L{li}",
              setup=True)
    cache.run("o_gemv_ffn", [act(), w["wo"], act()], [2], static={1}, key=f"ogf_L{li}", setup=True)
cache.run("lm_head_gemv", [act(), w["lm"], act(8192)], [2], static={1}, setup=True)


def attention(q, pos):
    x = np.tanh(q.astype(np.float32) * 1e-3 * (1 + pos % 7))
    for _ in range(2):
        x = np.tanh(x + 1e-3)
    return x.astype(np.float16)


t_start = perf()
with step("prefill", tokens=64, ctx=64):
    with host("tokenize", "other"):
        time.sleep(0.001)
    with host("embed_lookup", "embedding"):
        x = act()
    for li in range(N_LAYERS):
        with layer(li):
            (q,), _ = cache.run("rms_gemms_rope", [x, act(), act()], [2])
            with host("prefill_cpu_attention", "attention"):
                a = attention(q, 0)
            (x,), _ = cache.run("o_ffn", [a, x, act()], [2])
            with host("kv_cache_extract", "memcpy"):
                _ = np.array(q, copy=True)
    with host("final_rms_norm", "norm"):
        xn = (x / (np.sqrt(np.mean(x.astype(np.float32) ** 2)) + 1e-6)).astype(np.float16)
    (logits,), t_end = cache.run("lm_head_gemv", [xn, w["lm"], act(8192)], [2], static={1})
truth["prefill_ns"] = t_end - t_start
with host("embed_lookup", "embedding"):
    x = act()
last = t_end
for tok in range(N_TOKENS):
    with step("decode", tokens=1, ctx=65 + tok):
        for li in range(N_LAYERS):
            with layer(li):
                (q,), _ = cache.run("rms_gemv_rope", [x, w["wq"], act(), act(KV)], [2], static={1},
                                    key=f"rgr_L{li}")
                with host("decode_attention_cpu", "attention"):
                    a = attention(q, tok)
                (x,), _ = cache.run("o_gemv_ffn", [a, w["wo"], act()], [2], static={1}, key=f"ogf_L{li}")
        with host("final_rms_norm", "norm"):
            xn = x.copy()
        (logits,), t_end = cache.run("lm_head_gemv", [xn, w["lm"], act(8192)], [2], static={1})
    truth["token_ns"].append(t_end - last)
    last = t_end
    with host("embed_lookup", "embedding"):
        x = act()
json.dump(truth, open(OUT, "w"))
print("npu decode done")
'''


def numbers() -> dict[str, Any]:
    return json.loads(MLIR_AIR_NUMBERS.read_text())


def mlir_air_log(num: dict[str, Any] | None = None) -> str:
    """The tail of an mlir-air llama32_1b `make profile` log (its END-TO-END DATAFLOW summary and the prefill
    and decode PROFILING REPORTs), in the layout those print, filled with `num` (default: the seed's)."""
    num = num or numbers()
    L, n_tok = num["n_layers"], num["decode_tokens"]
    pre, dec = num["prefill"], num["decode"]
    lm = next(k for k in dec["npu"] if k["name"] == "lm_head_gemv")
    out: list[str] = []
    p = out.append
    p("=" * 60)
    p(f"LLAMA Inference: prompt_len={num['seq_len']}, n_tokens={n_tok}")
    p("=" * 60)
    p("")
    p(f"Time to first token (TTFT): {num['ttft_s']:.2f}s (tokenize + EOS-pad + NPU prefill + LM head). "
      "First token: 791")
    p(f"\nDecoding {n_tok} tokens (token 1 to {n_tok})...")
    p("\n" + "=" * 68)
    p("END-TO-END DATAFLOW (per make profile, dataflow order)")
    p("=" * 68)
    p(f"\n  Preprocessing (one-time, prepare_runtime): {num['preprocessing_s']:.1f} s"
      "   ← not counted in per-query wall below")

    def row(label: str, kind: str, ms: float) -> None:
        p(f"  {label:<38}{kind:<6}{ms:>8.2f} ms  ")

    for title, ph, per in (("PREFILL (per query, seq_len padded)", pre, "per layer"),
                           (f"DECODE (avg per token, {n_tok} tokens)", dec, "per layer, per token")):
        p(f"\n--- {title} ---")
        calls = {k["name"]: ("NPU", k["avg"]) for k in ph["npu"]}
        calls |= {k["name"]: ("CPU", k["avg"]) for k in ph["cpu"]}
        calls.setdefault("lm_head_gemv", ("NPU", lm["avg"]))
        before = [n for n in ph["order_out"] if n != "final_rms_norm" and n != "lm_head_gemv"]
        for n in before:
            row(n, *calls[n])
        p(f"  ┌─ Decoder block × {L} ({per}) ─────────────────────────────┐")
        for n in ph["order_in"]:
            row("  " + n + (".elf" if calls[n][0] == "NPU" else ""), *calls[n])
        inner = sum(calls[n][1] for n in ph["order_in"])
        row("  python/numpy scheduling", "—", max(0.0, ph["layer_wall"] - inner))
        p(f"  │  {'─' * 52}")
        p(f"  │  {'per-layer wall':<35}{'':<6}{ph['layer_wall']:>8.2f} ms")
        p("  └──────────────────────────────────────────────────────────┘")
        p(f"  {'× ' + str(L) + ' layers':<38}{'':<6}{ph['layer_wall'] * L:>8.2f} ms")
        row("final_rms_norm", *calls["final_rms_norm"])
        row("lm_head_gemv.elf", *calls["lm_head_gemv"])
        p(f"  {'─' * 60}")
    first, mid, last = dec["trend"]
    p("\n  Per-token layer-loop wall trend (decode-attention CPU scales with KV cache size):")
    p(f"    token  1 = {first:6.2f} ms   token {n_tok // 2 + 1:2d} = {mid:6.2f} ms   "
      f"token {n_tok:2d} = {last:6.2f} ms")
    drift = last - first
    p(f"    min = {min(dec['trend']):6.2f} ms   max = {max(dec['trend']):6.2f} ms   avg = {mid:6.2f} ms   "
      f"first→last drift = {drift:+.2f} ms ({drift / first * 100:+.1f}%)")

    def report(ph: dict[str, Any], steps: int, extra_lm: int) -> None:
        npu = [dict(k) for k in ph["npu"]]
        for k in npu:
            k["count"] = k.get("per_layer", 0) * L * steps + k.get("per_step", 0) * steps
        if extra_lm:
            next(k for k in npu if k["name"] == "lm_head_gemv")["count"] += extra_lm
        p("\n" + "=" * 60)
        p("PROFILING REPORT")
        p("=" * 60)
        npu_ms = sum(k["avg"] * k["count"] for k in npu)
        cpu_ms = sum(c["avg"] * c["count"] for c in ph["cpu"])
        p("\n--- Wall-Time Attribution ---")
        p(f"  NPU XRT calls         {npu_ms:9.2f}ms  ({sum(k['count'] for k in npu)} calls)")
        p(f"  CPU host ops          {cpu_ms:9.2f}ms  ({sum(c['count'] for c in ph['cpu'])} calls)")
        p(f"  Layer-loop wall       {ph['layer_wall'] * L * steps:9.2f}ms  ({L * steps} layer-invocations)")
        p("\n--- Per-Layer Execution ---")
        for i in range(L):
            w = ph["layer_wall"]
            p(f"  Layer {i:3d}: {w:7.2f}ms" if steps == 1 else
              f"  Layer {i:3d}: avg={w:7.2f}ms  min={w * 0.99:7.2f}ms  max={w * 1.01:7.2f}ms  (x{steps})")
        p(f"  {'Total layer-time':40s} {ph['layer_wall'] * L * steps:8.2f}ms")
        p("\n--- NPU XRT Call Breakdown (avg per invocation) ---")
        for k in sorted(npu, key=lambda k: k["name"]):
            p(f"  {k['name']:40s} avg={k['avg']:7.2f}ms  min={k['avg']:7.2f}ms  max={k['avg']:7.2f}ms  "
              f"(x{k['count']})")
        p(f"  {'Total kernel time':40s} {npu_ms:8.2f}ms")
        p(f"  {'Avg per layer (kernel time)':40s} {npu_ms / (L * steps):8.2f}ms")
        p("\n--- CPU Op Breakdown (avg per invocation) ---")
        for c in sorted(ph["cpu"], key=lambda c: c["name"]):
            p(f"  {c['name']:40s} avg={c['avg']:7.2f}ms  min={c['avg']:7.2f}ms  max={c['avg']:7.2f}ms  "
              f"(x{c['count']})")
        p(f"  {'Total CPU op time':40s} {cpu_ms:8.2f}ms")
        p("\n--- Fine-Grained NPU Breakdown (avg per invocation) ---")
        p("  Three-segment timing of each XRT call:")
        p(f"  {'Kernel':20s} {'BO Write':>10s} {'NPU Run':>10s} {'BO Read':>10s} {'Total':>10s}  "
          f"{'Written':>8s} {'Read':>6s}")
        p(f"  {'─' * 20} {'─' * 10} {'─' * 10} {'─' * 10} {'─' * 10}  {'─' * 8} {'─' * 6}")
        for k in sorted(npu, key=lambda k: k["name"]):
            tot = k["write"] + k["run"] + k["read"]
            p(f"  {k['name']:20s} {k['write']:8.2f}ms {k['run']:8.2f}ms {k['read']:8.2f}ms {tot:8.2f}ms"
              f"  {k['mb']:6.1f}MB {k['read_bos']:4.0f}bo  (x{k['count']})")
        tw = sum(k["write"] * k["count"] for k in npu)
        tk = sum(k["run"] * k["count"] for k in npu)
        tr = sum(k["read"] * k["count"] for k in npu)
        p(f"  {'─' * 20} {'─' * 10} {'─' * 10} {'─' * 10} {'─' * 10}")
        p(f"  {'TOTAL':20s} {tw:8.1f}ms {tk:8.1f}ms {tr:8.1f}ms {tw + tk + tr:8.1f}ms")

    p("\n" + "=" * 60 + "\nPREFILL — detail tables")
    report(pre, 1, 0)
    p("\n" + "=" * 60 + f"\nDECODE ({n_tok} tokens) — detail tables")
    report(dec, n_tok, 1)  # the prefill's LM head runs through the decode cache: one call more
    return "\n".join(out) + "\n"
