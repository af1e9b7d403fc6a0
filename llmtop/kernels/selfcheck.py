"""Start-up self-check: run every kernel kind once on a small input and compare with numpy.

Why: a WebGPU adapter can compile every shader, run every dispatch, report success and still compute
garbage (llvmpipe through wgpu's OpenGL backend decoded `'numerableusernas'` for `' Paris.'` with exit 0,
because GL guesses a texture's view dimension). Nothing downstream can tell: the timings look real. So
before a backend serves its first step it proves, on a toy layer, that its results match a float64 numpy
reference, and an adapter that fails is refused with one line instead of profiled.

The check goes through the public `Ops` interface only (load_weights, alloc_kv_cache, the timed ops,
to_host), so it tests exactly the code paths a decode step runs. Each op is fed the backend's own output
of the previous op (read back with `to_host`), so one wrong kernel is named and errors do not compound.
It needs `to_host` to return activations in the Hugging Face layout, which the wgpu backend does.

The toy layer keeps the dimensions that specialise the shaders realistic: head_dim 64, grouped-query
attention (2 query heads per KV head), a 9-token prefill (more than one 8-row linear tile, positions on
both layers of the KV texture) and one decode step. Events go to a private recorder: none reach the
caller's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, PREFILL
from llmtop.kernels.base import KernelRecorder, Ops, SamplingParams
from llmtop.model.config import ModelConfig

# Tolerance on max |got - ref| relative to the reference's largest magnitude (at least 1). float32 kernels
# agree to ~1e-6 on lavapipe (reduction order differs from numpy); fast-math GPU drivers to ~1e-5. A wrong
# texel, binding or index gives errors of order 1.
TOLERANCE = {"float32": 1e-3, "float16": 3e-2}

CHECK_CFG = ModelConfig(name="self-check", vocab_size=256, hidden_size=128, intermediate_size=256, n_layers=1,
                        n_heads=2, n_kv_heads=1, head_dim=64, max_context=16, rms_eps=1e-5,
                        rope_theta=10000.0)
PREFILL_TOKENS = 9


@dataclass(slots=True)
class SelfCheck:
    """What the check ran and found: max relative error per kernel name, and its wall time."""

    seconds: float
    errors: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.0

    def summary(self) -> dict[str, float | int]:
        """What the device strip shows and recordings keep (SourceInfo.extra["adapter"]["self_check"])."""
        return {"kernels": len(self.errors), "seconds": round(self.seconds, 3),
                "max_error": max(self.errors.values(), default=0.0)}


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return float("inf")
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


def _rope_ref(x: np.ndarray, pos: np.ndarray, n_heads: int, cfg: ModelConfig) -> np.ndarray:
    """Hugging Face rotate_half RoPE of (T, n_heads * hd) at positions (T,), float64."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = pos[:, None].astype(np.float64) * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    h = x.reshape(len(pos), n_heads, hd)
    rot = np.concatenate([-h[..., hd // 2:], h[..., :hd // 2]], axis=-1)
    return (h * cos + rot * sin).reshape(len(pos), n_heads * hd)


def _attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, qpos: np.ndarray,
                   cfg: ModelConfig) -> np.ndarray:
    """Causal grouped-query attention of q (T, Hq*hd) over cache rows k, v (ctx, Hkv*hd), float64."""
    hd, group = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    out = np.zeros((len(qpos), cfg.n_heads * hd))
    for i, p in enumerate(qpos):
        for h in range(cfg.n_heads):
            kh = h // group
            kk = k[:p + 1, kh * hd:(kh + 1) * hd]
            vv = v[:p + 1, kh * hd:(kh + 1) * hd]
            s = kk @ q[i, h * hd:(h + 1) * hd] / np.sqrt(hd)
            w = np.exp(s - s.max())
            out[i, h * hd:(h + 1) * hd] = (w / w.sum()) @ vv
    return out


def run_self_check(ops: Ops, dtype: str, describe: str) -> SelfCheck:
    """Check `ops` on the toy layer; raise LlmtopError naming the first wrong kernel.

    `describe` names the device in the error (e.g. the adapter and its backend). The backend's model
    state (weights, KV cache) is left for the real `load_weights` / `alloc_kv_cache` to replace.
    """
    t0 = time.perf_counter()
    tol = TOLERANCE[dtype]
    cfg = CHECK_CFG
    rng = np.random.default_rng(20261206)
    # Inputs rounded to the storage dtype, so the reference sees exactly what the device stores.
    store = np.float16 if dtype == "float16" else np.float32

    def rnd(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(store).astype(np.float32)

    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    w = {"embed": rnd(cfg.vocab_size, d), "norm": (1.0 + rnd(d, scale=0.1)),
         "q": rnd(cfg.q_dim, d, scale=0.1), "q_bias": rnd(cfg.q_dim, scale=0.1),
         "k": rnd(cfg.kv_dim, d, scale=0.1), "v": rnd(cfg.kv_dim, d, scale=0.1),
         "gate": rnd(f, d, scale=0.1), "up": rnd(f, d, scale=0.1), "down": rnd(d, f, scale=0.1)}
    errors: dict[str, float] = {}

    def check(kernel: str, got: Any, ref: np.ndarray) -> np.ndarray:
        host = np.asarray(got if isinstance(got, np.ndarray) else ops.to_host(got), dtype=np.float32)
        host = host.reshape(ref.shape) if host.size == ref.size else host
        err = _rel_err(host, ref)
        errors[kernel] = max(errors.get(kernel, 0.0), err)
        if not err <= tol:  # also catches NaN
            raise LlmtopError(f"WebGPU adapter {describe} computed wrong results in {kernel} (max error "
                              f"{err:.3g} of the output's scale, tolerance {tol:g}); install "
                              "mesa-vulkan-drivers or choose another adapter")
        return host.astype(np.float64)

    saved, ops.recorder = ops.recorder, KernelRecorder()
    try:
        h = ops.load_weights(cfg, {k: v.copy() for k, v in w.items()})
        ops.alloc_kv_cache(1, cfg.max_context)
        kv_rows: tuple[np.ndarray, np.ndarray] | None = None
        for phase, pos in ((PREFILL, np.arange(PREFILL_TOKENS)), (DECODE, np.array([PREFILL_TOKENS]))):
            t = len(pos)
            positions = pos.reshape(1, t).astype(np.int32)
            ids = rng.integers(0, cfg.vocab_size, size=(1, t)).astype(np.int32)
            x_d = ops.embedding(ids, h["embed"])
            x = check("embedding", x_d, w["embed"][ids[0]].astype(np.float64))
            n_d = ops.rmsnorm(x_d, h["norm"], cfg.rms_eps, name="rmsnorm:attn_norm", layer=0)
            n = check("rmsnorm", n_d, x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_eps) * w["norm"])
            q_d = ops.linear(n_d, h["q"], h["q_bias"], name="matmul:q_proj", layer=0)
            q = check("linear", q_d, n @ w["q"].T.astype(np.float64) + w["q_bias"])
            k_d = ops.linear(n_d, h["k"], None, name="matmul:k_proj", layer=0)
            k = check("linear", k_d, n @ w["k"].T.astype(np.float64))
            v_d = ops.linear(n_d, h["v"], None, name="matmul:v_proj", layer=0)
            v = check("linear", v_d, n @ w["v"].T.astype(np.float64))
            q_d, k_d = ops.rope(q_d, k_d, positions, layer=0)
            q = check("rope", q_d, _rope_ref(q, pos, cfg.n_heads, cfg))
            k = check("rope", k_d, _rope_ref(k, pos, cfg.n_kv_heads, cfg))
            ops.kv_write(k_d, v_d, positions, layer=0)
            kv_rows = (k, v) if kv_rows is None else (np.vstack([kv_rows[0], k]), np.vstack([kv_rows[1], v]))
            kv_to_host = getattr(ops, "kv_to_host", None)  # read the cache itself where the backend can
            if kv_to_host is not None:
                kc, vc = kv_to_host(0)  # (batch, Hkv, ctx, hd)
                n_pos = len(kv_rows[0])
                got = np.concatenate([kc[0, :, :n_pos], vc[0, :, :n_pos]], axis=0)
                ref = np.concatenate([r.reshape(n_pos, cfg.n_kv_heads, hd).transpose(1, 0, 2)
                                      for r in kv_rows])
                check("kv_write", got, ref)
            a_d = ops.attention(q_d, positions, layer=0, phase=phase)
            name = "attention:prefill" if phase == PREFILL else "attention:decode"
            a = check(name, a_d, _attention_ref(q, *kv_rows, pos, cfg))
            g_d = ops.linear(a_d, h["gate"], None, name="matmul:gate_proj", layer=0)
            g = check("linear", g_d, a @ w["gate"].T.astype(np.float64))
            u_d = ops.linear(a_d, h["up"], None, name="matmul:up_proj", layer=0)
            u = check("linear", u_d, a @ w["up"].T.astype(np.float64))
            s_d = ops.silu_mul(g_d, u_d, layer=0)
            s = check("silu_mul", s_d, g / (1.0 + np.exp(-g)) * u)
            o_d = ops.linear(s_d, h["down"], None, name="matmul:down_proj", layer=0)
            o = check("linear", o_d, s @ w["down"].T.astype(np.float64))
            r_d = ops.add(o_d, x_d, name="add:ffn_residual", layer=0)
            check("add", r_d, o + x)
            last = ops.last_token(r_d, np.array([t - 1]))
            logits_d = ops.linear(last, h["embed"], None, name="matmul:lm_head", layer=0)
            logits = check("linear", logits_d, (o + x)[-1:] @ w["embed"].T.astype(np.float64))
            _check_sampling(ops, logits_d, logits[0], describe, errors)
        ops.synchronize()
    finally:
        ops.recorder = saved
    return SelfCheck(time.perf_counter() - t0, errors, tol)


def _check_sampling(ops: Ops, logits_d: Any, logits: np.ndarray, describe: str,
                    errors: dict[str, float]) -> None:
    """Greedy sampling must pick the argmax (ties are practically impossible on random logits); top-k
    sampling must pick one of the true top k."""
    want = int(np.argmax(logits))
    got = int(ops.sample(logits_d, SamplingParams(), None)[0])
    top = set(np.argsort(-logits)[:4].tolist())
    drawn = int(ops.sample(logits_d, SamplingParams(temperature=1.0, top_k=4), np.random.default_rng(0))[0])
    errors["sampling"] = 0.0 if got == want and drawn in top else float("inf")
    if got != want or drawn not in top:
        what = f"greedy picked token {got}, expected {want}" if got != want else \
            f"top-k picked token {drawn}, expected one of {sorted(top)}"
        raise LlmtopError(f"WebGPU adapter {describe} computed wrong results in sampling (max error: "
                          f"{what}); install mesa-vulkan-drivers or choose another adapter")


__all__ = ["CHECK_CFG", "TOLERANCE", "SelfCheck", "run_self_check"]
