"""The shipped SmolLM2 GGUF, loaded by us and by transformers' own GGUF loader, must agree."""

from __future__ import annotations

import numpy as np
import pytest

from llmtop.model.gguf_reader import GGUFFile
from llmtop.model.loader import LoadedModel, default_model_path, load_model

transformers = pytest.importorskip("transformers")
# transformers dequantizes the whole GGUF itself (~30 s on 2 busy cores): model-level test.
pytestmark = pytest.mark.slow

STRINGS = [
    "What is the capital of France?",
    "Hello, world! It's 2024; 12345 + 0.5 = 12345.5",
    "héllo wörld — naïve café 世界 🤖🚀 Привет",
    "  leading and trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n  indented\n",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>code: def f(x):\n    return x**2  # square",
    "",
]


@pytest.fixture(scope="module")
def ours() -> LoadedModel:
    return load_model("default")


@pytest.fixture(scope="module")
def hf_model():
    path = default_model_path()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_tok():
    path = default_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_weights_match_transformers_gguf_loader(ours: LoadedModel, hf_model) -> None:
    sd = hf_model.state_dict()
    # transformers materializes the tied head; we omit it (tie_embeddings) and share embed_tokens.
    assert hf_model.config.tie_word_embeddings and ours.config.tie_embeddings
    assert set(sd) - {"lm_head.weight"} == set(ours.weights)
    for name, w in ours.weights.items():
        ref = sd[name].detach().numpy()
        assert w.dtype == np.float32 and w.flags["C_CONTIGUOUS"], name
        assert w.shape == ref.shape, name
        np.testing.assert_array_equal(w, ref, err_msg=name)


def test_qk_rows_are_unpermuted(ours: LoadedModel) -> None:
    # Same tensors straight from the file are in llama.cpp's interleaved order: the loader must
    # have reordered them (and only them).
    with GGUFFile(default_model_path()) as g:
        raw_q = g.tensor_f32("blk.3.attn_q.weight")
        raw_k = g.tensor_f32("blk.3.attn_k.weight")
        raw_v = g.tensor_f32("blk.3.attn_v.weight")
    q = ours.weights["model.layers.3.self_attn.q_proj.weight"]
    k = ours.weights["model.layers.3.self_attn.k_proj.weight"]
    assert not np.array_equal(q, raw_q) and not np.array_equal(k, raw_k)
    hd = ours.config.head_dim
    # GGUF row 2j+1 of head 0 is HF row hd/2 + j (rotate_half pairs x_j with x_{j+hd/2}).
    np.testing.assert_array_equal(q[hd // 2 + 1], raw_q[3])
    np.testing.assert_array_equal(k[hd + hd // 2], raw_k[hd + 1])
    np.testing.assert_array_equal(ours.weights["model.layers.3.self_attn.v_proj.weight"], raw_v)


def test_config_matches_transformers(ours: LoadedModel, hf_model) -> None:
    c, r = ours.config, hf_model.config
    assert (c.vocab_size, c.hidden_size) == (r.vocab_size, r.hidden_size)
    assert c.intermediate_size == r.intermediate_size
    assert (c.n_layers, c.n_heads, c.n_kv_heads) == (
        r.num_hidden_layers, r.num_attention_heads, r.num_key_value_heads
    )
    assert c.head_dim == r.head_dim == r.hidden_size // r.num_attention_heads
    assert c.max_context == r.max_position_embeddings
    assert c.rms_eps == pytest.approx(r.rms_norm_eps)
    assert c.rope_theta == pytest.approx(r.rope_parameters["rope_theta"])
    assert c.rope_scaling is None and r.rope_parameters["rope_type"] == "default"
    assert c.attention_bias is False and not r.attention_bias
    assert c.extra["architecture"] == "llama"
    assert c.bos_token_id == 1 and c.eos_token_ids == (2,)  # <|im_start|>, <|im_end|>


@pytest.mark.parametrize("text", STRINGS)
def test_encode_matches_transformers(ours: LoadedModel, hf_tok, text: str) -> None:
    tok = ours.tokenizer
    assert tok is not None
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert tok.encode(text, add_special_tokens=True) == hf_tok.encode(text, add_special_tokens=True)
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids, skip_special_tokens=False)


def test_special_tokens_and_digits(ours: LoadedModel) -> None:
    tok = ours.tokenizer
    assert tok is not None
    assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
    assert tok.decode([1, 2]) == "" and tok.decode([1], skip_special_tokens=False) == "<|im_start|>"
    # The "smollm" pre-tokenizer isolates every digit (as llama.cpp and the original tokenizer.json do).
    digits = tok.encode("1234567890")
    assert len(digits) == 10 and tok.decode(digits) == "1234567890"
    assert tok.vocab_size == ours.config.vocab_size == 49152
    assert tok.eos_token_ids == (2,) and tok.bos_token_id == 1


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is the capital of France?"}],
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "héllo 🤖"},
        ],
    ],
)
def test_chat_template_matches_transformers(ours: LoadedModel, hf_tok, messages: list[dict]) -> None:
    tok = ours.tokenizer
    assert tok is not None
    for gen in (True, False):
        text = tok.apply_chat_template(messages, add_generation_prompt=gen)
        ref = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert text == ref
        assert tok.encode(text) == hf_tok.encode(ref, add_special_tokens=False)
    prompt = tok.apply_chat_template(messages)
    assert prompt.endswith("<|im_start|>assistant\n") and tok.encode(prompt)[0] == 1
