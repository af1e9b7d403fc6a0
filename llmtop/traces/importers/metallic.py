"""metallic (Rust Metal engine, crate metallic_instrumentation) JSONL -> EventBatches.

One event per line: {"timestamp": RFC3339, "span_id", "parent_span_id", "span_name",
"event": {"type": T, "data": {...}}} (serde tag="type", content="data").
- GpuOpCompleted{op_name, backend, duration_us}: one kernel row each, named by the op path's last segment
  (`.../block_3/.../metallic::kernels::rope::RoPEOp` -> the op type), layer from `block_N`, phase from
  "Prompt Processing" (prefill) vs "Generation Loop" (decode). `cb_wait` (host waits) and `cb_gpu`
  (whole command buffers) are totals, not kernels: summed into extra.
- InternalKernelCompleted{parent_op_name, internal_kernel_name, duration_us}: `iteration_total` gives the
  decode steps (the event ends at its timestamp); prompt processing is one prefill step.
- Caveat (from metallic's source): GpuOpCompleted charges a whole command buffer's GPU time to one op and
  about 1 µs to the others, so per-op times are skewed: a warning says so.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, NS_LIMIT, PREFILL, EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import StepFacts, layer_of
from llmtop.traces.registry import ImportResult, TextLines, TraceFormat, head_text, register

_BLOCK = re.compile(r"block_(\d+)")
_REASONS = {
    "malformed_record": "lines that are not metallic events (not JSON, a field missing or of the wrong type)",
    "negative_duration": "events with a negative duration",
    "time_out_of_range": "events with a time or duration no clock has (not finite, or beyond the int64 ns "
                         "range)",
    "too_deeply_nested": "lines nested deeper than the JSON decoder goes",
}


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _dur_ns(v: object) -> int:
    """duration_us (an int, or a float) -> ns; _Skip for what no duration is."""
    if type(v) is int:
        ns = v * 1000
    elif type(v) is float:
        if not math.isfinite(v):
            raise _Skip("time_out_of_range")
        ns = int(v * 1000) if abs(v) < NS_LIMIT / 1000 else NS_LIMIT
    else:
        raise _Skip("malformed_record")
    if ns < 0:
        raise _Skip("negative_duration")
    if ns >= NS_LIMIT:
        raise _Skip("time_out_of_range")
    return ns


def _ts_ns(s: str) -> int:
    """RFC3339 with up to ns fraction -> int ns since the epoch, without float rounding."""
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        raise ValueError(s)
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = datetime.fromisoformat(m.group(1) + tz)
    ns = int(base.timestamp()) * 1_000_000_000 + int(((m.group(2) or "") + "000000000")[:9])
    if not -NS_LIMIT < ns < NS_LIMIT:  # year 1 or 9999: no clock the trace came from
        raise _Skip("time_out_of_range")
    return ns


def import_metallic(
    path: Path, names: NameTable
) -> tuple[SourceInfo, list[EventBatch], Counter[str], list[str]]:
    local: list[str] = []
    lids: dict[str, int] = {}
    k_name: list[int] = []
    k_start: list[int] = []
    k_dur: list[int] = []
    k_layer: list[int] = []
    k_phase: list[int] = []
    iters: list[tuple[int, int]] = []
    totals: dict[str, int] = {"cb_wait_ns": 0, "cb_gpu_ns": 0}
    counts: dict[str, int] = {}
    backends: set[str] = set()
    skipped: Counter[str] = Counter()
    records = 0
    lines = TextLines(path)
    for line in lines:
        if not line.strip():
            continue
        records += 1
        try:
            rec = json.loads(line)
            ev = rec["event"]
            typ, data = ev["type"], ev.get("data") or {}
            counts[typ] = counts.get(typ, 0) + 1
            if typ == "GpuOpCompleted":
                op = data["op_name"]
                if type(op) is not str:
                    raise TypeError
                dur_ns = _dur_ns(data["duration_us"])
                end = _ts_ns(rec["timestamp"])
                leaf = op.rsplit("/", 1)[-1]
                if leaf in ("cb_wait", "cb_gpu"):
                    totals[f"{leaf}_ns"] += dur_ns
                    continue
                if isinstance(data.get("backend"), str):
                    backends.add(data["backend"])
                j = lids.get(leaf)
                if j is None:
                    j = lids[leaf] = len(local)
                    local.append(leaf)
                bm = _BLOCK.search(op)
                k_name.append(j)
                k_start.append(end - dur_ns)
                k_dur.append(dur_ns)
                k_layer.append(int(bm.group(1)) if bm else layer_of(leaf))
                k_phase.append(PREFILL if op.startswith("Prompt Processing") else DECODE)
            elif typ == "InternalKernelCompleted" and data["internal_kernel_name"] == "iteration_total":
                d = _dur_ns(data["duration_us"])
                e = _ts_ns(rec["timestamp"])
                iters.append((e - d, e))
        except _Skip as s:
            skipped[s.reason] += 1
        except RecursionError:
            skipped["too_deeply_nested"] += 1
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            skipped["malformed_record"] += 1
    if lines.error:
        skipped["truncated_record"] += 1
    if not k_name:
        if records and sum(skipped.values()) == records:
            raise LlmtopError(f"{path}: no line is a metallic JSONL event")
        raise LlmtopError(f"{path}: metallic log without GpuOpCompleted events: nothing to import")
    start = np.array(k_start, dtype=np.int64)
    phase = np.array(k_phase)
    steps: list[StepRange] = []
    pre = phase == PREFILL
    if pre.any():
        lo, hi = int(start[pre].min()), int((start[pre] + np.array(k_dur)[pre]).max())
        steps.append(StepRange(lo, hi, 0, StepFacts("metallic", phase=PREFILL, batch=1)))
    for s, e in sorted(iters):
        steps.append(StepRange(s, e, 0, StepFacts("metallic", phase=DECODE, tokens=1, batch=1)))
    n = len(k_name)
    kc = KernelColumns(
        local,
        np.array(k_name, dtype=np.int64),
        start,
        np.array(k_dur, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        start.copy(),
        np.zeros(n, dtype=np.int64),
        np.array(k_layer, dtype=np.int64),
    )
    warnings = [
        "metallic's GpuOpCompleted charges a whole command buffer's GPU time to one op and ~1 µs to the "
        "others: per-op times are skewed, totals per command buffer are right"
    ]
    for reason, what in _REASONS.items():
        if skipped.get(reason):
            warnings.append(f"left out {skipped[reason]} of {records} {what} ({reason})")
    if lines.error:
        warnings.append(f"{path.name}: {lines.error} (truncated_record)")
    batches, info = build_batches(kc, steps, names)
    skipped.update(info["skipped"])
    warnings.extend(info["warnings"])
    source = SourceInfo(
        kind="import",
        backend="metallic",
        device="Apple GPU (Metal)" + (f" [{', '.join(sorted(backends))}]" if backends else ""),
        model=path.name,
        timing="Metal command buffer GPU times",
        n_layers=len(set(k_layer) - {-1}),
        extra={
            "ranks": [0],
            "streams": [0],
            "skipped": sum(skipped.values()),
            "warnings": warnings,
            "records": records,
            "event_counts": counts,
            **totals,
            "kernels_outside_steps": info["kernels_outside_steps"],
        },
    )
    return source, batches, skipped, warnings


# -- registration ----------------------------------------------------------------------------
def sniff(head: bytes) -> bool:
    """JSON lines whose objects carry an "event" (its "type" on the first line), not a Chrome trace."""
    text = head_text(head)
    if not text.startswith("{"):
        return False
    first_line = text.split("\n", 1)[0]
    if '"event"' in first_line and '"type"' in first_line:
        return True
    if '"traceEvents"' in text or '"ph"' in text or '"schemaVersion"' in text:
        return False  # Chrome / Kineto trace keys
    return '"event"' in text[:4096]


def read(path: Path, names: NameTable) -> ImportResult:
    source, batches, skipped, warnings = import_metallic(path, names)
    return ImportResult(source, batches, sum(skipped.values()), warnings, names, skipped_by=dict(skipped))


FORMAT = register(TraceFormat("metallic", "metallic JSONL", sniff, read, priority=10))
