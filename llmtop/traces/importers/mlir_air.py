"""mlir-air LLM profile logs (`make profile` of programming_examples/llms/*, e.g. llama32_1b) -> EventBatches.

The log holds what mlir-air's `Profiler.report()` prints once per phase ("PREFILL — detail tables",
"DECODE (N tokens) — detail tables", each a "PROFILING REPORT"), and before them the inference script's
"END-TO-END DATAFLOW" summary. Read from each phase's report:
- "--- Per-Layer Execution ---": `Layer   i:   77.90ms` (prefill: the one wall of layer i) or
  `Layer   i: avg= ..ms  min= ..ms  max= ..ms  (xN)` (decode: N tokens);
- "--- NPU XRT Call Breakdown ---" and "--- CPU Op Breakdown ---": `name  avg= ..ms  min= ..  max= ..  (xN)`;
- "--- Fine-Grained NPU Breakdown ---": `name  W ms  K ms  R ms  Total ms  X.XMB  Nbo  (xN)`: BO write /
  NPU run / BO read per call, MB written per call, buffers read back;
- from the dataflow summary: the order of the calls in a decoder layer and outside it, the decode
  per-token layer-loop trend (token 1 / middle / last) and the layer count ("Decoder block × 16").
The report has averages per kernel, not single calls, so the events are synthetic: one prefill step and N
decode steps, each call of a kernel its average (an XRT call as llmtop's three events, llmtop/events.py),
laid end to end in dataflow order, each layer stretched to its wall from the Per-Layer table (the rest of
it is python scheduling), decode tokens scaled to the trend. A warning says so. Bytes read back are not in
the report (`mb_read` stays 0).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, I32_MAX, NO_LAYER, OP_CLASS_ID, PREFILL, EventBatch, NameTable, SourceInfo
from llmtop.events import xrt_name as _xrt_name
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import StepFacts, op_class_of
from llmtop.traces.registry import ImportResult, TextLines, TraceFormat, head_text, register

_NUM = r"(\d+(?:\.\d+)?)"
_BANNER = re.compile(r"^\s*PROFILING REPORT\s*$")
_PHASE_HEAD = re.compile(r"^\s*(PREFILL|DECODE)\b(?:\s*\((\d+) tokens\))?.*detail tables", re.IGNORECASE)
_SECTION = re.compile(r"^\s*---\s*(.+?)\s*---\s*$")
_LAYER_ONE = re.compile(rf"^\s*Layer\s+(\d+):\s+{_NUM}ms\s*$")
_AVG = rf"avg=\s*{_NUM}ms\s+min=\s*{_NUM}ms\s+max=\s*{_NUM}ms\s+\(x(\d+)\)"  # avg, min, max, count
_LAYER_AVG = re.compile(rf"^\s*Layer\s+(\d+):\s+{_AVG}")
_AVG_ROW = re.compile(rf"^\s*(\S+)\s+{_AVG}")
_FINE_ROW = re.compile(rf"^\s*(\S+)\s+{_NUM}ms\s+{_NUM}ms\s+{_NUM}ms\s+{_NUM}ms\s+{_NUM}MB\s+{_NUM}bo"
                       r"\s+\(x(\d+)\)")
_INFERENCE = re.compile(r"LLAMA Inference:\s*prompt_len=(\d+),\s*n_tokens=(\d+)")
_TTFT = re.compile(rf"Time to first token \(TTFT\):\s*{_NUM}s")
_PREP = re.compile(rf"Preprocessing \(one-time, prepare_runtime\):\s*{_NUM}\s*s")
_FLOW_HEAD = re.compile(r"^\s*---\s*(PREFILL|DECODE)\b.*---\s*$")
_FLOW_ROW = re.compile(rf"^[\s│]*(\S.*?)\s{{2,}}(CPU|NPU)\s+{_NUM} ms")
_BLOCK = re.compile(r"Decoder block\s*×\s*(\d+)")
_TREND_TOKENS = re.compile(rf"token\s+1 =\s*{_NUM} ms\s+token\s+(\d+) =\s*{_NUM} ms"
                           rf"\s+token\s+(\d+) =\s*{_NUM} ms")
_PRE_OPS = re.compile(r"tokeni[sz]e|eos_pad|(?<![a-z])pad(?![a-z])|embed")  # before the layers
MIB = 1 << 20
MAX_SYNTHETIC = 20_000_000  # events (and layer slots) a report may expand to: ~1e5 tokens of a 32-layer model


@dataclass
class _Call:
    name: str
    count: int
    npu: bool
    avg_ms: float  # the XRT / CPU breakdown's avg per invocation
    write_ms: float = 0.0
    run_ms: float = 0.0
    read_ms: float = 0.0
    mb: float = 0.0
    read_bos: int = 0
    fine: bool = False  # had a Fine-Grained row


@dataclass
class _Phase:
    phase: int
    tokens: int | None = None  # "DECODE (N tokens)"
    layers: dict[int, tuple[float, int]] = field(default_factory=dict)  # layer -> (avg ms, invocations)
    calls: dict[str, _Call] = field(default_factory=dict)
    order: list[tuple[str, bool]] = field(default_factory=list)  # dataflow rows: (name, inside the block)
    trend: tuple[float, int, float, int, float] | None = None  # first, middle index, middle, last index, last
    n_layers: int = 0


def _parse(path: Path, skipped: Counter[str]) -> tuple[list[_Phase], dict[str, float]]:
    phases: list[_Phase] = []
    flows: dict[int, _Phase] = {}  # dataflow summary, per phase
    meta: dict[str, float] = {}
    cur: _Phase | None = None
    pending: _Phase | None = None  # a "<PHASE> — detail tables" heading waiting for its report
    section = ""
    flow: _Phase | None = None
    in_block = False
    for line in TextLines(path):
        line = line.rstrip("\n")
        if m := _INFERENCE.search(line):
            meta["prompt_len"], meta["n_tokens"] = float(m.group(1)), float(m.group(2))
        elif m := _TTFT.search(line):
            meta["ttft_s"] = float(m.group(1))
        elif m := _PREP.search(line):
            meta["preprocessing_s"] = float(m.group(1))
        if m := _PHASE_HEAD.match(line):
            pending = _Phase(PREFILL if m.group(1).upper() == "PREFILL" else DECODE,
                             int(m.group(2)) if m.group(2) else None)
            flow = None
            continue
        if _BANNER.match(line):
            cur = pending or _Phase(-1)
            pending, section, flow = None, "", None
            phases.append(cur)
            continue
        if "END-TO-END DATAFLOW" in line:
            cur, flow = None, None
            continue
        if cur is None and (m := _FLOW_HEAD.match(line)):
            flow = flows.setdefault(PREFILL if m.group(1) == "PREFILL" else DECODE,
                                    _Phase(PREFILL if m.group(1) == "PREFILL" else DECODE))
            in_block = False
            continue
        if flow is not None:
            if m := _BLOCK.search(line):
                flow.n_layers, in_block = int(m.group(1)), True
            elif "└" in line:
                in_block = False
            elif m := _FLOW_ROW.match(line):
                label = m.group(1).strip()
                if not label.lower().startswith(("per-layer", "python", "×", "end-to-end")):
                    flow.order.append((label.removesuffix(".elf"), in_block))
            elif m := _TREND_TOKENS.search(line):
                flow.trend = (float(m.group(1)), int(m.group(2)), float(m.group(3)), int(m.group(4)),
                              float(m.group(5)))
            continue
        if cur is None:
            continue
        if m := _SECTION.match(line):
            section = m.group(1).lower()
            continue
        body = line.strip()
        if not body or set(body) <= set("─-=%") or body.startswith(("Kernel", "TOTAL", "%")):
            continue
        try:
            if section.startswith("per-layer"):
                if m := _LAYER_AVG.match(line):
                    cur.layers[int(m.group(1))] = (float(m.group(2)), int(m.group(5)))
                elif m := _LAYER_ONE.match(line):
                    cur.layers[int(m.group(1))] = (float(m.group(2)), 1)
            elif section.startswith(("npu xrt call", "cpu op")):
                if m := _AVG_ROW.match(line):
                    npu = section.startswith("npu")
                    name = m.group(1)
                    c = cur.calls.get(name)
                    if c is None:
                        cur.calls[name] = _Call(name, int(m.group(5)), npu, float(m.group(2)))
                    else:
                        c.avg_ms = float(m.group(2))
            elif section.startswith("fine-grained") and (m := _FINE_ROW.match(line)):
                name = m.group(1)
                c = cur.calls.setdefault(name, _Call(name, int(m.group(8)), True, float(m.group(5))))
                c.npu, c.fine = True, True
                c.write_ms, c.run_ms, c.read_ms = float(m.group(2)), float(m.group(3)), float(m.group(4))
                c.mb, c.read_bos = float(m.group(6)), int(float(m.group(7)))
                c.count = int(m.group(8))
        except (ValueError, OverflowError):
            skipped["malformed_record"] += 1
    for p in phases:
        if p.phase < 0:  # a report without its heading: decode when a layer ran more than once
            p.phase = DECODE if any(n > 1 for _, n in p.layers.values()) else PREFILL
        f = flows.get(p.phase)
        if f is not None:
            p.order, p.trend, p.n_layers = f.order, f.trend, f.n_layers
    return phases, meta


def _interp_trend(trend: tuple[float, int, float, int, float], n: int) -> np.ndarray:
    """Per-token layer-loop walls (ms) through (1, first), (middle, mid), (last, last)."""
    first, mi, mid, li, last = trend
    xs = np.array([1.0, float(mi), float(li)])
    ys = np.array([first, mid, last])
    order = np.argsort(xs)
    return np.interp(np.arange(1, n + 1, dtype=np.float64), xs[order], ys[order])


class _Emitter:
    def __init__(self) -> None:
        self.local: list[str] = []
        self.ids: dict[str, int] = {}
        self.name: list[int] = []
        self.start: list[int] = []
        self.dur: list[int] = []
        self.layer: list[int] = []
        self.opc: list[int] = []
        self.m: list[int] = []
        self.n: list[int] = []

    def add(self, name: str, opc: int, layer: int, t: int, dur: int, m: int = 0, n: int = 0) -> int:
        j = self.ids.get(name)
        if j is None:
            j = self.ids[name] = len(self.local)
            self.local.append(name)
        self.name.append(j)
        self.start.append(t)
        self.dur.append(dur)
        self.layer.append(layer)
        self.opc.append(opc)
        self.m.append(m)
        self.n.append(n)
        return t + dur

    def call(self, c: _Call, layer: int, t: int) -> int:
        if not c.npu:
            return self.add(c.name, op_class_of(c.name), layer, t, round(c.avg_ms * 1e6))
        npu = OP_CLASS_ID["npu"]
        w, r, rd = (c.write_ms, c.run_ms, c.read_ms) if c.fine else (0.0, c.avg_ms, 0.0)
        mb = min(round(c.mb * MIB), I32_MAX)
        t = self.add(_xrt_name(c.name, "bo_write"), npu, layer, t, round(w * 1e6), mb)
        t = self.add(_xrt_name(c.name, "npu_run"), npu, layer, t, round(r * 1e6))
        return self.add(_xrt_name(c.name, "bo_read"), npu, layer, t, round(rd * 1e6), 0, c.read_bos)


def _plan(p: _Phase, steps: int, n_layers: int) -> tuple[list[str], list[str], list[str], dict[str, int]]:
    """(calls before the layers, calls in each layer, calls after them; calls per step), in dataflow order:
    a call made a multiple of layers x steps times is in every layer, tokenize / pad / embed come first."""
    order_in = [n for n, b in p.order if b]
    order_out = [n for n, b in p.order if not b]
    per_step = {n: c.count // steps if steps else 0 for n, c in p.calls.items()}
    inner = [n for n, c in p.calls.items() if n_layers and c.count >= n_layers * steps
             and c.count % (n_layers * steps) == 0]
    pre = [n for n in p.calls if n not in inner and _PRE_OPS.search(n.lower())]
    post = [n for n in p.calls if n not in inner and n not in pre]

    def rank(order: list[str], n: str) -> tuple[int, bool, str]:
        return (order.index(n) if n in order else len(order), p.calls[n].npu, n)

    inner.sort(key=lambda n: (order_in.index(n) if n in order_in else len(order_in), not p.calls[n].npu, n))
    pre.sort(key=lambda n: rank(order_out, n))
    post.sort(key=lambda n: rank(order_out, n))
    return pre, inner, post, per_step


def import_mlir_air(
    path: Path, names: NameTable
) -> tuple[SourceInfo, list[EventBatch], Counter[str], list[str]]:
    skipped: Counter[str] = Counter()
    phases, meta = _parse(path, skipped)
    phases = [p for p in phases if p.calls or p.layers]
    if not phases:
        raise LlmtopError(f"{path}: no mlir-air PROFILING REPORT with call or layer rows: nothing to import")
    warnings: list[str] = []
    by_phase: dict[int, _Phase] = {}
    for p in phases:
        if p.phase in by_phase:
            warnings.append(f"a second {('prefill', 'decode')[p.phase]} PROFILING REPORT was left out")
            skipped["duplicate_report"] += 1
            continue
        by_phase[p.phase] = p
    work = sum((p.tokens or max((c for _, c in p.layers.values()), default=1))
               * max(1, p.n_layers or len(p.layers)) + sum(c.count * 3 for c in p.calls.values())
               for p in by_phase.values())
    if work > MAX_SYNTHETIC:  # a damaged count (x99999999999) must not make llmtop build billions of rows
        raise LlmtopError(f"{path}: the mlir-air report's call or token counts are implausible "
                          f"({work:,} synthetic events; at most {MAX_SYNTHETIC:,})")
    em = _Emitter()
    step_ranges: list[StepRange] = []
    t = 0
    prompt = int(meta.get("prompt_len", 0))
    extra_calls: dict[str, int] = {}  # decode-table calls that ran in the prefill (its LM head)
    n_dec = 0
    if DECODE in by_phase:
        d = by_phase[DECODE]
        n_dec = (d.tokens or max((n for _, n in d.layers.values()), default=0)
                 or int(meta.get("n_tokens", 0)) or 1)
        for c in d.calls.values():
            r = c.count % n_dec
            if r and PREFILL in by_phase and c.name not in by_phase[PREFILL].calls:
                extra_calls[c.name] = r
    for ph in (PREFILL, DECODE):
        p = by_phase.get(ph)
        if p is None:
            continue
        steps = 1 if ph == PREFILL else n_dec
        if ph == PREFILL and p.layers:
            steps = max(1, max(n for _, n in p.layers.values()))
        n_layers = p.n_layers or len(p.layers)
        if ph == PREFILL and extra_calls:
            d = by_phase[DECODE]
            for name, r in extra_calls.items():
                c = d.calls[name]
                p.calls[name] = _Call(name, r, c.npu, c.avg_ms, c.write_ms, c.run_ms, c.read_ms, c.mb,
                                      c.read_bos, c.fine)
                c.count -= r
            warnings.append(f"{', '.join(f'{r} {n}' for n, r in extra_calls.items())} call(s) of the decode "
                            "tables are put at the end of the prefill (mlir-air runs the prefill's LM head "
                            "through the decode kernels)")
        pre, inner, post, per_step = _plan(p, steps, n_layers)
        layer_ms = [p.layers.get(i, (0.0, 0))[0] for i in range(n_layers)]
        scale = np.ones(steps)
        if ph == DECODE and p.trend is not None and sum(layer_ms) > 0:
            # each token's layer loop is the trend line's wall there, split over the layers as their averages
            scale = _interp_trend(p.trend, steps) / sum(layer_ms)
        rest = {n: p.calls[n].count - per_step[n] * steps for n in p.calls}
        for s in range(steps):
            t0 = t
            for name in pre:
                for _ in range(per_step[name] + (1 if rest[name] > s else 0)):
                    t = em.call(p.calls[name], NO_LAYER, t)
            reps = {n: per_step[n] // max(1, n_layers) for n in inner}
            for li in range(n_layers):
                l0 = t
                for name in inner:
                    for _ in range(reps[name]):
                        t = em.call(p.calls[name], li, t)
                t = max(t, l0 + round(layer_ms[li] * scale[s] * 1e6))  # the rest of the layer: python
            for name in post:
                for _ in range(per_step[name] + (1 if rest[name] > s else 0)):
                    t = em.call(p.calls[name], NO_LAYER, t)
            facts = (StepFacts("mlir-air", index=len(step_ranges), phase=PREFILL, tokens=prompt, batch=1,
                               ctx=prompt) if ph == PREFILL else
                     StepFacts("mlir-air", index=len(step_ranges), phase=DECODE, tokens=1, batch=1,
                               ctx=prompt + s + 1))
            step_ranges.append(StepRange(t0, max(t, t0 + 1), 0, facts))
    if not em.name:
        raise LlmtopError(f"{path}: the mlir-air report lists no XRT or CPU call: nothing to import")
    n = len(em.name)
    start = np.array(em.start, dtype=np.int64)
    kc = KernelColumns(
        em.local, np.array(em.name, dtype=np.int64), start, np.array(em.dur, dtype=np.int64),
        np.zeros(n, dtype=np.int64), start.copy(), np.zeros(n, dtype=np.int64),
        np.array(em.layer, dtype=np.int64), np.array(em.opc, dtype=np.int64),
    )
    batches, info = build_batches(kc, step_ranges, names)
    # build_batches lays kernels out by start (stable): carry the bytes (m) and buffers (n) the same way
    order = np.argsort(start, kind="stable")
    m_sorted, n_sorted = np.array(em.m, np.int64)[order], np.array(em.n, np.int64)[order]
    if sum(len(b.kernels) for b in batches) == n:
        pos = 0
        for b in batches:
            k = len(b.kernels)
            b.kernels["m"], b.kernels["n"] = m_sorted[pos : pos + k], n_sorted[pos : pos + k]
            pos += k
    skipped.update(info["skipped"])
    warnings.extend(info["warnings"])
    warnings.append("mlir-air's profile holds per-kernel averages, not single calls: every call is its "
                    "kernel's average, laid end to end in dataflow order, each layer stretched to its "
                    "Per-Layer wall (the rest is python scheduling) and decode tokens to the per-token trend")
    if any(c.npu for p in by_phase.values() for c in p.calls.values()):
        warnings.append("the report has no byte counts for BO reads: mb_read is 0")
    n_layers = max((p.n_layers or len(p.layers) for p in by_phase.values()), default=0)
    source = SourceInfo(
        kind="import",
        backend="mlir-air",
        device="AMD NPU (mlir-air profile)",
        model=path.name,
        dtype="bf16",
        timing="mlir-air Profiler (perf_counter around each XRT call's BO write / run / read), averages",
        n_layers=n_layers,
        extra={
            "ranks": [0],
            "streams": [0],
            "skipped": sum(skipped.values()),
            "warnings": warnings,
            "npu": {"binding": "pyxrt", "steps": "synthetic", "layers": "report"},
            **{k: v for k, v in meta.items()},
        },
    )
    return source, batches, skipped, warnings


# -- registration ----------------------------------------------------------------------------
def sniff(head: bytes) -> bool:
    """mlir-air's profile banner, its section titles, or the llama inference script's own lines."""
    text = head_text(head)
    return any(s in text for s in ("PROFILING REPORT", "END-TO-END DATAFLOW", "Fine-Grained NPU Breakdown",
                                   "NPU XRT Call Breakdown", "LLAMA Inference: prompt_len=",
                                   "Preparing runtime (one-time init"))


def read(path: Path, names: NameTable) -> ImportResult:
    source, batches, skipped, warnings = import_mlir_air(path, names)
    return ImportResult(source, batches, sum(skipped.values()), warnings, names, skipped_by=dict(skipped))


FORMAT = register(TraceFormat("mlir-air", "mlir-air profile log", sniff, read, priority=25))
