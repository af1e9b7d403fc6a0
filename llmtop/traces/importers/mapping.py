"""How foreign trace records map onto our events: one table of rules, shared by every importer.

- `op_class_for(kernel, launcher, annotation)`: op class of one kernel launch from what launched it (its
  correlated CPU op: `aten::addmm`, `_C::rms_norm`, `c10d::allreduce_`, ...), then the annotation or module
  around the launch (`nn.Module: LlamaRMSNorm`, an NVTX range), then the kernel name; `other` only when
  none of them knows. Copies and collectives are what their kernel name says whoever launched them.
- `op_class_of(name)`: the name-only path (first matching rule wins, so fused kernels are classed by their
  dominant work: an attention kernel that mentions gemm is attention, a matmul fused with a norm is
  matmul, an add fused into a norm is a norm, an all-reduce fused with a norm is comm).
- `layer_of(name)`: decoder-layer index from a name (`nn.Module: LlamaDecoderLayer_12`, `layers.12`,
  `block_12`, `blk.12`, `L12`), or NO_LAYER.
- `parse_step(name)`: step facts from a step annotation (`ProfilerStep#N`, vLLM `execute_context_N(T)_
  generation_M(T)`, SGLang `step[DECODE bs=32]`, ...), or None.
- `Intervals`: point-in-range lookup used to put kernels into steps and layers; `innermost` for the
  innermost of nested ranges (the annotation a kernel was launched in).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llmtop.events import DECODE, NO_LAYER, NS_LIMIT, OP_CLASS_ID, PREFILL

# -- op classes --------------------------------------------------------------------------------------
# Patterns run on the lower-cased name. Pieces shared by the three tables below:
_COMM = (
    r"nccl|rccl|nvshmem|(?<![a-z])mpi_|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|multimem"
    r"|cross_device_reduce|quickreduce|quick_?all_?reduce|custom_?ar(?![a-z])|one_?shot_?all|two_?shot_?all"
    r"|deep_?ep|sendrecv|send_?recv"
)
# MoE routing (gating softmax, top-k of experts, token sort/permute, the weighted sum back): no class of
# its own; "other" rather than the norm (`routingRenormalize`) or sampling (`topkGating`) its words suggest
_MOE_ROUTING = (
    r"routing|router|moe_?align|moe_?sum|topk_?gating|gating_?softmax|topk_?softmax|moe_fused_gate"
    r"|grouped_?topk|fused_?topk|count_and_sort_expert|expert_?(?:ids|offsets|counts?|map)|expandinputrows"
    r"|finalize_?moe|moe::dev::finalize|moe_?permute|moe_?unpermute|permute_?tokens|unpermute"
)
_ATTENTION = (
    r"flash(?!infer)|fmha|paged_?attention|attention|sdpa|scaled_dot_product|batch_?decode|batch_?prefill"
    r"|single_?decode|single_?prefill|mha_|(?<![a-z])mha(?![a-z])|attn_fwd|attn_bwd|merge_attn|unified_attn"
    r"|(?<![a-z])mla(?![a-z])|flashmla|(?<![a-z])xqa|sage_?(?:fwd|attn|quant)|sageattn|varlen_fwd"
    r"|fwd_kvcache|_fa[23]_c::"
)
_MATMUL = (
    r"(?<!fb)gemm|gemv|cutlass|cublas|hipblas|nvjet|(?<![a-z])bmm|matmul|nt_matmul|cijk_|xmma|wgmma|hgmma|marlin"
    r"|machete|triton_tem_|fused_moe_kernel|aten::(?:mm|bmm|addmm|baddbmm|addbmm|linear|einsum|_scaled_mm"
    r"|_scaled_grouped_mm|_grouped_mm|_int_mm)\b|_mm\b|\blinear\b|conv|scudnn|im2d?2?col|fused_ffn|_proj\b"
    r"|lm_head|(?<![a-z])fc(?![a-z])"
)
_NORM = r"norm(?!al(?!iz))"  # rmsnorm, layer_norm, groupnorm; not normal_ (random numbers)
_NOT_NORM = r"vector_norm|linalg|frobenius|norm_float_order"  # a reduction, not a normalization layer
_ROPE = r"rope(?!r)|rotary|rotate_half|pos_encoding"
_EMBEDDING = r"embed|gather|index_?select|split_eb_"
_SAMPLING = r"argmax|topk|top_k|top_p|(?<!up)(?<!down)(?<!re)sampl(?:e|ing|er)|multinomial"
_ELEMENTWISE = (
    r"elementwise|silu|gelu|relu|swiglu|act_and_mul|activation|softmax|dropout|sigmoid|tanh|axpy|transpose"
    r"|nchwtonhwc|nhwctonchw|quant|cvt_|(?<![a-z])(?:add|mul|sub|div|divide|neg|abs|exp|log2?|pow|sqrt|rsqrt"
    r"|clamp|clip|where|cast|cat|fill|reciprocal|threshold|nan_to_num|eq|ne|gt|ge|lt|le)(?![a-z])"
    r"|aten::(?:add|mul|sub|div|neg|copy_|fill_|cat|where|clamp|exp|pow)|copy|fill|residual|scale"
)

# llmtop's own names for XRT (NPU) calls (events.py: `xrt:<kernel>/<part>`), e.g. from an exported trace
_XRT = r"^xrt(?:-setup)?:"

# Kernel (or op) names, in priority order.
OP_CLASS_RULES: tuple[tuple[str, str], ...] = (
    ("npu", _XRT),
    ("comm", _COMM),
    ("memcpy", r"memcpy|memset|kv_?cache_?write|store_kvcache|kv_write|kv_rearrange|reshape_and_cache"
               r"|(?<![a-z])dma(?![a-z])"),
    ("attention", _ATTENTION),
    ("matmul", _MATMUL),
    ("other", _MOE_ROUTING),
    ("sampling", _SAMPLING),
    ("other", _NOT_NORM),
    ("norm", _NORM),
    ("rope", _ROPE),
    ("embedding", _EMBEDDING),
    ("elementwise", _ELEMENTWISE),
)
# Triton kernels that Inductor generated (`triton_poi_fused_addmm_gelu_view_26`): pointwise (poi) and
# reduction (red, per) kernels name the ops they fused, in alphabetical order. `addmm` there is the bias
# add of a matmul that ran elsewhere, so the matmul rules must not see it.
_INDUCTOR = re.compile(r"^triton_(?:poi|red|per)_fused")
INDUCTOR_RULES: tuple[tuple[str, str], ...] = (
    ("norm", r"layer_norm|rms_norm|group_norm|batch_norm|rsqrt|(?<![a-z])mean_.*(?<![a-z])pow(?![a-z])"),
    ("rope", r"rotary|rope(?!r)|(?<![a-z])cos_.*(?<![a-z])sin(?![a-z])"),
    ("sampling", r"argmax|multinomial|topk"),
    ("embedding", r"embedding"),
    ("elementwise", r"."),
)
# What launched the kernel (the CPU op correlated with the launch) decides first, but only for ops whose
# class holds for every kernel they launch: a GEMM's layout copies are the matmul, an FFT or im2col inside
# a cuDNN convolution is the convolution. Elementwise ATen ops (aten::add) decide nothing here: inside an
# RMSNorm module an add is part of the norm.
LAUNCHER_RULES: tuple[tuple[str, str], ...] = (
    ("comm", _COMM + r"|c10d::|record_param_comms|symm_mem"),
    ("other", _MOE_ROUTING),
    ("attention", _ATTENTION),
    ("matmul", r"aten::(?:mm|addmm|bmm|baddbmm|addbmm|linear|matmul|einsum|_scaled_mm|_scaled_grouped_mm"
               r"|_grouped_mm|_int_mm|conv\w*|_convolution\w*|cudnn_convolution\w*|miopen_convolution\w*"
               r"|convolution\w*)$|(?<!fb)gemm|gemv|scaled_mm|cutlass|marlin|machete|fused_moe|fused_experts"
               r"|grouped_mm|_mm$"),
    ("norm", r"(?:rms|layer|group|batch|instance)_?norm"),
    ("rope", _ROPE),
    ("embedding", r"aten::embedding|embedding_bag|split_embedding|vocab_?parallel_?embedding"),
    ("memcpy", r"reshape_and_cache|kv_?cache|store_kvcache|set_kv_buffer|concat_and_cache"),
    ("sampling", r"(?<!up)(?<!down)(?<!re)sampl(?:e|ing|er)|multinomial"),
)
# The annotation or module around the launch (`nn.Module: LlamaRMSNorm_3`, an NVTX or record_function
# range): the structural classes only. A module that mixes classes (an MLP, a MoE block, a decoder layer)
# says nothing, and neither do step annotations or torch.compile's `## Call CompiledFxGraph <hash>`.
ANNOTATION_RULES: tuple[tuple[str, str], ...] = (
    ("comm", _COMM + r"|c10d::|record_param_comms"),
    ("other", r"router|moe_?gate|topk_?router|gating"),
    ("norm", r"(?:rms|layer|group|batch|instance)_?norm"),
    ("rope", r"rotary|rope(?!r)"),
    ("attention", _ATTENTION + r"|(?<![a-z])attn(?![a-z_])"),
    ("matmul", r"linear|lm_?head|(?<![a-z])(?:q|k|v|o|qkv|gate|up|down|gate_up|out)_proj(?![a-z])"
               r"|conv|(?<![a-z])fc\d*(?![a-z])|(?<!fb)gemm|matmul"),
    ("embedding", r"embed"),
    ("sampling", r"(?<!up)(?<!down)(?<!re)sampl(?:e|ing|er)"),
    ("elementwise", r"siluandmul|geluandmul|mulandsilu|act_?fn|activation"
                    r"|(?<![a-z])(?:silu|gelu|relu)(?![a-z])"),
)
_DEFINITE = re.compile(r"^(?:memcpy|memset)\b|" + _COMM + "|" + _XRT)  # copies, collectives, XRT calls
_ANNOTATION_SKIP = re.compile(r"^## |compiledfxgraph|torch-compiled region")


def _compile(rules: tuple[tuple[str, str], ...]) -> tuple[tuple[int, re.Pattern[str]], ...]:
    return tuple((OP_CLASS_ID[c], re.compile(p)) for c, p in rules)


_OP_RULES = _compile(OP_CLASS_RULES)
_INDUCTOR_RULES = _compile(INDUCTOR_RULES)
_LAUNCHER_RULES = _compile(LAUNCHER_RULES)
_ANNOTATION_RULES = _compile(ANNOTATION_RULES)
_OTHER = OP_CLASS_ID["other"]


def _first(rules: tuple[tuple[int, re.Pattern[str]], ...], low: str) -> int | None:
    for cls, pat in rules:
        if pat.search(low):
            return cls
    return None


@lru_cache(maxsize=65536)
def op_class_of(name: str) -> int:
    """Op class id from a kernel or op name alone (`other` when no rule matches)."""
    low = name.lower()
    cls = _first(_INDUCTOR_RULES if _INDUCTOR.match(low) else _OP_RULES, low)
    return _OTHER if cls is None else cls


@lru_cache(maxsize=65536)
def launcher_class(launcher: str) -> int | None:
    """The class a launching CPU op imposes on every kernel it launches, or None."""
    return _first(_LAUNCHER_RULES, launcher.lower()) if launcher else None


_PIECES = re.compile(r"[:.\s]+")


@lru_cache(maxsize=65536)
def annotation_class(annotation: str) -> int | None:
    """The class an enclosing annotation / module name gives the kernels launched in it, or None. A module
    path says most at its end: `model.layers.0.self_attn.qkv_proj: QKVParallelLinear` is a matmul."""
    low = annotation.lower()
    if not low or _ANNOTATION_SKIP.search(low) or parse_step(annotation) is not None:
        return None
    for piece in reversed(_PIECES.split(low)):
        cls = _first(_ANNOTATION_RULES, piece) if piece else None
        if cls is not None:
            return cls
    return _first(_ANNOTATION_RULES, low)


@lru_cache(maxsize=262144)
def op_class_for(kernel: str, launcher: str = "", annotation: str = "") -> int:
    """Op class id of one kernel launch: copies and collectives by their name; then the launching CPU op
    (`launcher`, e.g. `aten::addmm`), the innermost enclosing annotation or module (`annotation`), the
    kernel name, and last any class the launcher's own name suggests (`aten::add` -> elementwise);
    `other` only when none of them knows."""
    low = kernel.lower()
    if _DEFINITE.search(low):
        return op_class_of(kernel)
    cls = launcher_class(launcher)
    if cls is None:
        cls = annotation_class(annotation)
    if cls is None:
        cls = op_class_of(kernel)
        if cls == _OTHER and launcher:
            cls = op_class_of(launcher)
    return cls


def op_class_column(
    names: list[str],
    name: np.ndarray,
    launchers: list[str] | None = None,
    launcher: np.ndarray | None = None,
    annotations: list[str] | None = None,
    annotation: np.ndarray | None = None,
) -> np.ndarray:
    """`op_class_for` over columns: kernel name ids into `names`, launcher and annotation ids into their
    lists (-1 = none). Each distinct (name, launcher, annotation) triple is classified once."""
    n = len(name)
    lau = launcher if launcher is not None and len(launcher) == n else np.full(n, -1, dtype=np.int64)
    ann = annotation if annotation is not None and len(annotation) == n else np.full(n, -1, dtype=np.int64)
    if not n:
        return np.zeros(0, dtype=np.int64)
    lnames, anames = launchers or [], annotations or []
    nl, na = len(lnames) + 1, len(anames) + 1
    if (len(names) + 1) * nl * na < 1 << 62:  # one int64 key per launch: a 1-d unique is much faster
        keys, inv = np.unique((name.astype(np.int64) * nl + lau + 1) * na + ann + 1, return_inverse=True)
        triples = np.stack([keys // na // nl, keys // na % nl - 1, keys % na - 1], axis=1)
    else:
        triples, inv = np.unique(np.stack([name, lau, ann], axis=1).astype(np.int64), axis=0,
                                 return_inverse=True)
    cls = np.array([
        op_class_for(names[a], lnames[b] if b >= 0 else "", anames[c] if c >= 0 else "")
        for a, b, c in triples.tolist()
    ], dtype=np.int64)
    return cls[inv.reshape(-1)]


_LAYER_RES = (
    re.compile(r"(?:DecoderLayer|Layer|Block)_(\d+)\b"),  # nn.Module: LlamaDecoderLayer_12 (with_modules)
    re.compile(r"(?:^|[^a-z])(?:layers|h|blocks)\.(\d+)(?:\.|$|\b)"),  # module paths model.layers.12.mlp
    re.compile(r"(?:^|[^a-z])(?:layer|block)[_ ]?(\d+)(?![0-9])", re.IGNORECASE),  # block_12, layer 3
    re.compile(r"(?:^|[^a-z])blk\.(\d+)\b"),  # GGUF / llama.cpp tensor names
    re.compile(r"(?:^|[:_ ./\-])L(\d+)(?=$|[:_ ./\-])"),  # doppler matmul:ffn_up:L12, L9.ffn_down
)


@lru_cache(maxsize=65536)
def layer_of(name: str) -> int:
    for pat in _LAYER_RES:
        m = pat.search(name)
        if m:
            v = int(m.group(1))
            return v if v < 32768 else NO_LAYER
    return NO_LAYER


@dataclass(frozen=True, slots=True)
class StepFacts:
    """What a step annotation says; None = the annotation does not say."""

    kind: str  # "profiler_step", "vllm", "sglang_step", "nvtx"
    index: int | None = None
    phase: int | None = None
    tokens: int | None = None
    batch: int | None = None
    ctx: int | None = None


_PROFILER_STEP = re.compile(r"^ProfilerStep#(\d+)$")
# vLLM: execute_context_N(T)_generation_M(T); newer builds / SGLang-on-vLLM add a batch size after
# "execute_" and per-group stats inside the parentheses: (sq<q tokens>sk<k tokens>sqsq..sqsk..).
_VLLM_STEP = re.compile(r"^execute_(?:(\d+)_)?context_(\d+)\(([^)]*)\)_generation_(\d+)\(([^)]*)\)")
_SGLANG_STEP = re.compile(r"^step\[(\w+)(?:[^\]]*?bs=(\d+))?[^\]]*\]$", re.IGNORECASE)
_GENERIC_STEP = re.compile(r"^(?:decode|prefill)(?:[_ :#\[(]|$)|^(?:decode|generation|forward)_?step", re.I)


def _group_stats(s: str) -> tuple[int, int | None]:
    """'12' -> (12, None); 'sq32sk32785sqsq32sqsk32785' -> (32, 32785) (query tokens, summed keys)."""
    s = s.strip()
    if s.isdigit():
        return int(s), None
    q = re.match(r"sq(\d+)sk(\d+)", s)
    if q:
        return int(q.group(1)), int(q.group(2))
    return 0, None


@lru_cache(maxsize=4096)
def parse_step(name: str) -> StepFacts | None:
    m = _PROFILER_STEP.match(name)
    if m:
        return StepFacts("profiler_step", index=int(m.group(1)))
    m = _VLLM_STEP.match(name)
    if m:
        n_ctx, n_gen = int(m.group(2)), int(m.group(4))
        t_ctx, k_ctx = _group_stats(m.group(3))
        t_gen, k_gen = _group_stats(m.group(5))
        batch = int(m.group(1)) if m.group(1) else n_ctx + n_gen
        ctx = None
        if k_gen is not None and n_gen:
            ctx = -(-k_gen // n_gen)  # mean keys per decode request: the trace gives only the sum
        elif k_ctx is not None and n_ctx:
            ctx = -(-k_ctx // n_ctx)
        phase = PREFILL if n_ctx > 0 else DECODE  # a mixed step does prefill work: call it prefill
        return StepFacts("vllm", phase=phase, tokens=t_ctx + t_gen, batch=batch, ctx=ctx)
    m = _SGLANG_STEP.match(name)
    if m:
        mode = m.group(1).upper()
        phase = DECODE if mode in ("DECODE", "IDLE", "TARGET_VERIFY") else PREFILL
        bs = int(m.group(2)) if m.group(2) else None
        return StepFacts("sglang_step", phase=phase, batch=bs, tokens=bs if phase == DECODE else None)
    if _GENERIC_STEP.match(name):
        low = name.lower()
        phase = PREFILL if "prefill" in low else DECODE if ("decode" in low or "generation" in low) else None
        return StepFacts("named", phase=phase)
    return None


def merge_facts(outer: StepFacts, inner: StepFacts) -> StepFacts:
    """Fill what the outer annotation leaves open from an annotation nested in it."""
    return StepFacts(
        outer.kind,
        index=outer.index if outer.index is not None else inner.index,
        phase=outer.phase if outer.phase is not None else inner.phase,
        tokens=outer.tokens if outer.tokens is not None else inner.tokens,
        batch=outer.batch if outer.batch is not None else inner.batch,
        ctx=outer.ctx if outer.ctx is not None else inner.ctx,
    )


class Intervals:
    """Non-overlapping [start, end) ranges with a value each; `lookup(t)` -> value or `missing`.

    Ranges fully inside an earlier kept range are dropped (their value is assumed to agree, e.g.
    `layers.3.mlp` inside `layers.3`); partially overlapping ones are clipped to start where the
    previous one ends.
    """

    def __init__(self, starts: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        order = np.lexsort((-ends, starts))
        s, e, v = starts[order], ends[order], values[order]
        keep = np.ones(len(s), dtype=bool)
        if len(s):
            prev_end = np.maximum.accumulate(e)
            keep[1:] = e[1:] > prev_end[:-1]
            s = s.copy()
            s[1:] = np.maximum(s[1:], prev_end[:-1])
        self.starts, self.ends, self.values = s[keep], e[keep], v[keep]

    def __len__(self) -> int:
        return len(self.starts)

    def lookup(self, t: np.ndarray, missing: int = -1) -> np.ndarray:
        """Index of the value per point (values[idx]) or `missing`."""
        out = np.full(len(t), missing, dtype=np.int64)
        if not len(self.starts) or not len(t):
            return out
        idx = np.searchsorted(self.starts, t, side="right") - 1
        ok = idx >= 0
        idx_c = np.where(ok, idx, 0)
        ok &= t < self.ends[idx_c]
        out[ok] = self.values[idx_c[ok]]
        return out


def innermost(starts: np.ndarray, ends: np.ndarray, values: np.ndarray) -> Intervals:
    """Nested [start, end) ranges (NVTX push/pop, record_function) flattened so that `lookup(t)` gives
    the innermost range holding t (where `Intervals` keeps the outermost). A range that outlives the
    range it starts in is cut at its parent's end."""
    order = np.lexsort((-ends, starts))
    out: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int]] = []  # (end, value), innermost last
    cur = 0
    for s, e, v in zip(starts[order].tolist(), ends[order].tolist(), values[order].tolist(), strict=True):
        while stack and stack[-1][0] <= s:
            end, val = stack.pop()
            if end > cur:
                out.append((cur, end, val))
            cur = max(cur, end)
        if stack and s > cur:
            out.append((cur, s, stack[-1][1]))
        if stack:
            e = min(e, stack[-1][0])
        stack.append((e, v))
        cur = s
    while stack:
        end, val = stack.pop()
        if end > cur:
            out.append((cur, end, val))
        cur = max(cur, end)
    a = np.array(out, dtype=np.int64).reshape(-1, 3)
    return Intervals(a[:, 0], a[:, 1], a[:, 2])


