"""How foreign trace records map onto our events: one table of rules, shared by every importer.

- `op_class_of(name)`: op class from a kernel / op name (first matching rule wins, so fused kernels are
  classed by their dominant work: an attention kernel that mentions gemm is attention, a matmul fused
  with a norm is matmul, an add fused into a norm is a norm).
- `layer_of(name)`: decoder-layer index from a name (`nn.Module: LlamaDecoderLayer_12`, `layers.12`,
  `block_12`, `blk.12`, `L12`), or NO_LAYER.
- `parse_step(name)`: step facts from a step annotation (`ProfilerStep#N`, vLLM `execute_context_N(T)_
  generation_M(T)`, SGLang `step[DECODE bs=32]`, ...), or None.
- `Intervals`: point-in-range lookup used to put kernels into steps and layers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llmtop.events import DECODE, NO_LAYER, NS_LIMIT, OP_CLASS_ID, PREFILL

# (op class, pattern) in priority order; patterns run on the lower-cased name.
OP_CLASS_RULES: tuple[tuple[str, str], ...] = (
    ("memcpy", r"memcpy|memset|kv_?cache_?write|store_kvcache|kv_write|kv_rearrange|reshape_and_cache"),
    ("attention", r"flash|fmha|paged_attention|attention|sdpa|batch_decode|batch_prefill|mha_|_attn_fwd"),
    ("sampling", r"argmax|topk|top_k|top_p|sampl|multinomial"),
    (
        "matmul",
        r"gemm|gemv|cutlass|cublas|hipblas|matmul|nt_matmul|cijk_|xmma|wgmma|aten::(?:mm|bmm|addmm|linear)\b|_mm\b"
        r"|\blinear\b|conv|scudnn|fused_ffn|_proj\b|lm_head",
    ),
    ("norm", r"norm"),
    ("rope", r"rope(?!r)|rotary"),
    ("embedding", r"embed|gather"),
    (
        "elementwise",
        r"elementwise|silu|gelu|relu|swiglu|act_and_mul|activation|softmax|dropout|(?<![a-z])add(?![a-z])"
        r"|(?<![a-z])mul(?![a-z])|aten::(?:add|mul|sub|div|neg|copy_|fill_|cat|where|clamp|exp|pow)"
        r"|copy|fill|residual|scale",
    ),
)
_OP_RULES = tuple((OP_CLASS_ID[c], re.compile(p)) for c, p in OP_CLASS_RULES)
_OTHER = OP_CLASS_ID["other"]


@lru_cache(maxsize=65536)
def op_class_of(name: str) -> int:
    low = name.lower()
    for cls, pat in _OP_RULES:
        if pat.search(low):
            return cls
    return _OTHER


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


def us_to_ns(v: object) -> int:
    """A Kineto µs value (int, or the decimal string of a float kept as text) -> int ns, exactly.

    ValueError for values whose ns do not fit the int64 columns (a corrupt digit run), so importers skip
    and count the event instead of failing on an OverflowError halfway through appending its columns.
    """
    r = _us_to_ns(v)
    if not -NS_LIMIT < r < NS_LIMIT:
        raise ValueError(f"time out of range: {v!r}")
    return r


def _us_to_ns(v: object) -> int:
    if type(v) is str:
        i = v.find(".")
        if i > 0 and len(v) - i == 4 and "e" not in v and "E" not in v:
            return int(v[:i] + v[i + 1 :])  # Kineto's usual 3 decimals: µs.ns -> ns in one int()
    elif type(v) is int:
        return v * 1000
    if type(v) is str:
        neg = v.startswith("-")
        body = v[1:] if neg else v
        if "e" in body or "E" in body:
            r = _finite_ns(float(body))
        else:
            whole, _, frac = body.partition(".")
            r = int(whole or "0") * 1000 + (int((frac + "000")[:3]) if frac else 0)
            if len(frac) > 3 and frac[3] >= "5":
                r += 1
        return -r if neg else r
    if type(v) is float:
        return _finite_ns(v)
    raise TypeError(f"not a time: {v!r}")


def _finite_ns(us: float) -> int:
    # "1E6553" (a corrupt exponent) parses to inf, and json accepts Infinity/NaN: ValueError makes the
    # importers skip and count the event instead of dying on round(inf)'s OverflowError.
    if not math.isfinite(us):
        raise ValueError(f"not a finite time: {us!r}")
    return round(us * 1000)
