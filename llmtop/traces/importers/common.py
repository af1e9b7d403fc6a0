"""Shared assembly: kernel columns + step ranges -> KERNEL_DTYPE / STEP_DTYPE rows -> EventBatches.

`build_batches` first leaves out (and counts, in `info["skipped"]` with one line each in
`info["warnings"]`) the rows no real trace has: a negative duration, a time beyond ±NS_LIMIT, a duration
longer than MAX_TRACE_SPAN_NS, or a start more than MAX_TRACE_SPAN_NS away from the median start of the
trace (an absurd timestamp: one corrupt digit in an otherwise sane trace would otherwise stretch every
time axis over decades).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from llmtop.events import (
    DECODE,
    EMPTY_STEPS,
    KERNEL_DTYPE,
    NO_LAYER,
    NS_LIMIT,
    OP_CLASS_ID,
    STEP_DTYPE,
    EventBatch,
    NameTable,
)
from llmtop.traces.importers.mapping import Intervals, StepFacts, op_class_of

BATCH_ROWS = 65536
# No real trace spans more than this on either side of its median start, and no kernel or step lasts
# longer: rows beyond it are corrupt (one damaged digit), not slow.
MAX_TRACE_SPAN_NS = 86_400 * 10**9  # one day
_TIME_REASONS = {
    "negative_duration": "negative durations (end before start)",
    "time_out_of_range": "times beyond the int64 ns range",
    "absurd_duration": "durations longer than a day",
    "absurd_timestamp": "start times more than a day away from the rest of the trace",
}


@dataclass
class StepRange:
    start_ns: int
    end_ns: int
    host: int  # process / host key the range was recorded on (launches on the same host belong to it)
    facts: StepFacts


@dataclass
class KernelColumns:
    """Kernels as parallel arrays; names index into `names` (a plain list, interned at emit time)."""

    names: list[str]
    name: np.ndarray  # int64 index into names
    start: np.ndarray  # int64 ns
    dur: np.ndarray  # int64 ns
    track: np.ndarray  # int64
    launch: np.ndarray  # int64 ns: host-side time used to place the kernel in steps/layers; -1 unknown
    host: np.ndarray  # int64 host key of the launch, -1 unknown
    layer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # NO_LAYER when unknown
    # op class id per kernel (mapping.op_class_for / op_class_column: from the launching CPU op and the
    # enclosing annotation); empty or -1 = from the kernel name alone (mapping.op_class_of). Each name
    # then gets the class of most of its time (build_batches)
    op_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def assign_steps(k: KernelColumns, steps: list[StepRange]) -> np.ndarray:
    """Row index into `steps` per kernel (-1 = outside every step).

    A kernel belongs to the step whose host range contains its launch; kernels with no known launch
    fall back to their own start time against the step ranges stretched to the next step's start
    (GPU work trails the host loop that issued it).
    """
    out = np.full(len(k.start), -1, dtype=np.int64)
    if not steps or not len(out):
        return out
    s_start = np.array([s.start_ns for s in steps], dtype=np.int64)
    s_end = np.array([s.end_ns for s in steps], dtype=np.int64)
    s_host = np.array([s.host for s in steps], dtype=np.int64)
    idx = np.arange(len(steps), dtype=np.int64)
    known = k.launch >= 0
    for h in np.unique(s_host):
        sel = s_host == h
        iv = Intervals(s_start[sel], s_end[sel], idx[sel])
        m = known & ((k.host == h) | (k.host < 0))
        if m.any():
            out[m] = iv.lookup(k.launch[m])
    unknown = ~known
    if unknown.any():
        order = np.argsort(s_start, kind="stable")
        st = s_start[order]
        stretched_end = np.append(st[1:], np.iinfo(np.int64).max)
        iv = Intervals(st, np.maximum(stretched_end, s_end[order]), idx[order])
        out[unknown] = iv.lookup(k.start[unknown])
    return out


def infer_layers(
    name: np.ndarray, step: np.ndarray, track: np.ndarray, op_class: np.ndarray
) -> tuple[np.ndarray, int]:
    """Layer per kernel from the repeating kernel sequence inside each step, when the trace names none.

    In a step, the decoder layers run the same kernels L times: L is the repeat count shared by the
    most kernel names. The earliest kernel whose count is a multiple kL of it marks layer starts (every
    k-th occurrence); the last layer ends at the last kernel with such a count, so the lm_head and
    sampling after it stay NO_LAYER. Returns (layers, L) with L = 0 when no pattern was found.
    """
    layers = np.full(len(name), NO_LAYER, dtype=np.int64)
    best_l = 0
    for s in np.unique(step[step >= 0]):
        rows = np.flatnonzero(step == s)
        main = np.bincount(track[rows]).argmax()
        rows = rows[track[rows] == main]
        nm = name[rows]
        uniq, first, counts = np.unique(nm, return_index=True, return_counts=True)
        rep = counts[counts >= 2]
        if len(rep) < 3:
            continue
        vals, freq = np.unique(rep, return_counts=True)
        period = int(vals[np.argmax(freq)])
        if freq.max() < 3:
            continue
        multiple = (counts % period == 0) & (counts >= period)
        cls_of = op_class[rows][first]
        if not (cls_of[multiple] == OP_CLASS_ID["attention"]).any():
            continue  # a repeating pattern without attention is not a stack of decoder layers
        marker_i = np.flatnonzero(multiple)[np.argmin(first[multiple])]
        k_mul = int(counts[marker_i] // period)
        pos = np.flatnonzero(nm == uniq[marker_i])[::k_mul]
        in_pattern = np.isin(nm, uniq[multiple])
        last = int(np.flatnonzero(in_pattern)[-1])
        bounds = np.append(pos, last + 1)
        for li in range(period):
            layers[rows[bounds[li] : bounds[li + 1]]] = li
        best_l = max(best_l, period)
    return layers, best_l


def sane_times(
    k: KernelColumns, steps: list[StepRange]
) -> tuple[KernelColumns, list[StepRange], Counter[str]]:
    """The kernels and steps whose times a real trace can have; the rest counted by reason (_TIME_REASONS)."""
    skipped: Counter[str] = Counter()
    start, dur = k.start.astype(np.int64, copy=False), k.dur.astype(np.int64, copy=False)
    bad = np.zeros(len(start), dtype=np.int8)  # 0 kept; else index into reasons + 1
    reasons = list(_TIME_REASONS)
    out_of_range = (start <= -NS_LIMIT) | (start >= NS_LIMIT) | (dur >= NS_LIMIT)
    bad[out_of_range] = 2
    bad[(bad == 0) & (dur < 0)] = 1
    bad[(bad == 0) & (dur > MAX_TRACE_SPAN_NS)] = 3
    s_start = [st.start_ns for st in steps]
    s_end = [st.end_ns for st in steps]
    ok = start[bad == 0]
    if len(ok):
        mid = int(np.partition(ok, len(ok) // 2)[len(ok) // 2])
    else:
        ok_steps = sorted(a for a, b in zip(s_start, s_end, strict=True)
                          if isinstance(a, int) and -NS_LIMIT < a < NS_LIMIT)
        mid = ok_steps[len(ok_steps) // 2] if ok_steps else 0
    far = (bad == 0) & ((start < mid - MAX_TRACE_SPAN_NS) | (start > mid + MAX_TRACE_SPAN_NS))
    bad[far] = 4
    for i, r in enumerate(reasons):
        c = int(np.count_nonzero(bad == i + 1))
        if c:
            skipped[r] += c
    if bad.any():
        keep = bad == 0
        n = len(start)

        def cut(a: np.ndarray) -> np.ndarray:
            return a[keep] if len(a) == n else a

        k = replace(k, name=cut(k.name), start=cut(k.start), dur=cut(k.dur), track=cut(k.track),
                    launch=cut(k.launch), host=cut(k.host), layer=cut(k.layer), op_class=cut(k.op_class))
    kept_steps = []
    for st, a, b in zip(steps, s_start, s_end, strict=True):
        if not (-NS_LIMIT < a < NS_LIMIT and -NS_LIMIT < b < NS_LIMIT):
            skipped["time_out_of_range"] += 1
        elif b < a:
            skipped["negative_duration"] += 1
        elif b - a > MAX_TRACE_SPAN_NS:
            skipped["absurd_duration"] += 1
        elif abs(a - mid) > MAX_TRACE_SPAN_NS:
            skipped["absurd_timestamp"] += 1
        else:
            kept_steps.append(st)
    return k, kept_steps, skipped


def time_warnings(skipped: Counter[str] | dict[str, int], what: str = "kernel/step rows") -> list[str]:
    """One line per time reason in `skipped` (what `sane_times` counted)."""
    return [f"left out {n} {what} with {_TIME_REASONS[r]} ({r})"
            for r, n in skipped.items() if r in _TIME_REASONS and n]


def build_batches(
    k: KernelColumns,
    steps: list[StepRange],
    names: NameTable,
    *,
    default_phase: int = DECODE,
    batch_rows: int = BATCH_ROWS,
) -> tuple[list[EventBatch], dict]:
    """Rows for every kernel and step, kernels in start order, each step in the batch of its last kernel.

    Rows with impossible times are left out first (`sane_times`): info["skipped"] counts them by reason
    and info["warnings"] says so in one line per reason; the importer adds both to its own."""
    k, steps, time_skipped = sane_times(k, steps)
    n = len(k.start)
    order = np.argsort(k.start, kind="stable")
    steps_sorted = sorted(steps, key=lambda s: s.start_ns)
    k_step = assign_steps(k, steps_sorted)[order]
    rows = np.zeros(n, dtype=KERNEL_DTYPE)
    local_ids = k.name[order]
    uniq_local = np.unique(local_ids)
    gid = np.zeros(max(len(k.names), 1), dtype=np.int64)
    cls = np.zeros(max(len(k.names), 1), dtype=np.int64)
    for li in uniq_local:
        gid[li] = names.intern(k.names[li])
        cls[li] = op_class_of(k.names[li])
    rows["name"] = gid[local_ids]
    rows["op_class"] = cls[local_ids]
    if len(k.op_class) == n and n:
        # per launch (launcher, annotation, name), then one class per name: the class holding most of its
        # time (the aggregator keeps one class per name, layer and phase; a table row reads one class)
        given = k.op_class[order]
        per_launch = np.where(given >= 0, given, rows["op_class"]).astype(np.int64)
        by_time = np.zeros((len(gid), len(OP_CLASS_ID)))
        np.add.at(by_time, (local_ids, per_launch), k.dur[order] + 1.0)
        rows["op_class"] = by_time.argmax(axis=1)[local_ids]
    rows["start_ns"] = k.start[order]
    rows["dur_ns"] = k.dur[order]
    rows["track"] = k.track[order]
    layer = k.layer[order] if len(k.layer) == n else np.full(n, NO_LAYER, dtype=np.int64)
    inferred_l = 0
    if n and not (layer != NO_LAYER).any() and steps_sorted:
        layer, inferred_l = infer_layers(gid[local_ids], k_step, k.track[order], rows["op_class"])
    rows["layer"] = layer

    st = np.zeros(len(steps_sorted), dtype=STEP_DTYPE)
    for i, s in enumerate(steps_sorted):
        f = s.facts
        phase = f.phase if f.phase is not None else default_phase
        batch = f.batch if f.batch is not None else 1
        tokens = f.tokens if f.tokens is not None else (batch if phase == DECODE and f.batch else 0)
        st[i] = (
            phase,
            0,
            f.index if f.index is not None else i,
            tokens,
            batch,
            f.ctx or 0,
            s.start_ns,
            s.end_ns - s.start_ns,
            0,
            0,
            0,
        )
    has = k_step >= 0
    if len(st):
        sidx = np.where(has, k_step, 0)
        rows["step"] = np.where(has, st["step"][sidx], -1)
        rows["phase"] = np.where(has, st["phase"][sidx], default_phase)
        rows["batch"] = np.where(has, st["batch"][sidx], 0)
        rows["ctx"] = np.where(has, st["ctx"][sidx], 0)
        kern_ns = np.bincount(k_step[has], weights=rows["dur_ns"][has], minlength=len(st))
        st["kernel_ns"] = np.rint(kern_ns).astype(np.int64)
        ends = rows["start_ns"] + rows["dur_ns"]
        for i in np.unique(k_step[has]):
            m = k_step == i
            lo = min(int(st["start_ns"][i]), int(rows["start_ns"][m].min()))
            hi = max(int(st["start_ns"][i] + st["dur_ns"][i]), int(ends[m].max()))
            st["start_ns"][i], st["dur_ns"][i] = lo, hi - lo
            st["track"][i] = np.bincount(rows["track"][m]).argmax()
    else:
        rows["step"] = -1
        rows["phase"] = default_phase
    # Each step rides with the batch holding its last kernel (steps without kernels go first).
    last_pos = np.full(len(st), -1, dtype=np.int64)
    if has.any():
        pos = np.arange(n)
        np.maximum.at(last_pos, k_step[has], pos[has])
    batches: list[EventBatch] = []
    n_chunks = max(1, -(-n // batch_rows))
    for c in range(n_chunks):
        lo, hi = c * batch_rows, min(n, (c + 1) * batch_rows)
        sel = (last_pos >= lo) & (last_pos < hi) if c else (last_pos < hi)
        # every name is interned before the first batch leaves, so the first batch carries them all
        base, new = (0, list(names.names)) if c == 0 else (len(names), [])
        batches.append(
            EventBatch(
                kernels=rows[lo:hi], steps=st[sel] if len(st) else EMPTY_STEPS, names_base=base, new_names=new
            )
        )
    info = {
        "kernels": n,
        "steps": len(st),
        "inferred_layers": inferred_l,
        "kernels_outside_steps": int((~has).sum()) if len(st) else n,
        "skipped": dict(time_skipped),
        "warnings": time_warnings(time_skipped),
    }
    return batches, info


def iter_batches(batches: list[EventBatch]) -> Iterator[EventBatch]:
    yield from batches