class TimeRangeError(ValueError):
    """A time that is a number but no real trace has: not finite (Infinity, NaN, 1e400), or beyond
    ±NS_LIMIT ns (1e308, a corrupt digit run). Importers count it as `time_out_of_range`."""


def us_to_ns(v: object) -> int:
    """A Kineto µs value (int, or the decimal string of a float kept as text) -> int ns, exactly.

    TimeRangeError (a ValueError) for values whose ns do not fit the int64 columns, so importers skip
    and count the event instead of failing on an OverflowError halfway through appending its columns;
    ValueError for text that is not a number, TypeError for what is not a number or text.
    """
    r = _us_to_ns(v)
    if not -NS_LIMIT < r < NS_LIMIT:
        raise TimeRangeError(f"time out of range: {v!r}")
    return r


def _us_to_ns(v: object) -> int:
    if type(v) is str:
        i = v.find(".")
        if i > 0 and len(v) - i == 4 and "e" not in v and "E" not in v:
            return int(v[:i] + v[i + 1 :])  # Kineto's usual 3 decimals: µs.ns -> ns in one int()
    elif type(v) is int:
        return v * 1000  # any size: us_to_ns checks the range
    if type(v) is str:
        neg = v.startswith("-")
        body = v[1:] if neg else v
        if "e" in body or "E" in body:
            r = _finite_ns(float(body))
        else:
            whole, _, frac = body.partition(".")
            if len(whole) > 24 and whole.isdigit():  # before int() refuses 4300+ digits as malformed
                raise TimeRangeError(f"time out of range: {v[:40]!r}...")
            r = int(whole or "0") * 1000 + (int((frac + "000")[:3]) if frac else 0)
            if len(frac) > 3 and frac[3] >= "5":
                r += 1
        return -r if neg else r
    if type(v) is float:
        return _finite_ns(v)
    raise TypeError(f"not a time: {v!r}")


def _finite_ns(us: float) -> int:
    # "1E6553" (a corrupt exponent) parses to inf, json accepts Infinity/NaN, and 1e308 µs is inf ns:
    # TimeRangeError makes the importers skip and count the event instead of dying on round(inf)'s
    # OverflowError.
    ns = us * 1000
    if not math.isfinite(ns) or not -NS_LIMIT < ns < NS_LIMIT:
        raise TimeRangeError(f"time out of range: {us!r}")
    return round(ns)
