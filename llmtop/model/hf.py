"""Hugging Face checkpoint directories: config.json + *.safetensors (single or sharded).

safetensors files are parsed directly (8-byte header length, JSON header, raw little-endian data)
so that bf16 checkpoints convert to float32 with one numpy shift, without importing torch, and
each tensor is converted straight from the memory map (no second full-precision copy).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.model.config import ModelConfig
from llmtop.model.tokenizer import chat_template_from_hf_dir, read_json_object

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
_ST_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def _ids(v: Any) -> list[int]:
    if isinstance(v, int):
        return [v]
    if isinstance(v, list):
        return [int(x) for x in v if isinstance(x, int)]
    return []


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, HF rope_scaling dict or None) from either the v4 or the v5 config layout."""
    params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = cfg.get("rope_scaling") if isinstance(cfg.get("rope_scaling"), dict) else None
    if scaling is None and params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        scaling = dict(scaling)
        rope_type = scaling.pop("type", None) or scaling.get("rope_type") or "default"
        scaling["rope_type"] = rope_type
        if rope_type == "default":
            scaling = None
    return theta, scaling


def config_from_hf_dir(d: Path) -> ModelConfig:
    cfg = read_json_object(d / "config.json")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LlmtopError(
            f"unsupported model_type {model_type!r} in {d / 'config.json'} "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise LlmtopError(f"unsupported hidden_act {act!r} in {d / 'config.json'} (only silu)")
    if cfg.get("mlp_bias"):
        raise LlmtopError(f"mlp_bias=true in {d / 'config.json'} is not supported")
    try:
        hidden = int(cfg["hidden_size"])
        n_heads = int(cfg["num_attention_heads"])
        theta, scaling = _rope(cfg)
        gen_path = d / "generation_config.json"
        gen = read_json_object(gen_path) if gen_path.is_file() else {}
        eos = tuple(dict.fromkeys(_ids(cfg.get("eos_token_id")) + _ids(gen.get("eos_token_id"))))
        bos = cfg.get("bos_token_id")
        extra: dict[str, Any] = {"architecture": model_type}
        if "tie_word_embeddings" not in cfg:
            extra["tie_from_weights"] = True
        if cfg.get("sliding_window") and cfg.get("use_sliding_window", model_type == "mistral"):
            # The engine attends over the whole context; recorded so the UI can say so.
            extra["sliding_window"] = int(cfg["sliding_window"])
        return ModelConfig(
            name=d.resolve().name,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or hidden // n_heads),
            max_context=int(cfg.get("max_position_embeddings") or 2048),
            rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            # When the key is absent, load_hf_weights decides from whether lm_head.weight exists.
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            # Qwen2 always has q/k/v biases; Llama/Mistral only when attention_bias is set.
            attention_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            bos_token_id=int(bos) if isinstance(bos, int) else None,
            eos_token_ids=eos,
            chat_template=chat_template_from_hf_dir(d),
            extra=extra,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise LlmtopError(f"{d / 'config.json'} is missing or has a bad value for {e}") from None


def safetensors_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        wmap = read_json_object(index).get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise LlmtopError(f"{index} has no weight_map")
        files = [d / f for f in dict.fromkeys(wmap.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise LlmtopError(f"checkpoint shard(s) missing in {d}: {', '.join(missing)}")
        return files
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise LlmtopError(f"no *.safetensors weights in {d}")
    return files


def _to_f32(raw: np.ndarray, st_dtype: str) -> np.ndarray:
    if st_dtype == "BF16":
        # bf16 is the top half of an IEEE float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)  # always a copy: the result must not reference the map


def read_safetensors(path: Path, keep: set[str] | None = None) -> dict[str, np.ndarray]:
    """float32 copies of the tensors in one .safetensors file (only names in `keep` if given)."""
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise LlmtopError(f"cannot read {path}: {e}") from None
    try:
        if len(mm) < 8:
            raise LlmtopError(f"{path} is truncated (no safetensors header)")
        (hlen,) = struct.unpack_from("<Q", mm, 0)
        if 8 + hlen > len(mm):
            raise LlmtopError(f"{path} is truncated or not a safetensors file")
        try:
            header = json.loads(bytes(mm[8 : 8 + hlen]))
        except ValueError:
            raise LlmtopError(f"{path} has a corrupt safetensors header") from None
        base = 8 + hlen
        out: dict[str, np.ndarray] = {}
        for name, meta in header.items():
            if name == "__metadata__" or (keep is not None and name not in keep):
                continue
            st_dtype = meta.get("dtype")
            if st_dtype not in _ST_DTYPES:
                raise LlmtopError(f"{path}: tensor {name!r} has unsupported dtype {st_dtype}")
            start, end = meta["data_offsets"]
            shape = tuple(int(s) for s in meta["shape"])
            dt = np.dtype(_ST_DTYPES[st_dtype])
            count = int(np.prod(shape, dtype=np.int64))
            if base + end > len(mm) or end - start != count * dt.itemsize:
                raise LlmtopError(f"{path} is truncated or corrupt at tensor {name!r}")
            raw = np.frombuffer(mm, dtype=dt, count=count, offset=base + start).reshape(shape)
            out[name] = _to_f32(raw, st_dtype)
            del raw
        return out
    finally:
        with contextlib.suppress(BufferError):  # a view escaped; the GC frees the map later
            mm.close()


def load_hf_weights(d: Path, cfg: ModelConfig) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for f in safetensors_files(d):
        weights.update(read_safetensors(f))
    # Buffers some older checkpoints saved; recomputed from the config by the engine.
    for k in [k for k in weights if k.endswith("rotary_emb.inv_freq")]:
        del weights[k]
    if cfg.extra.pop("tie_from_weights", False):
        cfg.tie_embeddings = "lm_head.weight" not in weights
    if cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
    return weights
