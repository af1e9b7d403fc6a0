"""A model-free engine stand-in: emits realistic decode-loop events through a real KernelRecorder.

For tests that need a running producer without loading weights, for benchmarks of the pipeline and
the aggregator, and for recordings made in a subprocess. Kernel durations are synthetic (attention
grows with context, like a real KV cache); the step wall time is real (the loop sleeps for it).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from llmtop.events import DECODE, NO_LAYER, PREFILL, SourceInfo
from llmtop.kernels.base import KernelRecorder, SamplingParams

_LAYER_OPS = ("rmsnorm:attn_norm", "matmul:q_proj", "matmul:k_proj", "matmul:v_proj", "rope",
              "memcpy:kv_write", "attention", "matmul:o_proj", "add:attn_residual", "rmsnorm:ffn_norm",
              "matmul:gate_proj", "matmul:up_proj", "silu_mul", "matmul:down_proj", "add:ffn_residual")


class _Ops:
    def __init__(self, recorder: KernelRecorder) -> None:
        self.recorder = recorder

    def synchronize(self) -> None:
        """Nothing in flight: the synthetic steps are recorded synchronously."""


class SyntheticEngine:
    """Same surface as llmtop.model.engine.Engine for collectors: generate, ops.recorder, source_info."""

    def __init__(self, *, n_layers: int = 4, step_time_s: float = 0.002, kernel_ns: int = 20_000,
                 prompt_tokens: int = 16, max_context: int = 2048, seed: int = 0,
                 max_batch: int = 64) -> None:
        self.n_layers = n_layers
        self.max_batch = max_batch
        self.step_time_s = step_time_s
        self.kernel_ns = kernel_ns
        self.prompt_tokens = prompt_tokens
        self.max_context = max_context
        self.ops = _Ops(KernelRecorder())
        self._rng = np.random.default_rng(seed)
        self._step = 0

    def source_info(self) -> SourceInfo:
        return SourceInfo(kind="live", backend="synthetic", device="none", model="synthetic",
                          dtype="float32", timing="synthetic", max_context=self.max_context,
                          n_layers=self.n_layers)

    def _run_step(self, phase: int, tokens: int, batch: int, ctx: int) -> None:
        rec = self.ops.recorder
        rec.begin_step(phase, self._step, tokens, batch, ctx)
        t = time.perf_counter_ns()
        ids = rec.ids
        jitter = self._rng.uniform(0.8, 1.2, 4 + 15 * self.n_layers)
        j = 0

        def add(name: str, layer: int, scale: float = 1.0, mnk: tuple[int, int, int] = (0, 0, 0)) -> None:
            nonlocal t, j
            d = int(self.kernel_ns * scale * jitter[j])
            j += 1
            nid, opc = ids[name]
            rec.add(nid, opc, layer, t, d, *mnk)
            t += d

        add("embedding", NO_LAYER)
        attn = "attention:prefill" if phase == PREFILL else "attention:decode"
        for layer in range(self.n_layers):
            for op in _LAYER_OPS:
                if op == "attention":
                    add(attn, layer, 0.5 + ctx / 256)
                elif op.startswith("matmul:"):
                    add(op, layer, 2.0, (batch * tokens, 576, 576))
                else:
                    add(op, layer)
        add("rmsnorm:final_norm", NO_LAYER)
        add("matmul:lm_head", NO_LAYER, 4.0, (batch, 49152, 576))
        add("sampling", NO_LAYER)
        time.sleep(self.step_time_s)
        rec.end_step()
        self._step += 1

    def generate(self, prompts: list[str], max_new_tokens: int, sampling: SamplingParams | None = None,
                 chat: bool = True, stop_event: threading.Event | None = None) -> list[Any]:
        batch = len(prompts)
        ctx = self.prompt_tokens
        self._run_step(PREFILL, batch * ctx, batch, ctx)  # tokens count the whole batch, as Engine
        for _ in range(max_new_tokens - 1):
            if stop_event is not None and stop_event.is_set():
                break
            ctx += 1
            self._run_step(DECODE, batch, batch, ctx)
        return [f"<{max_new_tokens} synthetic tokens>" for _ in prompts]
