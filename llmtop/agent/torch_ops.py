"""Which parts of a torch decoder get timed, and under which kernel names (no timing code here).

`plan_ops` walks a model once and returns one `OpSpec` per module to time, named like the built-in
engine wherever the op is the same (KERNEL_NAMES in kernels/base.py):

- `nn.Linear` and GPT-2's `Conv1D` (weight (K, N))  -> matmul:<attribute name>   (m, n, k recorded)
- `…RMSNorm` / `…LayerNorm`                        -> rmsnorm:<name> / layernorm:<name>, where
  input_layernorm, ln_1 -> attn_norm; post_attention_layernorm, ln_2 -> ffn_norm (Gemma's
  pre_feedforward_layernorm instead where a layer has one); the final norm, ln_f -> final_norm
- the token `nn.Embedding` (embed_tokens, wte, …)   -> embedding; other embeddings -> embedding:<name>
- `…RotaryEmbedding` modules                        -> rope:tables (HF: cos/sin tables for the whole model);
  vLLM's, which rotate q and k inside each attention -> rope
- activation modules inside the layers (act_fn, …)  -> act:<class name, lower case, less "activation">;
  a gated `…AndMul` (vLLM's SiluAndMul)              -> silu_mul / gelu_mul, as the built-in engine says
- vLLM: the LinearBase family (QKVParallelLinear, MergedColumnParallelLinear, RowParallelLinear, …) ->
  matmul:<attr> with this process's shard as (n, k); the attention layer (an AttentionLayerBase) ->
  attention:prefill/decode by the step's phase; the LogitsProcessor -> matmul:lm_head (its activations
  are the second argument: `logits_processor(lm_head, hidden_states)`)

A module shared by several layers (vLLM caches one rotary module for all of them) is timed once, under
the layer running when it is called (layer SHARED in its OpSpec).

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
SHARED = -2  # OpSpec.layer of a module called from several layers: the layer is read at call time
ATTENTION_CORE = "attention"  # OpSpec.name of an attention module: prefill or decode is picked per step


class OpSpec(NamedTuple):
    module: Any
    name: str  # kernel name
    op_class: str
    layer: int
    n: int  # matmul output features (0: not a matmul)
    k: int  # matmul reduction (input features)
    arg: int = 0  # which positional argument holds the activations (m = its numel // k)


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
    # vLLM's LinearBase family: the shard this process computes (tensor parallel splits n or k)
    n, k = getattr(mod, "output_size_per_partition", None), getattr(mod, "input_size_per_partition", None)
    if isinstance(n, int) and isinstance(k, int) and hasattr(mod, "quant_method"):
        return n, k
    return None


def compiled_reason(model: Any) -> str | None:
    """Why `model` runs as compiled graphs that forward patches cannot see, or None when it runs eagerly:
    torch.compile's OptimizedModule, or vLLM's compilation config (torch.compile or CUDA graphs)."""
    if hasattr(model, "_orig_mod"):
        return f"{type(model._orig_mod).__name__} is torch.compile'd"
    for m in model.modules():
        cc = getattr(m, "compilation_config", None)
        if cc is None or not _is_vllm(m):
            continue
        mode, graphs = getattr(cc, "mode", None), getattr(cc, "cudagraph_mode", None)
        if mode is not None and int(getattr(mode, "value", mode) or 0):
            return f"vLLM compiles {type(m).__name__} (compilation mode {getattr(mode, 'name', mode)})"
        if graphs is not None and getattr(graphs, "name", "NONE") != "NONE":
            return f"vLLM captures {type(m).__name__} into CUDA graphs (cudagraph mode {graphs.name})"
    return None


def _is_vllm(mod: Any) -> bool:
    return type(mod).__module__.startswith("vllm.")


def _is_attention_core(mod: Any) -> bool:
    """vLLM's attention layer (Attention, MLAAttention, …: subclasses of AttentionLayerBase)."""
    return _is_vllm(mod) and any(b.__name__ == "AttentionLayerBase" for b in type(mod).__mro__)


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

    mm = None if type(mod).__name__.endswith("Embedding") else _matmul_shape(mod)
    if mm is not None:
        return f"matmul:{attr}", "matmul", mm[0], mm[1]
    cls = type(mod).__name__
    if cls.endswith("RMSNorm"):
        return f"rmsnorm:{_norm_name(attr, layer, layer_mod)}", "norm", 0, 0
    if cls.endswith("LayerNorm") or isinstance(mod, nn.LayerNorm):
        return f"layernorm:{_norm_name(attr, layer, layer_mod)}", "norm", 0, 0
    if cls.endswith("RotaryEmbedding"):
        return ("rope" if _is_vllm(mod) else "rope:tables"), "rope", 0, 0
    if isinstance(mod, nn.Embedding) or (_is_vllm(mod) and cls.endswith("Embedding")):
        tok = mod is token_emb or (token_emb is None and attr in TOKEN_EMBEDDINGS)
        return ("embedding" if tok else f"embedding:{attr}"), "embedding", 0, 0
    if _is_attention_core(mod):
        return ATTENTION_CORE, "attention", 0, 0
    if layer != NO_LAYER and _is_activation(mod, attr):
        if cls.endswith("AndMul"):  # gated: act(x[..., :d]) * x[..., d:]
            return f"{cls.removesuffix('AndMul').lower()}_mul", "elementwise", 0, 0
        name = cls.lower()
        return f"act:{name.removesuffix('activation') or name}", "elementwise", 0, 0
    return None


def _logits_processor(model: Any, mod: Any) -> tuple[int, int] | None:
    """(n, k) of vLLM's LogitsProcessor from the model's lm_head weight (vocab shard, hidden)."""
    if type(mod).__name__ != "LogitsProcessor" or not _is_vllm(mod):
        return None
    w = getattr(getattr(model, "lm_head", None), "weight", None)
    if w is None or getattr(w, "dim", lambda: 0)() != 2:
        return 0, 0
    return int(w.shape[0]), int(w.shape[1])


def plan_ops(model: Any, layers: list[Any]) -> list[OpSpec]:
    """Every module of `model` to time, with its kernel name, op class, layer and matmul shape."""
    layer_of: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for m in layer.modules():
            if layer_of.setdefault(id(m), i) != i:
                layer_of[id(m)] = SHARED
    layer_ids = {id(x) for x in layers}
    token_emb = _token_embedding(model)
    out: list[OpSpec] = []
    timed: list[str] = []  # qualified names of timed modules: nothing under them is timed again
    for qual, mod in model.named_modules():
        if not qual or id(mod) in layer_ids or any(qual.startswith(t + ".") for t in timed):
            continue
        layer = layer_of.get(id(mod), NO_LAYER)
        lp = _logits_processor(model, mod)
        if lp is not None:
            timed.append(qual)
            out.append(OpSpec(mod, "matmul:lm_head", "matmul", NO_LAYER, lp[0], lp[1], arg=1))
            continue
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


__all__ = [
    "ATTENTION_CORE",
    "LAYER_KERNEL",
    "SHARED",
    "OpSpec",
    "classify",
    "compiled_reason",
    "find_decoder_layers",
    "modeling_functions",
    "plan_ops",
]
