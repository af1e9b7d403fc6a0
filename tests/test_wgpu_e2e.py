"""End to end on the shipped SmolLM2-135M: greedy tokens on wgpu (f32) equal the torch cpu backend's."""

from __future__ import annotations

import numpy as np
import pytest

from llmtop.errors import LlmtopError
from llmtop.kernels.base import KERNEL_NAMES, KernelRecorder

pytestmark = [pytest.mark.wgpu, pytest.mark.slow]


def test_smollm2_greedy_16_tokens_match_cpu() -> None:
    from llmtop.kernels.torch_backend import TorchOps
    from llmtop.kernels.wgpu_backend import create_wgpu_ops
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    try:
        wops = create_wgpu_ops(KernelRecorder(), "float32")
    except LlmtopError as e:
        pytest.skip(f"no usable WebGPU adapter: {e}")
    loaded = load_model("default")
    # A short raw prompt: lavapipe runs shaders on the CPU, so prefill length dominates the test time.
    prompt = ["The capital of France is"]
    ref = Engine(loaded, TorchOps(KernelRecorder(), device="cpu"), max_context=64).generate(prompt, 16,
                                                                                          chat=False)[0]
    got = Engine(loaded, wops, max_context=64).generate(prompt, 16, chat=False)[0]
    assert len(ref.token_ids) > 0
    assert got.token_ids == ref.token_ids, (got.text, ref.text)
    batch = wops.recorder.drain()
    n_steps = len(batch.steps)
    per_step = 1 + loaded.config.n_layers * 15 + 3
    assert n_steps == len(got.token_ids) and len(batch.kernels) == n_steps * per_step
    assert set(batch.new_names) >= set(KERNEL_NAMES)
    assert (batch.kernels["dur_ns"] > 0).all() and (batch.steps["kernel_ns"] > 0).all()
    # Decode attention reads a growing cache: its time should not shrink as context grows.
    att = batch.kernels[batch.kernels["name"] == wops.recorder.ids["attention:decode"][0]]
    assert len(att) and np.all(att["ctx"] >= 1)
    wops.close()
