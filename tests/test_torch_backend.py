"""TorchOps against transformers on tiny random Llama (llama3 rope scaling) and Qwen2 (biases) models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmtop.errors import LlmtopError
from llmtop.kernels.base import KernelRecorder, SamplingParams
from llmtop.kernels.torch_backend import TorchOps, cuda_unavailable_reason, rope_inv_freq, sample_logits
from llmtop.model import rope as model_rope
from llmtop.model.config import ModelConfig
from llmtop.model.engine import Engine
from llmtop.model.loader import LoadedModel
from llmtop.model.rope import power_f64

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


def _rope_inv_freq_before(cfg: ModelConfig) -> np.ndarray:
    """The torch implementation model/rope.py replaced (torch_backend.py before it moved), i.e. the
    transformers formula run in torch float32."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default")) or "default"
    if kind == "linear":
        inv = inv / float(rs["factor"])
    elif kind == "llama3":
        factor = float(rs["factor"])
        low = float(rs.get("low_freq_factor", 1.0))
        high = float(rs.get("high_freq_factor", 4.0))
        old_ctx = float(rs.get("original_max_position_embeddings", cfg.max_context))
        low_wl, high_wl = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        inv = torch.where(medium, smoothed, inv_l)
    return inv.numpy().astype(np.float32)


ROPE_SCALINGS = {
    "default": None,
    "linear2": {"rope_type": "linear", "factor": 2.0},
    "linear3.7": {"type": "linear", "factor": 3.7},
    "llama3.1": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192},
    "llama3.2": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192},
    "llama3-odd": {"rope_type": "llama3", "factor": 7.3, "low_freq_factor": 1.5, "high_freq_factor": 3.3,
                   "original_max_position_embeddings": 1000},
    "llama3-defaults": {"rope_type": "llama3", "factor": 8.0},  # missing keys: 1.0, 4.0, max_context
}


@pytest.mark.parametrize("scaling", list(ROPE_SCALINGS))
@pytest.mark.parametrize("theta", [10000.0, 500000.0, 1e6])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_tables_bit_identical_to_the_torch_formula(head_dim: int, theta: float, scaling: str):
    """model/rope.py repeats torch's float32 op sequence. With torch's pow (what TorchOps uses) it equals
    the torch formula bit for bit. Its default pow (float64, rounded once; the wgpu backend) is the
    correctly rounded power, which torch's SLEEF pow misses by one ulp for a few exponents (head_dim
    128, theta 1e6: index 37): there, and only there, the tables may differ by a few ulps."""
    cfg = ModelConfig("x", 10, 8, 8, 1, 1, 1, head_dim, 131072, rope_theta=theta,
                      rope_scaling=ROPE_SCALINGS[scaling])
    before = _rope_inv_freq_before(cfg)
    got = rope_inv_freq(cfg)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), before.view(np.uint32))
    exps = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    pow_differs = power_f64(theta, exps) != (theta ** torch.from_numpy(exps)).numpy()
    plain = model_rope.rope_inv_freq(cfg)
    ulps = np.abs(plain.view(np.int32).astype(np.int64) - before.view(np.int32))
    assert (ulps[~pow_differs] == 0).all() and ulps.max() <= 4


def test_rope_missing_keys():
    cfg = ModelConfig("x", 10, 8, 8, 1, 1, 1, 64, 2048, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    full = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 2048}
    np.testing.assert_array_equal(model_rope.rope_inv_freq(cfg),
                                  model_rope.rope_inv_freq(ModelConfig("x", 10, 8, 8, 1, 1, 1, 64, 2048,
                                                                       rope_scaling=full)))
    for rs in ({"rope_type": "linear"}, {"rope_type": "llama3"}):
        with pytest.raises(LlmtopError, match="needs a 'factor'") as e:
            model_rope.rope_inv_freq(ModelConfig("x", 10, 8, 8, 1, 1, 1, 64, 2048, rope_scaling=rs))
        assert "\n" not in str(e.value)


def test_sampling_rules():
    g = np.random.default_rng(0)
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 4.9]])
    assert sample_logits(logits, SamplingParams(), g).tolist() == [1, 0]
    assert sample_logits(logits, SamplingParams(temperature=5.0, top_k=1), g).tolist() == [1, 0]
    assert sample_logits(logits, SamplingParams(temperature=5.0, top_p=1e-6), g).tolist() == [1, 0]
    p2 = SamplingParams(temperature=1.0, top_k=2)
    draws = np.stack([sample_logits(logits, p2, g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {0, 3}
    a = sample_logits(logits, SamplingParams(1.0), np.random.default_rng(7))
    b = sample_logits(logits, SamplingParams(1.0), np.random.default_rng(7))
    assert a.tolist() == b.tolist()
    assert isinstance(TorchOps().make_generator(3), np.random.Generator)  # one RNG kind on every backend


def test_topk_ties_at_the_boundary_keep_the_lowest_ids():
    """torch.topk may return any of the logits tied at the k-th value; the spec keeps the lowest ids."""
    logits = torch.zeros(1, 300)
    logits[0, 299] = 5.0  # ranks: 299, then 299 zeros tied for the remaining k-1 places
    p = SamplingParams(temperature=0.01, top_k=3)
    got = {int(sample_logits(logits, p, np.random.default_rng(s))[0]) for s in range(40)}
    assert got == {299}
    p = SamplingParams(temperature=1e6, top_k=3)  # ~uniform over the three candidates
    got = {int(sample_logits(logits, p, np.random.default_rng(s))[0]) for s in range(60)}
    assert got == {299, 0, 1}


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
    gpu_ops = TorchOps(KernelRecorder(), device="cuda", dtype="float32", tf32=False)  # exact float32
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
        # shared events: an op's span may round to 0 ns at the events' ~0.5 us resolution, never below
        assert np.all(ks["dur_ns"] >= 0) and 0 < ks["dur_ns"].sum() <= s["dur_ns"]
        assert (ks["start_ns"] >= s["start_ns"]).all()
