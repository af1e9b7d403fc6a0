"""Loader on checkpoints the tests write themselves: HF directories, GGUF files, presets, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmtop.errors import LlmtopError
from llmtop.model.loader import llama3_params_from_rope_freqs, load_model
from llmtop.model.presets import PRESETS, random_weights, weight_shapes

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "profiling the decode loop of a language model, token by token",
    "hello world, hello tokens, hello 2024 and 1234567",
    "naïve café — 世界 🤖",
] * 20
SAMPLES = [
    "hello world", "the lazy fox profiles 1234567 tokens", "café 世界 🤖!", "<|im_start|>user\nhi<|im_end|>"
]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}


def _tokenizer() -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=340, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS, trainer)
    return tk


def _save_tokenizer(tk: Tokenizer, d: Path) -> None:
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    )


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return _tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tok: Tokenizer) -> tuple[Path, dict[str, np.ndarray]]:
    """Tiny untied Llama with llama3 rope scaling, saved in 5 safetensors shards."""
    cfg = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
        rope_theta=10000.0, rope_scaling=dict(LLAMA3_ROPE), tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("llama")
    model.save_pretrained(d, max_shard_size="200KB")
    _save_tokenizer(tok, d)
    return d, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_hf_dir_sharded_llama(llama_dir: tuple[Path, dict[str, np.ndarray]]) -> None:
    d, sd = llama_dir
    assert len(list(d.glob("*.safetensors"))) > 1 and (d / "model.safetensors.index.json").is_file()
    m = load_model(str(d))
    assert m.source == f"hf:{d}" and not m.random_weights
    assert set(m.weights) == set(sd)
    for k, w in m.weights.items():
        assert w.dtype == np.float32
        np.testing.assert_array_equal(w, sd[k], err_msg=k)
    c = m.config
    assert (c.hidden_size, c.intermediate_size, c.n_layers) == (128, 192, 2)
    assert c.vocab_size == sd["lm_head.weight"].shape[0]
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.max_context) == (4, 2, 32, 1024)
    assert c.rope_theta == 10000.0 and c.rope_scaling == LLAMA3_ROPE
    assert not c.tie_embeddings and not c.attention_bias and c.rms_eps == pytest.approx(1e-5)
    assert c.bos_token_id == 1 and c.eos_token_ids == (2,) and c.chat_template == CHATML
    assert load_model(f"hf:{d}").config == c


def test_hf_dir_tokenizer_matches_transformers(llama_dir: tuple[Path, dict[str, np.ndarray]]) -> None:
    d, _ = llama_dir
    ours = load_model(str(d)).tokenizer
    ref = transformers.AutoTokenizer.from_pretrained(str(d))
    assert ours is not None
    for s in SAMPLES:
        assert ours.encode(s) == ref.encode(s, add_special_tokens=False), s
        ids = ref.encode(s, add_special_tokens=False)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    msgs = [{"role": "user", "content": "hello world"}]
    ref_text = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(msgs) == ref_text
    assert ours.eos_token_ids == (2,) and ours.encode("<|im_end|>") == [2]


def test_hf_dir_qwen2_bf16_v4_config(tmp_path: Path, tok: Tokenizer) -> None:
    """bf16 weights, q/k/v biases, tie decided by the absent lm_head, and the v4 rope keys."""
    cfg = transformers.Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    torch.manual_seed(1)
    model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("rope_parameters", None)
    raw.pop("tie_word_embeddings", None)
    raw.update(rope_theta=123456.0, rope_scaling={"type": "linear", "factor": 2.0}, eos_token_id=[2, 0])
    (tmp_path / "config.json").write_text(json.dumps(raw))
    sd = {k: v.float().numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    m = load_model(f"hf:{tmp_path}")
    assert set(m.weights) == set(sd) and "model.layers.1.self_attn.k_proj.bias" in m.weights
    for k, w in m.weights.items():
        np.testing.assert_array_equal(w, sd[k], err_msg=k)
    c = m.config
    assert c.attention_bias and c.tie_embeddings and c.extra["architecture"] == "qwen2"
    assert c.rope_theta == 123456.0 and c.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert c.eos_token_ids == (2, 0) and m.tokenizer is None


# -- GGUF --------------------------------------------------------------------------------------


def _ggml_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF -> llama.cpp row order)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _q8_roundtrip(w: np.ndarray) -> np.ndarray:
    q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    return gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(w.shape)


def _write_gguf(path: Path, arch: str, sd: dict[str, np.ndarray], meta: dict, tk: Tokenizer,
                rope_freqs: np.ndarray | None = None, permute: bool = True) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(meta["layers"])
    w.add_context_length(meta["ctx"])
    w.add_embedding_length(meta["hidden"])
    w.add_feed_forward_length(meta["ffn"])
    w.add_head_count(meta["heads"])
    w.add_head_count_kv(meta["kv"])
    w.add_layer_norm_rms_eps(meta["eps"])
    w.add_rope_freq_base(meta["theta"])
    w.add_rope_dimension_count(meta["hidden"] // meta["heads"])
    vocab = sorted(tk.get_vocab().items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in SPECIALS else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) for m in json.loads(tk.to_str())["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(CHATML)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for k, v in sd.items():
        if k == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", v.astype(np.float16))
        elif k == "model.norm.weight":
            w.add_tensor("output_norm.weight", v)
        elif k == "lm_head.weight":
            w.add_tensor("output.weight", v)
        else:
            _, _, i, *rest = k.split(".")
            module, leaf = rest[-2], rest[-1]
            if permute and module == "q_proj":
                v = _ggml_permute(v, meta["heads"])
            elif permute and module == "k_proj":
                v = _ggml_permute(v, meta["kv"])
            name = f"blk.{i}.{names[module]}.{leaf}"
            if module == "q_proj" and leaf == "weight":  # one quantized tensor per layer
                q = gguf.quants.quantize(v, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(name, v)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _expected(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if k == "model.embed_tokens.weight":
            out[k] = v.astype(np.float16).astype(np.float32)
        elif k.endswith("q_proj.weight"):
            out[k] = _q8_roundtrip(v)
        else:
            out[k] = v
    return out


LLAMA_META = {
    "layers": 2, "ctx": 1024, "hidden": 128, "ffn": 192, "heads": 4, "kv": 2, "eps": 1e-5, "theta": 10000.0
}


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory: pytest.TempPathFactory, llama_dir: tuple[Path, dict[str, np.ndarray]],
               tok: Tokenizer) -> tuple[Path, dict[str, np.ndarray]]:
    _, sd = llama_dir
    hf_cfg = transformers.AutoConfig.from_pretrained(llama_dir[0])
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    base = 10000.0 ** -(torch.arange(0, 32, 2, dtype=torch.float32) / 32)
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    _write_gguf(path, "llama", sd, LLAMA_META, tok, rope_freqs=(base / scaled).numpy())
    return path, sd


def test_gguf_llama_weights_config_tokenizer(
    llama_gguf: tuple[Path, dict[str, np.ndarray]], tok: Tokenizer
) -> None:
    path, sd = llama_gguf
    m = load_model(str(path))
    assert m.source == f"gguf:{path}"
    exp = _expected(sd)
    assert set(m.weights) == set(exp)
    for k, w in m.weights.items():  # un-permuted back to HF layout, bit for bit
        np.testing.assert_array_equal(w, exp[k], err_msg=k)
    c = m.config
    assert (c.n_layers, c.hidden_size, c.intermediate_size) == (2, 128, 192)
    assert (c.n_heads, c.n_kv_heads, c.head_dim) == (4, 2, 32)
    assert not c.tie_embeddings and c.max_context == 1024 and c.extra["quantization"]["Q8_0"] == 2
    assert c.rope_scaling is not None and c.rope_scaling["rope_type"] == "llama3"
    assert c.rope_scaling["factor"] == pytest.approx(8.0)
    assert c.rope_scaling["low_freq_factor"] == pytest.approx(1.0, rel=1e-3)
    assert c.rope_scaling["high_freq_factor"] == pytest.approx(4.0, rel=1e-3)
    assert c.rope_scaling["original_max_position_embeddings"] == 256  # not in the file: recovered
    t = m.tokenizer
    assert t is not None and t.vocab_size == tok.get_vocab_size()
    for s in SAMPLES:
        assert t.encode(s) == tok.encode(s).ids, s
        assert t.encode(s, add_special_tokens=True) == [1, *tok.encode(s).ids]  # add_bos_token
        assert t.decode(t.encode(s)) == tok.decode(tok.encode(s).ids)
    assert t.apply_chat_template([{"role": "user", "content": "x"}]) == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    )
    assert load_model(f"gguf:{path}").config == c


def test_gguf_qwen2_not_permuted(tmp_path: Path, tok: Tokenizer) -> None:
    cfg = transformers.Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    torch.manual_seed(2)
    sd = {k: v.detach().numpy().copy() for k, v in transformers.Qwen2ForCausalLM(cfg).state_dict().items()
          if k != "lm_head.weight"}
    meta = {"layers": 1, "ctx": 512, "hidden": 64, "ffn": 96, "heads": 4, "kv": 2, "eps": 1e-6, "theta": 1e6}
    _write_gguf(tmp_path / "q.gguf", "qwen2", sd, meta, tok, permute=False)
    m = load_model(str(tmp_path / "q.gguf"))
    exp = _expected(sd)
    assert set(m.weights) == set(exp)
    for k, w in m.weights.items():
        np.testing.assert_array_equal(w, exp[k], err_msg=k)
    assert m.config.attention_bias and m.config.tie_embeddings and m.config.rope_theta == 1e6


def test_llama3_rope_params_of_llama_3_2() -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = dict(PRESETS["llama-3.2-1b"]().rope_scaling or {})
    hf_cfg = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_theta=500000.0,
                                      rope_scaling=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    base = 500000.0 ** -(torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    got = llama3_params_from_rope_freqs((base / scaled.double()).numpy(), 500000.0, 64)
    assert got is not None and got["rope_type"] == "llama3"
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        assert got[key] == pytest.approx(rope[key], rel=1e-3), key
    assert got["original_max_position_embeddings"] == 8192
    assert llama3_params_from_rope_freqs(np.ones(32), 500000.0, 64, 8192) is None


# -- bad input ---------------------------------------------------------------------------------


def test_unsupported_architecture(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi3")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(LlmtopError, match="architecture 'phi3'"):
        load_model(str(tmp_path / "phi.gguf"))


def test_truncated_and_corrupt_files(tmp_path: Path, llama_gguf: tuple[Path, dict[str, np.ndarray]]) -> None:
    src, _ = llama_gguf
    data = src.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(LlmtopError, match="truncated"):
        load_model(str(cut))
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:2000])  # ends inside the metadata
    with pytest.raises(LlmtopError, match="truncated"):
        load_model(str(head))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(LlmtopError, match="not a GGUF"):
        load_model(str(junk))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(LlmtopError):
        load_model(str(empty))


def test_bad_specs(tmp_path: Path, llama_dir: tuple[Path, dict[str, np.ndarray]]) -> None:
    cases = {
        str(tmp_path / "nope.gguf"): "not found",
        "gguf:" + str(tmp_path / "nope.gguf"): "not found",
        str(tmp_path): "no config.json",
        "no-such-model": "unknown model",
        "preset:gpt-5": "unknown preset",
        "preset:": "empty model spec",
    }
    txt = tmp_path / "weights.bin"
    txt.write_text("hi")
    cases[str(txt)] = "not a model"
    for spec, msg in cases.items():
        with pytest.raises(LlmtopError, match=msg) as e:
            load_model(spec)
        assert "\n" not in str(e.value)
    d = tmp_path / "broken"
    shutil.copytree(llama_dir[0], d)
    shards = sorted(set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values()))
    (d / shards[1]).unlink()
    with pytest.raises(LlmtopError, match="shard"):
        load_model(str(d))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(LlmtopError, match="gpt_neox"):
        load_model(str(d))
    with pytest.raises(LlmtopError, match="dtype"):
        load_model("default", dtype="float16")


# -- presets -----------------------------------------------------------------------------------


def test_preset_shapes_are_the_real_models() -> None:
    # Published parameter counts (tied embeddings counted once).
    counts = {"llama-3.2-1b": 1_235_814_400, "qwen2.5-0.5b": 494_032_768, "smollm2-135m": 134_515_008}
    for name, n in counts.items():
        cfg = PRESETS[name]()
        assert sum(int(np.prod(s)) for s in weight_shapes(cfg).values()) == n, name
    assert PRESETS["qwen2.5-0.5b"]().attention_bias
    assert PRESETS["llama-3.2-1b"]().rope_scaling["rope_type"] == "llama3"  # type: ignore[index]


def test_preset_random_weights() -> None:
    a = load_model("preset:smollm2-135m", seed=7)
    assert a.random_weights and a.source == "preset:smollm2-135m"
    assert set(a.weights) == set(weight_shapes(a.config))
    emb = a.weights["model.embed_tokens.weight"]
    assert emb.dtype == np.float32 and np.isfinite(emb).all()
    assert np.std(emb) == pytest.approx(0.02, rel=0.01)
    np.testing.assert_array_equal(a.weights["model.norm.weight"], 1.0)
    # The shipped SmolLM2 tokenizer is reused: same vocabulary as this shape.
    assert a.tokenizer is not None and a.tokenizer.vocab_size == a.config.vocab_size
    assert a.config.chat_template and a.tokenizer.encode("<|im_end|>") == list(a.config.eos_token_ids)
    # Determinism per (seed, tensor), checked on a 2-layer cut of the same shape to stay fast.
    small = dataclasses.replace(a.config, n_layers=2)
    b, c = random_weights(small, seed=7), random_weights(small, seed=8)
    for k in b:
        np.testing.assert_array_equal(a.weights[k], b[k], err_msg=k)
        if not k.endswith("norm.weight"):
            assert not np.array_equal(b[k], c[k]), k
