"""TorchOps against transformers on tiny random Llama (llama3 rope scaling) and Qwen2 (biases) models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmtop.errors import LlmtopError
from llmtop.kernels.base import KernelRecorder, SamplingParams
from llmtop.kernels.torch_backend import TorchOps, cuda_unavailable_reason, rope_inv_freq, sample_logits
from llmtop.model.config import ModelConfig
from llmtop.model.engine import Engine
from llmtop.model.loader import LoadedModel

transformers = pytest.importorskip("transformers")

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,  # small, so the test positions cross all three bands
}


def tiny(kind: str) -> tuple[torch.nn.Module, LoadedModel]:
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5)
    if kind == "qwen":
        hc = transformers.Qwen2Config(**common, rope_theta=1e6, tie_word_embeddings=True)
        model, theta, scaling = transformers.Qwen2ForCausalLM(hc), 1e6, None
    else:
        hc = transformers.LlamaConfig(**common, rope_theta=5e5, rope_scaling=dict(LLAMA3_SCALING),
                                      tie_word_embeddings=False)
        model, theta, scaling = transformers.LlamaForCausalLM(hc), 5e5, dict(LLAMA3_SCALING)
    model.eval()
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if kind == "qwen":
        weights.pop("lm_head.weight", None)
    cfg = ModelConfig(name=kind, vocab_size=97, hidden_size=64, intermediate_size=96, n_layers=2, n_heads=4,
                      n_kv_heads=2, head_dim=16, max_context=256, rms_eps=1e-5, rope_theta=theta,
                      rope_scaling=scaling, tie_embeddings=kind == "qwen", attention_bias=kind == "qwen")
    return model, LoadedModel(cfg, weights, None, f"test:{kind}", True)


@pytest.fixture(scope="module", params=["llama3", "qwen"])
def pair(request):
    return tiny(request.param)


def test_logits_match_transformers(pair):
    model, lm = pair
    eng = Engine(lm, TorchOps(KernelRecorder(), device="cpu"))
    ids = np.array([[5, 17, 33, 2, 9, 60, 61, 70, 3, 8] * 5], dtype=np.int32)  # 50 positions > 32
    T = ids.shape[1]
    eng.ops.alloc_kv_cache(1, 64)
    with torch.inference_mode():
        pos = np.arange(T, dtype=np.int32)[None]
        ours = eng.ops.to_host(eng.model.forward(ids, pos, np.array([T - 1]), 0))
        ref = model(torch.from_numpy(ids.astype(np.int64))).logits[0, -1].numpy()
    np.testing.assert_allclose(ours[0, 0], ref, atol=1e-4, rtol=0)  # fp32: only summation order differs


def test_greedy_and_batch_match_transformers(pair):
    model, lm = pair
    eng = Engine(lm, TorchOps(KernelRecorder(), device="cpu"), max_batch=2)
    prompts = ["hello world", "a much longer prompt, right-padded"]
    alone = [eng.generate([p], 40, chat=False)[0] for p in prompts]
    both = eng.generate(prompts, 40, chat=False)
    for p, a, b in zip(prompts, alone, both, strict=True):
        ids = eng.encode_prompt(p, chat=False)
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
        assert a.token_ids == out[0, len(ids):].tolist()
        assert b.token_ids == a.token_ids


def test_rope_inv_freq_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    _, lm = tiny("llama3")
    hc = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, rope_theta=5e5,
                                  max_position_embeddings=256, rope_scaling=dict(LLAMA3_SCALING))
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hc, "cpu")
    np.testing.assert_array_equal(rope_inv_freq(lm.config), ref.numpy())
    bad = ModelConfig("x", 10, 8, 8, 1, 1, 1, 8, 16, rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(LlmtopError, match="unsupported rope"):
        rope_inv_freq(bad)


def test_sampling_rules():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 4.9]])
    assert sample_logits(logits, SamplingParams(), g).tolist() == [1, 0]
    assert sample_logits(logits, SamplingParams(temperature=5.0, top_k=1), g).tolist() == [1, 0]
    assert sample_logits(logits, SamplingParams(temperature=5.0, top_p=1e-6), g).tolist() == [1, 0]
    p2 = SamplingParams(temperature=1.0, top_k=2)
    draws = torch.stack([sample_logits(logits, p2, g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {0, 3}
    a = sample_logits(logits, SamplingParams(1.0), torch.Generator().manual_seed(7))
    b = sample_logits(logits, SamplingParams(1.0), torch.Generator().manual_seed(7))
    assert a.tolist() == b.tolist()


def test_timing_off_binds_untimed_ops():
    on = TorchOps(KernelRecorder(enabled=True))
    off = TorchOps(KernelRecorder(enabled=False))
    assert on.linear.__func__ is TorchOps._linear_cpu
    assert off.linear.__func__ is TorchOps._linear_raw
    with pytest.raises(LlmtopError, match="unknown dtype"):
        TorchOps(dtype="int8")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_dtypes_close_to_float32(dtype):
    _, lm = tiny("llama3")
    ids = np.array([[5, 17, 33, 2, 9, 60]], dtype=np.int32)
    out = {}
    for dt in ("float32", dtype):
        eng = Engine(lm, TorchOps(KernelRecorder(), device="cpu", dtype=dt))
        eng.ops.alloc_kv_cache(1, 16)
        with torch.inference_mode():
            pos = np.arange(6, dtype=np.int32)[None]
            out[dt] = eng.ops.to_host(eng.model.forward(ids, pos, np.array([5]), 0))
    assert np.abs(out[dtype] - out["float32"]).max() < 0.05 * np.abs(out["float32"]).max() + 0.02


def test_cuda_unavailable_is_one_line():
    reason = cuda_unavailable_reason()
    if reason is None:
        pytest.skip("CUDA is available here")
    with pytest.raises(LlmtopError) as e:
        TorchOps(device="cuda")
    assert "\n" not in str(e.value) and str(e.value).startswith("CUDA backend unavailable")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda is unavailable)")
def test_cuda_matches_cpu_and_events_resolve(pair):
    _, lm = pair
    cpu = Engine(lm, TorchOps(KernelRecorder(), device="cpu"))
    gpu_ops = TorchOps(KernelRecorder(), device="cuda", dtype="float32")
    gpu = Engine(lm, gpu_ops)
    a = cpu.generate(["hello"], 16, chat=False)[0]
    b = gpu.generate(["hello"], 16, chat=False)[0]
    assert a.token_ids == b.token_ids
    gpu_ops.synchronize()
    batch = gpu_ops.recorder.drain()
    assert batch is not None and len(batch.steps) == len(b.token_ids)
    for s in batch.steps:
        ks = batch.kernels[batch.kernels["step"] == s["step"]]
        assert len(ks) == 1 + 2 * 15 + 3
        assert np.all(ks["dur_ns"] > 0) and ks["dur_ns"].sum() <= s["dur_ns"]
