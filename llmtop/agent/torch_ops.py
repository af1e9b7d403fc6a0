"""Which parts of a torch decoder get timed, and under which kernel names (no timing code here).

`plan_ops` walks a model once and returns one `OpSpec` per module to time, named like the built-in
engine wherever the op is the same (KERNEL_NAMES in kernels/base.py):

- `nn.Linear` and GPT-2's `Conv1D` (weight (K, N))  -> matmul:<attribute name>   (m, n, k recorded)
- `…RMSNorm` / `…LayerNorm`                        -> rmsnorm:<name> / layernorm:<name>, where
  input_layernorm, ln_1 -> attn_norm; post_attention_layernorm, ln_2 -> ffn_norm (Gemma's
  pre_feedforward_layernorm instead where a layer has one); the final norm, ln_f -> final_norm
- the token `nn.Embedding` (embed_tokens, wte, …)   -> embedding; other embeddings -> embedding:<name>
- `…RotaryEmbedding` modules                        -> rope:tables
- activation modules inside the layers (act_fn, …)  -> act:<class name, lower case, less "activation">

A module inside one that is already timed is not timed again, so kernels never nest. Functions, not
modules: `modeling_functions` finds the `apply_rotary_pos_emb` (-> rope) and `eager_attention_forward`
(-> attention) globals of the python modules the model's classes come from.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

from llmtop.events import NO_LAYER

LAYER_KERNEL = "decoder_layer"
TOKEN_EMBEDDINGS = frozenset({"embed_tokens", "wte", "word_embeddings", "tok_embeddings"})
NORM_ALIASES = {
    "input_layernorm": "attn_norm",
    "ln_1": "attn_norm",
    "attention_norm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "ln_2": "ffn_norm",
    "ffn_norm": "ffn_norm",
}
FINAL_NORMS = frozenset({"norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm"})
ACT_ATTRS = frozenset({"act_fn", "act", "activation_fn", "activation", "act_layer"})
ACT_MODULES = ("torch.nn.modules.activation", "transformers.activations")
NOT_ACTIVATIONS = frozenset({"Softmax", "Softmax2d", "LogSoftmax", "Softmin", "MultiheadAttention"})
FUNCTIONS = {"apply_rotary_pos_emb": "rope", "eager_attention_forward": "attention"}


class OpSpec(NamedTuple):
    module: Any
    name: str  # kernel name
    op_class: str
    layer: int
    n: int  # matmul output features (0: not a matmul)
    k: int  # matmul reduction (input features)


def find_decoder_layers(model: Any) -> list[Any]:
    """The children of the largest ModuleList whose classes end with DecoderLayer or Block."""
    import torch.nn as nn

    best: list[Any] = []
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > len(best):
            kids = list(mod)
            if kids and all(type(k).__name__.endswith(("DecoderLayer", "Block")) for k in kids):
                best = kids
    return best


def _matmul_shape(mod: Any) -> tuple[int, int] | None:
    """(n, k) of a Linear / Conv1D, else None."""
    import torch.nn as nn

    if isinstance(mod, nn.Linear):
        return int(mod.out_features), int(mod.in_features)
    if type(mod).__name__ == "Conv1D":
        w = getattr(mod, "weight", None)
        if w is not None and w.dim() == 2:
            return int(w.shape[1]), int(w.shape[0])  # GPT-2 Conv1D: weight (K, N), y = x @ W + b
    return None


def _norm_name(attr: str, layer: int, layer_mod: Any) -> str:
    if layer == NO_LAYER:
        return "final_norm" if attr in FINAL_NORMS else attr
    if layer_mod is not None and hasattr(layer_mod, "pre_feedforward_layernorm"):
        # Gemma 2/3: post_attention_layernorm normalises the attention output; the FFN input norm is this one
        if attr == "pre_feedforward_layernorm":
            return "ffn_norm"
        if attr == "post_attention_layernorm":
            return attr
    return NORM_ALIASES.get(attr, attr)


def _token_embedding(model: Any) -> Any:
    try:
        return model.get_input_embeddings()
    except Exception:  # not an HF model, or one that does not implement it
        return None


def _is_activation(mod: Any, attr: str) -> bool:
    if any(True for _ in mod.children()):
        return False
    cls = type(mod)
    if cls.__name__ in NOT_ACTIVATIONS:
        return False
    return attr in ACT_ATTRS or cls.__module__ in ACT_MODULES


def classify(
    mod: Any, attr: str, layer: int, layer_mod: Any, token_emb: Any
) -> tuple[str, str, int, int] | None:
    """(kernel name, op class, n, k) for one module, or None when it is not timed on its own."""
    import torch.nn as nn

    mm = _matmul_shape(mod)
    if mm is not None:
        return f"matmul:{attr}", "matmul", mm[0], mm[1]
    cls = type(mod).__name__
    if cls.endswith("RMSNorm"):
        return f"rmsnorm:{_norm_name(attr, layer, layer_mod)}", "norm", 0, 0
    if cls.endswith("LayerNorm") or isinstance(mod, nn.LayerNorm):
        return f"layernorm:{_norm_name(attr, layer, layer_mod)}", "norm", 0, 0
    if isinstance(mod, nn.Embedding):
        tok = mod is token_emb or (token_emb is None and attr in TOKEN_EMBEDDINGS)
        return ("embedding" if tok else f"embedding:{attr}"), "embedding", 0, 0
    if cls.endswith("RotaryEmbedding"):
        return "rope:tables", "rope", 0, 0
    if layer != NO_LAYER and _is_activation(mod, attr):
        name = cls.lower()
        return f"act:{name.removesuffix('activation') or name}", "elementwise", 0, 0
    return None


def plan_ops(model: Any, layers: list[Any]) -> list[OpSpec]:
    """Every module of `model` to time, with its kernel name, op class, layer and matmul shape."""
    layer_of: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for m in layer.modules():
            layer_of.setdefault(id(m), i)
    layer_ids = {id(x) for x in layers}
    token_emb = _token_embedding(model)
    out: list[OpSpec] = []
    timed: list[str] = []  # qualified names of timed modules: nothing under them is timed again
    for qual, mod in model.named_modules():
        if not qual or id(mod) in layer_ids or any(qual.startswith(t + ".") for t in timed):
            continue
        layer = layer_of.get(id(mod), NO_LAYER)
        spec = classify(mod, qual.rsplit(".", 1)[-1], layer, layers[layer] if layer >= 0 else None, token_emb)
        if spec is not None:
            timed.append(qual)
            out.append(OpSpec(mod, spec[0], spec[1], layer, spec[2], spec[3]))
    return out


def modeling_functions(model: Any) -> list[tuple[Any, str, str]]:
    """(python module, global name, op) for each rope / eager-attention function of the model's code."""
    seen: set[str] = set()
    out: list[tuple[Any, str, str]] = []
    for m in model.modules():
        modname = type(m).__module__
        if modname in seen or modname.startswith("torch."):
            continue
        seen.add(modname)
        pymod = sys.modules.get(modname)
        for fname, op in FUNCTIONS.items():
            if pymod is not None and callable(getattr(pymod, fname, None)):
                out.append((pymod, fname, op))
    return out


__all__ = ["LAYER_KERNEL", "OpSpec", "classify", "find_decoder_layers", "modeling_functions", "plan_ops"]
