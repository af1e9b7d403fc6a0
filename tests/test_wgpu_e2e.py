"""End to end on the shipped SmolLM2-135M, on every WebGPU adapter present: greedy tokens on wgpu (f32)
equal the torch cpu backend's, or the start-up self-check refuses the adapter in one line."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from llmtop.errors import LlmtopError
from llmtop.kernels.base import KERNEL_NAMES, KernelRecorder

pytestmark = [pytest.mark.wgpu, pytest.mark.slow]
PROMPT = "The capital of France is"  # raw and short: lavapipe runs shaders on the CPU, prefill dominates


@pytest.fixture(scope="module")
def cpu_reference():
    from llmtop.kernels.torch_backend import TorchOps
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    loaded = load_model("default")
    ref = Engine(loaded, TorchOps(KernelRecorder(), device="cpu"), max_context=64).generate([PROMPT], 16,
                                                                                          chat=False)[0]
    return loaded, ref


def _refused(e: LlmtopError) -> bool:
    text = str(e)
    return "computed wrong results in" in text and "\n" not in text


def test_smollm2_greedy_16_tokens_match_cpu(wgpu_adapter: str, cpu_reference) -> None:
    from llmtop.kernels.wgpu_backend import create_wgpu_ops
    from llmtop.model.engine import Engine

    loaded, ref = cpu_reference
    try:
        wops = create_wgpu_ops(KernelRecorder(), "float32", adapter=wgpu_adapter)
    except LlmtopError as e:
        assert _refused(e), e  # the only acceptable failure: the self-check's one-line refusal
        return
    assert wops.self_check is not None and wops.self_check.errors["attention:decode"] <= 1e-3
    got = Engine(loaded, wops, max_context=64).generate([PROMPT], 16, chat=False)[0]
    assert len(ref.token_ids) > 0
    assert got.token_ids == ref.token_ids, (wgpu_adapter, got.text, ref.text)
    batch = wops.recorder.drain()
    n_steps = len(batch.steps)
    per_step = 1 + loaded.config.n_layers * 15 + 3
    assert n_steps == len(got.token_ids) and len(batch.kernels) == n_steps * per_step  # no self-check rows
    assert set(batch.new_names) >= set(KERNEL_NAMES)
    assert (batch.kernels["dur_ns"] > 0).all() and (batch.steps["kernel_ns"] > 0).all()
    att = batch.kernels[batch.kernels["name"] == wops.recorder.ids["attention:decode"][0]]
    assert len(att) and np.all(att["ctx"] >= 1)
    wops.close()


def test_once_cli_prints_cpu_text_or_refuses(wgpu_adapter: str, cpu_reference) -> None:
    """`llmtop --once --backend wgpu --adapter A` prints the CPU backend's text, or one error line."""
    from llmtop.cli import main

    _, ref = cpu_reference
    out, err = io.StringIO(), io.StringIO()
    argv = ["--once", "--backend", "wgpu", "--adapter", wgpu_adapter, "--no-chat", "--prompt", PROMPT,
            "--max-new-tokens", "16", "--format", "json"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc != 0:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("llmtop: error: WebGPU adapter"), err.getvalue()
        assert "computed wrong results in" in lines[0] and not out.getvalue()
        return
    import json

    doc = json.loads(out.getvalue())
    text = doc["text"] if isinstance(doc["text"], str) else doc["text"][0]
    assert ref.text in text, (wgpu_adapter, text, ref.text)
    assert "wgpu-hal" not in err.getvalue()  # no driver complaints on stderr
