"""Chrome Trace Event JSON export (opens in Perfetto / chrome://tracing), streamed to disk.

Layout: one process per event track (CUDA stream / rank; 0 for a plain loop). Inside it, kernels are
complete ("X") events on one thread per decoder layer (plus "outside layers") or one per phase;
steps are slices on their own "steps" thread; tokens/s is a counter ("C") track per phase; process
and device gauges become counter tracks too; thread/process names are metadata ("M") events,
emitted the first time a track is used so nothing has to be held in memory. Timestamps are µs
with three decimals, formatted from integer ns so no precision is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import (
    NO_LAYER,
    OP_CLASSES,
    PHASES,
    CounterSample,
    EventBatch,
    Item,
    Marker,
    NameTable,
    SourceInfo,
)
from llmtop.traces.open import TracePaths, open_trace_file
from llmtop.traces.recording import LLMTOP_VERSION

TRACK_BY = ("layer", "phase")
_STEPS_TID = 1
_OUTSIDE_TID = 2  # kernels outside decoder layers (embedding, final norm, lm_head, sampling)
_LAYER_TID0 = 10  # layer i -> tid 10 + i
_PHASE_TID0 = 3  # phase p -> tid 3 + p
_COUNTER_PID = 1_000_000  # process/device gauges live in their own process group


def _us(ns: int) -> str:
    """Integer ns -> µs string with exactly three decimals (exact; negative-safe)."""
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1000}.{ns % 1000:03d}"


class _Out:
    def __init__(self, f: IO[str]) -> None:
        self.f = f
        self.first = True
        self.counts: dict[str, int] = {}

    def emit(self, ph: str, body: str) -> None:
        self.f.write(body if self.first else ",\n" + body)
        self.first = False
        self.counts[ph] = self.counts.get(ph, 0) + 1

    def meta(self, name: str, pid: int, tid: int | None, args: dict[str, Any]) -> None:
        tid_part = f',"tid":{tid}' if tid is not None else ""
        self.emit("M", f'{{"ph":"M","name":"{name}","pid":{pid}{tid_part},"args":{json.dumps(args)}}}')


def export_chrome(items: Iterable[Item | tuple[int, Item]], source: SourceInfo,
                  names: NameTable | list[str] | None, out_path: str | Path, *,
                  track_by: str = "layer") -> dict[str, int]:
    """Write `items` (EventBatch, CounterSample, Marker, or (t_ns, item) records) as Chrome JSON.

    names: the names known before the first batch (None when the batches carry all of them).
    Returns the number of events written per phase type ("X", "C", "M", "i").
    """
    if track_by not in TRACK_BY:
        raise LlmtopError(f"unknown track grouping {track_by!r} (choose from {', '.join(TRACK_BY)})")
    table = names if isinstance(names, NameTable) else NameTable(list(names or []))
    out_path = Path(out_path)
    try:
        f = open(out_path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise LlmtopError(f"cannot write {out_path}: {e.strerror or e}") from None
    with f:
        other = {"source": source.to_dict(), "llmtop_version": LLMTOP_VERSION,
                 "clock": source.timing or "ns", "track_by": track_by}
        f.write('{"displayTimeUnit":"ns","otherData":' + json.dumps(other) + ',"traceEvents":[\n')
        out = _Out(f)
        ex = _Exporter(out, table, source, track_by)
        for item in items:
            if isinstance(item, tuple):
                t, item = item
                if isinstance(item, (CounterSample, Marker)) and item.t_ns == 0:
                    item.t_ns = t
            if isinstance(item, EventBatch):
                ex.batch(item)
            elif isinstance(item, CounterSample):
                ex.counter(item)
            elif isinstance(item, Marker):
                ex.marker(item)
        f.write("\n]}\n")
    return out.counts


class _Exporter:
    def __init__(self, out: _Out, names: NameTable, source: SourceInfo, track_by: str) -> None:
        self.out = out
        self.names = names
        self.source = source
        self.track_by = track_by
        self.pids: set[int] = set()
        self.tids: set[tuple[int, int]] = set()
        self.name_json: list[str] = []  # cached json-escaped kernel names, by id

    def _pid(self, track: int) -> int:
        pid = track + 1
        if pid not in self.pids:
            self.pids.add(pid)
            s = self.source
            label = " ".join(x for x in (s.model, s.backend, s.device) if x) or "llmtop"
            self.out.meta("process_name", pid, None, {"name": f"{label} (track {track})" if track else label})
            self.out.meta("process_sort_index", pid, None, {"sort_index": pid})
        return pid

    def _tid(self, pid: int, tid: int, label: str) -> int:
        if (pid, tid) not in self.tids:
            self.tids.add((pid, tid))
            self.out.meta("thread_name", pid, tid, {"name": label})
            self.out.meta("thread_sort_index", pid, tid, {"sort_index": tid})
        return tid

    def _kname(self, i: int) -> str:
        while len(self.name_json) <= i:
            j = len(self.name_json)
            self.name_json.append(json.dumps(self.names[j]) if j < len(self.names) else f'"kernel#{j}"')
        return self.name_json[i]

    def batch(self, b: EventBatch) -> None:
        if b.new_names:
            self.names.extend(b.names_base, b.new_names)
        self._steps(b.steps)
        self._kernels(b.kernels)

    def _steps(self, steps: np.ndarray) -> None:
        emit = self.out.emit
        for s in steps.tolist():
            phase, track, step, tokens, batch, ctx, start, dur, kernel_ns, busy, idle = s
            pid = self._pid(track)
            tid = self._tid(pid, _STEPS_TID, "steps")
            pname = PHASES[phase] if phase < len(PHASES) else f"phase{phase}"
            kms = f"{kernel_ns / 1e6:.3f}" if kernel_ns >= 0 else "null"
            if busy > 0:  # a step sampled under CUPTI: what the GPU did inside it
                kms += f',"gpu_busy_ms":{busy / 1e6:.3f},"gpu_idle_ms":{idle / 1e6:.3f}'
            emit("X", f'{{"ph":"X","name":"{pname} step {step}","cat":"step","pid":{pid},"tid":{tid},'
                      f'"ts":{_us(start)},"dur":{_us(dur)},"args":{{"step":{step},"tokens":{tokens},'
                      f'"batch":{batch},"ctx":{ctx},"kernel_ms":{kms}}}}}')
            if dur > 0:
                # Tokens produced per second of this step, as a counter sampled at the step's end.
                rate = tokens * 1e9 / dur
                emit("C", f'{{"ph":"C","name":"tok/s","pid":{pid},"ts":{_us(start + dur)},'
                          f'"args":{{"{pname}":{rate:.3f}}}}}')

    def _kernels(self, k: np.ndarray) -> None:
        if not len(k):
            return
        emit = self.out.emit
        by_layer = self.track_by == "layer"
        cols = [k[c].tolist() for c in ("name", "op_class", "phase", "layer", "track", "step", "ctx",
                                         "start_ns", "dur_ns", "m", "n", "k")]
        for name, opc, phase, layer, track, step, ctx, start, dur, m, n, kk in zip(*cols, strict=True):
            pid = self._pid(track)
            if by_layer:
                if layer == NO_LAYER:
                    tid = self._tid(pid, _OUTSIDE_TID, "outside layers")
                else:
                    tid = _LAYER_TID0 + layer
                    if (pid, tid) not in self.tids:
                        self._tid(pid, tid, f"layer {layer}")
            else:
                tid = _PHASE_TID0 + phase
                if (pid, tid) not in self.tids:
                    self._tid(pid, tid, f"{PHASES[phase] if phase < len(PHASES) else phase} kernels")
            cat = OP_CLASSES[opc] if opc < len(OP_CLASSES) else "other"
            shape = f',"m":{m},"n":{n},"k":{kk}' if m or n or kk else ""
            emit("X", f'{{"ph":"X","name":{self._kname(name)},"cat":"{cat}","pid":{pid},"tid":{tid},'
                      f'"ts":{_us(start)},"dur":{_us(dur)},"args":{{"layer":{layer},"step":{step},'
                      f'"ctx":{ctx}{shape}}}}}')

    def counter(self, c: CounterSample) -> None:
        if _COUNTER_PID not in self.pids:
            self.pids.add(_COUNTER_PID)
            self.out.meta("process_name", _COUNTER_PID, None, {"name": "process & devices"})
        for key, v in c.values.items():
            self.out.emit("C", f'{{"ph":"C","name":{json.dumps(c.source + "." + key)},"pid":{_COUNTER_PID},'
                               f'"ts":{_us(c.t_ns)},"args":{{"value":{_num(v)}}}}}')

    def marker(self, mk: Marker) -> None:
        pid = self._pid(0)
        self.out.emit("i", f'{{"ph":"i","s":"g","name":{json.dumps(mk.text)},"pid":{pid},"tid":{_STEPS_TID},'
                           f'"ts":{_us(mk.t_ns)}}}')


def _num(v: float) -> str:
    if v != v or v in (float("inf"), float("-inf")):
        return "null"  # JSON has no NaN/inf
    return repr(float(v))


def export_file(in_path: TracePaths, out_path: str | Path, *,
                track_by: str = "layer") -> tuple[dict[str, int], list[str]]:
    """`llmtop export FILE -o OUT.json`: a llmtop recording or any importable trace -> Chrome JSON.

    Returns (events written per "ph", warnings such as a truncated recording tail).
    """
    tf = open_trace_file(in_path)
    counts = export_chrome(tf.records, tf.source, tf.names, out_path, track_by=track_by)
    return counts, tf.warnings
