"""Real model shapes with seeded random weights: profile a model's kernels without its checkpoint.

The shapes and hyper-parameters are those of the published base checkpoints' config.json. Weights
are N(0, 0.02) like the models' own initializer (norms are 1, as at init), which keeps
activations finite through every layer; the timings depend only on shapes, not values.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llmtop.model.config import ModelConfig

INIT_STD = 0.02


def _llama_3_2_1b() -> ModelConfig:
    return ModelConfig(
        name="llama-3.2-1b",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        max_context=131072,
        rms_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_embeddings=True,
        attention_bias=False,
        bos_token_id=128000,
        eos_token_ids=(128001,),
        extra={"architecture": "llama", "preset": "llama-3.2-1b"},
    )


def _qwen2_5_0_5b() -> ModelConfig:
    return ModelConfig(
        name="qwen2.5-0.5b",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        head_dim=64,
        max_context=32768,
        rms_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling=None,
        tie_embeddings=True,
        attention_bias=True,
        bos_token_id=151643,
        eos_token_ids=(151643,),
        extra={"architecture": "qwen2", "preset": "qwen2.5-0.5b"},
    )


def _smollm2_135m() -> ModelConfig:
    # Token ids follow SmolLM2-135M-Instruct, whose tokenizer (same 49152-token vocabulary as the
    # base model) the loader reuses from the shipped GGUF.
    return ModelConfig(
        name="smollm2-135m",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        max_context=8192,
        rms_eps=1e-5,
        rope_theta=100000.0,
        rope_scaling=None,
        tie_embeddings=True,
        attention_bias=False,
        bos_token_id=1,
        eos_token_ids=(2,),
        extra={"architecture": "llama", "preset": "smollm2-135m"},
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "llama-3.2-1b": _llama_3_2_1b,
    "qwen2.5-0.5b": _qwen2_5_0_5b,
    "smollm2-135m": _smollm2_135m,
}


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a config needs, by HF name, with its numpy shape."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attn.q_proj.weight"] = (cfg.q_dim, d)
        shapes[p + "self_attn.k_proj.weight"] = (cfg.kv_dim, d)
        shapes[p + "self_attn.v_proj.weight"] = (cfg.kv_dim, d)
        if cfg.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (cfg.q_dim,)
            shapes[p + "self_attn.k_proj.bias"] = (cfg.kv_dim,)
            shapes[p + "self_attn.v_proj.bias"] = (cfg.kv_dim,)
        shapes[p + "self_attn.o_proj.weight"] = (d, cfg.q_dim)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (f, d)
        shapes[p + "mlp.up_proj.weight"] = (f, d)
        shapes[p + "mlp.down_proj.weight"] = (d, f)
    shapes["model.norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def _fill(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    # One stream per (seed, tensor name): values do not depend on generation order or threading.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= np.float32(INIT_STD)
    return out


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic N(0, 0.02) float32 weights for `cfg`. numpy's generators release the GIL, so
    tensors are filled on all cores (llama-3.2-1b is 1.2 G values)."""
    shapes = weight_shapes(cfg)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = pool.map(lambda kv: _fill(kv[0], kv[1], seed), shapes.items())
        return dict(zip(shapes, arrays, strict=True))
