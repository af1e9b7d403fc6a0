"""The Llama-family forward pass (Llama, SmolLM, Qwen2), written only against `Ops`.

It never touches tensors itself, so every backend (torch cpu/cuda, wgpu, ...) runs this same code
and emits the same kernel events: per layer attn_norm, q, k, v, rope, kv_write, attention, o,
attn_residual, ffn_norm, gate, up, silu_mul, down, ffn_residual; then final_norm and lm_head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER
from llmtop.kernels.base import Ops
from llmtop.model.config import ModelConfig


@dataclass(slots=True)
class _Layer:
    attn_norm: Any
    wq: Any
    wk: Any
    wv: Any
    bq: Any | None
    bk: Any | None
    bv: Any | None
    wo: Any
    ffn_norm: Any
    w_gate: Any
    w_up: Any
    w_down: Any


def required_weight_names(cfg: ModelConfig) -> list[str]:
    """HF tensor names the forward needs for `cfg` (docs/ARCHITECTURE.md)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [f"{p}self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [f"{p}mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        if cfg.attention_bias:
            names += [f"{p}self_attn.{x}_proj.bias" for x in "qkv"]
    return names


class LlamaForward:
    """Holds the backend's weight handles; `forward` runs one prefill or decode step."""

    def __init__(self, cfg: ModelConfig, ops: Ops, weights: dict[str, np.ndarray]) -> None:
        missing = [n for n in required_weight_names(cfg) if n not in weights]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise LlmtopError(f"model weights are missing tensor {missing[0]!r}{more}")
        self.cfg = cfg
        self.ops = ops
        h = ops.load_weights(cfg, weights)
        self.embed = h["model.embed_tokens.weight"]
        self.norm = h["model.norm.weight"]
        self.lm_head = self.embed if cfg.tie_embeddings else h["lm_head.weight"]
        self.layers: list[_Layer] = []
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            self.layers.append(
                _Layer(
                    attn_norm=h[p + "input_layernorm.weight"],
                    wq=h[a + "q_proj.weight"],
                    wk=h[a + "k_proj.weight"],
                    wv=h[a + "v_proj.weight"],
                    bq=h.get(a + "q_proj.bias"),
                    bk=h.get(a + "k_proj.bias"),
                    bv=h.get(a + "v_proj.bias"),
                    wo=h[a + "o_proj.weight"],
                    ffn_norm=h[p + "post_attention_layernorm.weight"],
                    w_gate=h[p + "mlp.gate_proj.weight"],
                    w_up=h[p + "mlp.up_proj.weight"],
                    w_down=h[p + "mlp.down_proj.weight"],
                )
            )

    def forward(self, ids: np.ndarray, positions: np.ndarray, last_index: np.ndarray, phase: int) -> Any:
        """ids, positions int32 (B, T); last_index (B,) = each row's last real token.

        Returns the logits handle (B, 1, V) of those tokens only: the LM head, the widest matmul,
        never runs on tokens whose logits nobody reads.
        """
        ops = self.ops
        eps = self.cfg.rms_eps
        x = ops.embedding(ids, self.embed)
        for i, L in enumerate(self.layers):
            h = ops.rmsnorm(x, L.attn_norm, eps, name="rmsnorm:attn_norm", layer=i)
            q = ops.linear(h, L.wq, L.bq, name="matmul:q_proj", layer=i)
            k = ops.linear(h, L.wk, L.bk, name="matmul:k_proj", layer=i)
            v = ops.linear(h, L.wv, L.bv, name="matmul:v_proj", layer=i)
            q, k = ops.rope(q, k, positions, layer=i)
            ops.kv_write(k, v, positions, layer=i)
            a = ops.attention(q, positions, layer=i, phase=phase)
            o = ops.linear(a, L.wo, None, name="matmul:o_proj", layer=i)
            x = ops.add(x, o, name="add:attn_residual", layer=i)
            h = ops.rmsnorm(x, L.ffn_norm, eps, name="rmsnorm:ffn_norm", layer=i)
            g = ops.linear(h, L.w_gate, None, name="matmul:gate_proj", layer=i)
            u = ops.linear(h, L.w_up, None, name="matmul:up_proj", layer=i)
            m = ops.silu_mul(g, u, layer=i)
            d = ops.linear(m, L.w_down, None, name="matmul:down_proj", layer=i)
            x = ops.add(x, d, name="add:ffn_residual", layer=i)
        x = ops.last_token(x, last_index)  # norm is per token, so select first and normalize B rows
        x = ops.rmsnorm(x, self.norm, eps, name="rmsnorm:final_norm", layer=NO_LAYER)
        return ops.linear(x, self.lm_head, None, name="matmul:lm_head", layer=NO_LAYER)


__all__ = ["LlamaForward", "required_weight_names"]
