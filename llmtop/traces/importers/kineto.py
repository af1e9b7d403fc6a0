"""Kineto / torch.profiler / Chrome-trace JSON (plain or gzip, Object or Array form) -> EventBatches.

Reading (json_stream.py): the document is decompressed whole and decoded with msgspec in chunks of a
few MB into typed structs holding only the fields used here (ph, cat, name, pid, tid, ts, dur, id and
args.correlation/device/stream; everything else is skipped in C), so the live objects stay a few MB
while the compact int64 columns grow. Any key order, any whitespace; a truncated or corrupt document
imports what came before it with a warning. Floats arrive as their decimal text (`float_hook=str`)
and µs-with-ns-fraction timestamps become int ns without float rounding.

Mapping (see mapping.py for the name rules):
- device work, by Kineto category: kernels (`kernel`, legacy `Kernel`, MTIA `mtia_ccp_events`),
  copies (`gpu_memcpy`, `Memcpy`, `mlu_memcpy`, `gcu_memcpy`) and fills (`gpu_memset`, `Memset`,
  `mlu_memset`, `gcu_memset`): CUDA, ROCm (same categories, hip* runtime names), XPU, MTIA and the
  PrivateUse1 backends that reuse them. Track = (rank, device, stream). CUDA-graph replays give one
  row per kernel even though they share a launch. An `X` event in any other category that looks like
  device work (its name says gpu/kernel/device/mtia/hpu/xpu/..., or it carries args.stream) is left
  out, counted under `skipped` and named in a warning — never a silent "CPU-only".
- launch: the runtime event (`cuda_runtime`, `cuda_driver`, `Runtime`, ROCm's `hip_runtime`,
  `mtia_runtime`, `xpu_runtime`, `xpu_driver`, `hpu_op`, `privateuse1_runtime`/`_driver`, ...) with the
  kernel's `args.correlation` (or its `ac2g` flow); its host time places the kernel in steps and
  CPU-side layer ranges. The innermost `cpu_op` around the launch on the same thread is the kernel's
  launcher and the innermost user annotation / `nn.Module` range around it (else the
  `gpu_user_annotation` around the kernel) its context; both go to mapping.op_class_for (sorted
  intervals and binary lifting, not a scan per kernel).
- steps: user annotations understood by `parse_step` (outermost wins; a range holding several step ranges
  is a container and its children are the steps); else annotations naming `forward`; else top-level
  `nn.Module:` python_function calls; else outermost annotations that launch kernels.
- layers: `gpu_user_annotation` ranges on the kernel's stream, CPU ranges (`nn.Module: XDecoderLayer_N`,
  record_function names with layer tokens) around the launch, layer tokens in the kernel name, and
  finally the repeating-kernel inference in common.infer_layers.
- CPU-only traces (no device events): the kernels are the outermost `cpu_op`s of each thread (the calls the
  model code made: aten::linear, not the aten::addmm/as_strided inside it; leaf ops would hand a matmul's
  time to its tiny view children), so nested ops are never counted twice and per-thread kernel time never
  exceeds the wall time it covers.
"""

from __future__ import annotations

import contextlib
import re
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, NS_LIMIT, OP_CLASS_ID, EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import (
    Intervals,
    StepFacts,
    TimeRangeError,
    layer_of,
    merge_facts,
    op_class_for,
    parse_step,
    us_to_ns,
)
from llmtop.traces.json_stream import WalkStatus, read_bytes, walk
from llmtop.traces.registry import ImportResult, TraceFormat, head_text, register

# Kineto's ActivityType names (libkineto/include/ActivityType.h) -> 0 kernel, 1 copy, 2 fill
_DEVICE_CATS = {
    "kernel": 0, "Kernel": 0, "mtia_ccp_events": 0,
    "gpu_memcpy": 1, "Memcpy": 1, "mlu_memcpy": 1, "gcu_memcpy": 1, "GCU_MEMCPY": 1,
    "gpu_memset": 2, "Memset": 2, "mlu_memset": 2, "gcu_memset": 2, "GCU_MEMSET": 2,
}  # fmt: skip
# host-side launches that carry the correlation id of the device work they start
_RUNTIME_CATS = {
    "cuda_runtime", "Runtime", "cuda_driver", "hip_runtime", "hip_driver", "mtia_runtime", "xpu_runtime",
    "xpu_driver", "hpu_op",
    "privateuse1_runtime", "privateuse1_driver", "mlu_runtime", "gcu_runtime", "gcu_driver", "glow_runtime",
}  # fmt: skip
_ANNOT_CATS = {"user_annotation", "python_function", "gpu_user_annotation", "mlu_user_annotation"}
_CPU_OP_CATS = {"cpu_op", "Operator"}
# host-side or bookkeeping categories that are understood and not needed
_HOST_CATS = {
    "cuda_sync", "cuda_event", "xpu_sync", "mlu_notifier", "overhead", "Trace", "cpu_instant_event",
    "external_correlation", "cuda_profiler_range", "mlu_profiler_range", "gpu_pm_counter", "mtia_counters",
    "collective_comm", "fwdbwd", "ac2g", "mtia_workloadd", "xpu_scope_profiler",
}  # fmt: skip
# Chrome Trace Event Format phases: an event with any other phase is malformed. Kineto writes the
# categories it reads (device work, launches, cpu ops, annotations) as complete events ("X") only.
_PHASES = frozenset("BEXiICbneSTpFstfPONDMVvRc()")
_X_ONLY = frozenset(_DEVICE_CATS) | _RUNTIME_CATS | _ANNOT_CATS | _CPU_OP_CATS
_DEVICE_LOOKING = re.compile(
    r"gpu|kernel|device|mem(?:cpy|set)|mtia|hpu|xpu|npu|mlu|gcu|tpu|dma|ccp|accel|cuda|hip|rocm|stream", re.I
)
_TOP_KEYS = ("distributedInfo", "deviceProperties", "host_name")
_PENDING_RANK = -(1 << 40)  # rows of the file being read, before its distributedInfo is known


class _Args(msgspec.Struct, gc=False):
    correlation: Any = None
    device: Any = None
    stream: Any = None


class _Event(msgspec.Struct, gc=False):
    """The fields of a trace event the importer reads; msgspec skips every other key in C."""

    ph: Any = None
    cat: Any = None
    name: Any = None
    pid: Any = None
    tid: Any = None
    ts: Any = None
    dur: Any = None
    id: Any = None
    args: _Args | str | int | float | bool | list | None = None


# ts, dur (int64 ns), pid ids, tid ids, name ids of a list of events
_Columns = tuple[np.ndarray, np.ndarray, list[int], list[int], list[int]]
# one element of traceEvents: any JSON value (non-objects are counted and skipped)
_Item = _Event | str | int | float | bool | list | None


class _NegativeDuration(ValueError):
    pass


def _on_streams(evs: list[_Event]) -> bool:
    """Whether any of these events names a device stream (HTA's test for device work)."""
    return any(type(e.args) is _Args and e.args.stream is not None for e in evs)


_TIMES = re.compile(r"(?:-?[0-9]{1,16}\.[0-9]{3},)*")  # 'µs.nnn,' repeated (at most 19 digits)


def _times(vals: list[Any]) -> np.ndarray | None:
    """Kineto's 'µs.nnn' texts -> int64 ns all at once (one join, one regex check, one C parse of the
    text with the dots taken out); None when any value needs `_ns`'s careful path."""
    try:
        text = ",".join(vals) + ","
    except TypeError:  # an int, a null, a nested value
        return None
    if not vals:
        return np.zeros(0, dtype=np.int64)
    if _TIMES.fullmatch(text) is None:
        return None
    a = np.fromstring(text.replace(".", ""), dtype=np.int64, sep=",")  # saturates on overflow
    if ((a >= NS_LIMIT) | (a <= -NS_LIMIT)).any():
        return None  # beyond the int64 ns columns (a corrupt digit run): `_ns` says which
    return a


def _ns(v: Any) -> int:
    """us_to_ns with a fast path for Kineto's usual 'µs.nnn' text."""
    if type(v) is str and v[-4:-3] == ".":
        try:
            r = int(v[:-4] + v[-3:])
        except ValueError:
            return us_to_ns(v)
        if -NS_LIMIT < r < NS_LIMIT:
            return r
    return us_to_ns(v)


class _Collector:
    """Compact columns for everything the mapping needs, accumulated over one or more rank files."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.name_ids: dict[str, int] = {}
        self.keys: dict[Any, int] = {}  # pid/tid values (int or str) -> small int
        q = "q"
        # device events (k_pid/k_tid: the event's own pid/tid, for ac2g flows)
        self.k_name, self.k_ts, self.k_dur, self.k_dev, self.k_stream = (array(q) for _ in range(5))
        self.k_corr, self.k_rank, self.k_kind, self.k_pid, self.k_tid = (array(q) for _ in range(5))
        # runtime launches
        self.r_corr, self.r_ts, self.r_pid, self.r_tid, self.r_rank = (array(q) for _ in range(5))
        # cpu ops (kernels of CPU-only traces; launchers of device kernels)
        self.c_name, self.c_ts, self.c_dur, self.c_pid, self.c_tid, self.c_rank = (array(q) for _ in range(6))
        # ranges: kind 0 step (value = facts index), 1 layer; gpu flag
        self.g_kind, self.g_val, self.g_ts, self.g_end, self.g_pid, self.g_tid, self.g_gpu, self.g_rank = (
            array(q) for _ in range(8)
        )
        self.g_name: list[str] = []
        # every annotation range (user annotations, nn.Module calls): op-class context of the kernels
        self.a_name, self.a_ts, self.a_end, self.a_pid, self.a_tid, self.a_gpu, self.a_rank = (
            array(q) for _ in range(7)
        )
        self.facts: list[StepFacts] = []
        self.module_calls: list[tuple[int, int, int, int, int]] = []  # nn.Module top-level candidates
        # ac2g flows (int ids): the ids of flow starts; pid, tid, ts and id of flow ends
        self.s_id, self.f_pid, self.f_tid, self.f_ts, self.f_id = (array(q) for _ in range(5))
        self.skipped: Counter[str] = Counter()
        self.unknown_cats: Counter[str] = Counter()  # device-looking X categories not understood
        self.other_cats: Counter[str] = Counter()  # any other X category not understood
        self.device_cats: Counter[str] = Counter()  # the device categories read
        self.device_bad: Counter[tuple[str, str]] = Counter()  # (category, reason) of device events left out
        self.ignored = 0
        self.events = 0
        self.devices: dict[int, str] = {}
        self.ranks: list[int] = []
        self.meta: dict[str, Any] = {}

    def key(self, v: Any) -> int:
        k = self.keys.get(v)
        if k is None:
            if not isinstance(v, int | str):
                raise TypeError("pid/tid")
            k = self.keys[v] = len(self.keys)
        return k

    def name_id(self, s: str) -> int:
        i = self.name_ids.get(s)
        if i is None:
            if type(s) is not str:
                raise TypeError("name")
            i = self.name_ids[s] = len(self.names)
            self.names.append(s)
        return i

    def add_events(self, events: list[Any], rank: int) -> None:
        """One chunk of decoded events: grouped by category, then each category's columns at once."""
        self.events += len(events)
        xs = [e for e in events if type(e) is _Event and e.ph == "X"]
        if len(xs) < len(events):  # metadata (skipped), flows and the odd ones
            starts: list[_Event] = []
            ends: list[_Event] = []
            for e in [e for e in events if type(e) is not _Event or (e.ph != "X" and e.ph != "M")]:
                if type(e) is not _Event:
                    self.skipped["not_an_event"] += 1
                    continue
                ph, cat = e.ph, e.cat
                x_only = type(cat) is str and cat in _X_ONLY
                if ph is None or x_only or type(ph) is not str or ph not in _PHASES:
                    # no phase, one that is no Chrome phase, or not "X" in a category Kineto writes as "X"
                    # only (a damaged record): counted; device work also by its category
                    reason = "missing_phase" if ph is None else "malformed_record"
                    self.skipped[reason] += 1
                    if x_only and cat in _DEVICE_CATS:
                        self.device_cats[cat] += 1
                        self.device_bad[cat, reason] += 1
                elif ph == "s" or ph == "f":
                    if cat == "ac2g":
                        (starts if ph == "s" else ends).append(e)
                else:
                    self.ignored += 1
            if starts or ends:
                self._flows(starts, ends)
        groups: dict[str, list[_Event]] = {}
        for e in xs:
            cat = e.cat
            g = groups.get(cat) if type(cat) is str else groups.get("")
            if g is None:
                g = groups[cat if type(cat) is str else ""] = []
            g.append(e)
        for cat, evs in groups.items():
            kind = _DEVICE_CATS.get(cat)
            if kind is not None:
                self.device_cats[cat] += len(evs)
                self._device(evs, kind, rank, cat)
            elif cat in _CPU_OP_CATS:
                self._cpu_ops(evs, rank)
            elif cat in _RUNTIME_CATS:
                self._runtime(evs, rank)
            elif cat in _ANNOT_CATS:
                if cat == "python_function":  # thousands of Python frames; only module calls matter
                    evs = [e for e in evs if type(e.name) is str and e.name.startswith("nn.Module:")]
                for e in evs:
                    try:
                        self._annotation(e, cat, rank)
                    except TimeRangeError:
                        self.skipped["time_out_of_range"] += 1
                    except _NegativeDuration:
                        self.skipped["negative_duration"] += 1
                    except (KeyError, TypeError, ValueError, AttributeError):
                        self.skipped["malformed_record"] += 1
            elif cat not in _HOST_CATS and (_DEVICE_LOOKING.search(cat) or _on_streams(evs)):
                self.unknown_cats[cat] += len(evs)
            elif cat not in _HOST_CATS:  # a category no Kineto version writes (a damaged or foreign one)
                self.other_cats[cat] += len(evs)
            else:
                self.ignored += len(evs)

    def _ids(self, vals: list[Any], names: bool = False) -> list[int]:
        """Dense ids of pid/tid values (or of names), registering new ones in first-seen order.
        TypeError when one cannot be an id (None, a float, a list, a non-str name)."""
        table, add = (self.name_ids, self.name_id) if names else (self.keys, self.key)
        for v in dict.fromkeys(vals):
            if v not in table:
                add(v)
        return list(map(table.__getitem__, vals))

    def _bulk(self, evs: list[_Event]) -> _Columns | None:
        """(ts, dur, pid ids, tid ids, name ids) of a list of X events in one pass per field, or None when
        any event needs the careful per-event path (odd times, negative durations, bad ids)."""
        ts, dur = _times([e.ts for e in evs]), _times([e.dur for e in evs])
        if ts is None or dur is None or (dur < 0).any():
            return None
        try:
            return ts, dur, self._ids([e.pid for e in evs]), self._ids([e.tid for e in evs]), self._ids(
                [e.name for e in evs], names=True
            )
        except TypeError:
            return None

    def _flows(self, starts: list[_Event], ends: list[_Event]) -> None:
        """ac2g flows (launch -> kernel), for kernels without args.correlation (old traces)."""
        self.s_id.extend([i for i in (e.id for e in starts) if type(i) is int and 0 <= i < NS_LIMIT])
        ends = [e for e in ends if type(e.id) is int and 0 <= e.id < NS_LIMIT]
        ts = _times([e.ts for e in ends])
        if ts is not None:
            try:
                pk, tk = self._ids([e.pid for e in ends]), self._ids([e.tid for e in ends])
            except TypeError:
                ts = None
        if ts is not None:
            self.f_pid.extend(pk)
            self.f_tid.extend(tk)
            self.f_ts.frombytes(ts.tobytes())
            self.f_id.extend([e.id for e in ends])
            return
        for e in ends:
            fid = e.id
            try:
                t, pk, tk = _ns(e.ts), self.key(e.pid), self.key(e.tid)
            except TimeRangeError:
                self.skipped["time_out_of_range"] += 1
                continue
            except (TypeError, ValueError):
                self.skipped["malformed_record"] += 1
                continue
            self.f_pid.append(pk)
            self.f_tid.append(tk)
            self.f_ts.append(t)
            self.f_id.append(fid)

    def _device(self, evs: list[_Event], kind: int, rank: int, cat: str) -> None:
        args = [e.args for e in evs]
        b = self._bulk(evs) if all(type(a) is _Args for a in args) else None
        if b is not None:
            try:
                pairs = zip(args, evs, strict=True)
                dk = self._ids([e.pid if a.device is None else a.device for a, e in pairs])
                pairs = zip(args, evs, strict=True)
                sk = self._ids([e.tid if a.stream is None else a.stream for a, e in pairs])
            except TypeError:
                b = None
        if b is not None:
            ts, dur, pk, tk, nm = b
            n = len(evs)
            corr = [a.correlation for a in args]
            self.k_corr.extend([c if type(c) is int and 0 <= c < NS_LIMIT else -1 for c in corr])
            self.k_name.extend(nm)
            self.k_ts.frombytes(ts.tobytes())
            self.k_dur.frombytes(dur.tobytes())
            self.k_dev.extend(dk)
            self.k_stream.extend(sk)
            self.k_rank.extend([rank] * n)
            self.k_kind.extend([kind] * n)
            self.k_pid.extend(pk)
            self.k_tid.extend(tk)
            return
        key, name_id, keys, names = self.key, self.name_id, self.keys, self.name_ids
        a_name, a_ts, a_dur = self.k_name.append, self.k_ts.append, self.k_dur.append
        a_dev = self.k_dev.append
        a_stream, a_corr, a_rank = self.k_stream.append, self.k_corr.append, self.k_rank.append
        a_kind, a_pid, a_tid = self.k_kind.append, self.k_pid.append, self.k_tid.append
        bad = neg = oor = 0
        for e in evs:
            try:
                args = e.args
                if type(args) is _Args:
                    corr, dev, stream = args.correlation, args.device, args.stream
                    if dev is None:
                        dev = e.pid
                    if stream is None:
                        stream = e.tid
                else:
                    corr, dev, stream = -1, e.pid, e.tid
                if type(corr) is not int or not 0 <= corr < NS_LIMIT:
                    corr = -1  # absent or corrupt: the ac2g flow may still name the launch
                # every field is converted before any column grows: a bad event leaves no trace
                ts, dur = _ns(e.ts), _ns(e.dur)
                if dur < 0:
                    neg += 1
                    continue
                dk = keys.get(dev)
                if dk is None:
                    dk = key(dev)
                sk = keys.get(stream)
                if sk is None:
                    sk = key(stream)
                pk, tk = key(e.pid), key(e.tid)
                nm = names.get(e.name)
                if nm is None:
                    nm = name_id(e.name)
            except TimeRangeError:
                oor += 1
                continue
            except (TypeError, ValueError):
                bad += 1
                continue
            a_name(nm)
            a_ts(ts)
            a_dur(dur)
            a_dev(dk)
            a_stream(sk)
            a_corr(corr)
            a_rank(rank)
            a_kind(kind)
            a_pid(pk)
            a_tid(tk)
        for reason, n in (("malformed_record", bad), ("negative_duration", neg), ("time_out_of_range", oor)):
            if n:
                self.skipped[reason] += n
                self.device_bad[cat, reason] += n

    def _cpu_ops(self, evs: list[_Event], rank: int) -> None:
        b = self._bulk(evs)
        if b is not None:
            ts, dur, pk, tk, nm = b
            self.c_name.extend(nm)
            self.c_ts.frombytes(ts.tobytes())
            self.c_dur.frombytes(dur.tobytes())
            self.c_pid.extend(pk)
            self.c_tid.extend(tk)
            self.c_rank.extend([rank] * len(evs))
            return
        keys, key, names, name_id = self.keys, self.key, self.name_ids, self.name_id
        a_name, a_ts, a_dur = self.c_name.append, self.c_ts.append, self.c_dur.append
        a_pid, a_tid, a_rank = self.c_pid.append, self.c_tid.append, self.c_rank.append
        bad = neg = oor = 0
        for e in evs:
            try:
                ts, dur = _ns(e.ts), _ns(e.dur)
                if dur < 0:
                    neg += 1
                    continue
                pk = keys.get(e.pid)
                if pk is None:
                    pk = key(e.pid)
                tk = keys.get(e.tid)
                if tk is None:
                    tk = key(e.tid)
                nm = names.get(e.name)
                if nm is None:
                    nm = name_id(e.name)
            except TimeRangeError:
                oor += 1
                continue
            except (TypeError, ValueError):
                bad += 1
                continue
            a_name(nm)
            a_ts(ts)
            a_dur(dur)
            a_pid(pk)
            a_tid(tk)
            a_rank(rank)
        for reason, n in (("malformed_record", bad), ("negative_duration", neg), ("time_out_of_range", oor)):
            if n:
                self.skipped[reason] += n

    def _runtime(self, evs: list[_Event], rank: int) -> None:
        corrs = [e.args.correlation if type(e.args) is _Args else None for e in evs]
        keep = [type(c) is int and 0 <= c < NS_LIMIT for c in corrs]  # else: launched nothing (a sync)
        if not all(keep):
            evs = [e for e, k in zip(evs, keep, strict=True) if k]
            corrs = [c for c, k in zip(corrs, keep, strict=True) if k]
        ts = _times([e.ts for e in evs])
        if ts is not None:
            try:
                pk, tk = self._ids([e.pid for e in evs]), self._ids([e.tid for e in evs])
            except TypeError:
                ts = None
        if ts is not None:
            self.r_corr.extend(corrs)
            self.r_ts.frombytes(ts.tobytes())
            self.r_pid.extend(pk)
            self.r_tid.extend(tk)
            self.r_rank.extend([rank] * len(evs))
            return
        keys, key = self.keys, self.key
        a_corr, a_ts, a_pid, a_tid, a_rank = (
            self.r_corr.append, self.r_ts.append, self.r_pid.append, self.r_tid.append, self.r_rank.append
        )
        bad = oor = 0
        for e in evs:
            args = e.args
            corr = args.correlation if type(args) is _Args else None
            if type(corr) is not int or not 0 <= corr < NS_LIMIT:
                continue  # a runtime call that launched nothing (cudaStreamSynchronize, ...)
            try:
                ts = _ns(e.ts)
                pid = keys.get(e.pid)
                if pid is None:
                    pid = key(e.pid)
                tid = keys.get(e.tid)
                if tid is None:
                    tid = key(e.tid)
            except TimeRangeError:
                oor += 1
                continue
            except (TypeError, ValueError):
                bad += 1
                continue
            a_corr(corr)
            a_ts(ts)
            a_pid(pid)
            a_tid(tid)
            a_rank(rank)
        if bad:
            self.skipped["malformed_record"] += bad
        if oor:
            self.skipped["time_out_of_range"] += oor

    def _annotation(self, e: _Event, cat: str, rank: int) -> None:
        name = e.name
        if type(name) is not str:
            raise TypeError("name")
        gpu = cat == "gpu_user_annotation"
        ts, dur = _ns(e.ts), _ns(e.dur)
        if dur < 0:
            raise _NegativeDuration
        args = e.args if gpu and type(e.args) is _Args else None
        pk = self.key(args.device if args is not None and args.device is not None else e.pid)
        tk = self.key(args.stream if args is not None and args.stream is not None else e.tid)
        # op-class context: every annotation and module call
        self.a_name.append(self.name_id(name))
        self.a_ts.append(ts)
        self.a_end.append(ts + dur)
        self.a_pid.append(pk)
        self.a_tid.append(tk)
        self.a_gpu.append(1 if gpu else 0)
        self.a_rank.append(rank)
        if cat == "python_function":
            layer = layer_of(name)
            facts = None
            if layer == NO_LAYER:
                self.module_calls.append((ts, ts + dur, pk, tk, rank))
                return
        else:
            facts = parse_step(name)
            layer = layer_of(name) if facts is None else NO_LAYER
            if facts is None and layer == NO_LAYER:
                if not gpu and "forward" in name.lower():
                    facts = StepFacts("forward")
                else:
                    facts = StepFacts("outer") if not gpu else None
                    if facts is None:
                        return
        if facts is not None:
            self.g_kind.append(0)
            self.g_val.append(len(self.facts))
            self.facts.append(facts)
        else:
            self.g_kind.append(1)
            self.g_val.append(layer)
        self.g_name.append(name)
        self.g_ts.append(ts)
        self.g_end.append(ts + dur)
        self.g_pid.append(pk)
        self.g_tid.append(tk)
        self.g_gpu.append(1 if gpu else 0)
        self.g_rank.append(rank)

    def set_rank(self, old: int, new: int, since: dict[str, int]) -> None:
        """Re-tag the rows added since `since` (column lengths) from rank `old` to `new` (once per file)."""
        for nm in ("k_rank", "r_rank", "c_rank", "g_rank", "a_rank"):
            col = getattr(self, nm)
            if len(col) > since[nm]:
                a = np.frombuffer(col, dtype=np.int64)[since[nm] :]
                a[a == old] = new
                del a
        m0 = since["module_calls"]
        calls = self.module_calls
        calls[m0:] = [(a, b, p, t, new if r == old else r) for a, b, p, t, r in calls[m0:]]

    def lengths(self) -> dict[str, int]:
        return {
            "k_rank": len(self.k_rank), "r_rank": len(self.r_rank), "c_rank": len(self.c_rank),
            "g_rank": len(self.g_rank), "a_rank": len(self.a_rank), "module_calls": len(self.module_calls),
        }  # fmt: skip


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(rows, axis=0, return_inverse=True) for small ints (>= -1): the columns packed into one
    int64 in mixed radix, so the sort is a plain 1-D one (axis=0 sorts a void view, 10x slower)."""
    lo = rows.min(axis=0) if len(rows) else np.zeros(rows.shape[1], np.int64)
    base = (rows.max(axis=0) - lo + 1) if len(rows) else np.ones(rows.shape[1], np.int64)
    if not len(rows) or lo.min() < -1 or float(np.prod(base.astype(float))) >= 2.0**62:
        u, inv = np.unique(rows, axis=0, return_inverse=True)
        return u, inv.reshape(-1)
    key = np.zeros(len(rows), dtype=np.int64)
    for j in range(rows.shape[1]):
        key = key * int(base[j]) + (rows[:, j] - lo[j])
    uk, inv = np.unique(key, return_inverse=True)
    out = np.empty((len(uk), rows.shape[1]), dtype=np.int64)
    for j in range(rows.shape[1] - 1, -1, -1):
        uk, out[:, j] = np.divmod(uk, int(base[j]))
        out[:, j] += lo[j]
    return out, inv.reshape(-1)


def _distinct(a: np.ndarray) -> np.ndarray:
    """np.unique(a) for int arrays, by sorting: numpy 2's hashing np.unique imports numpy.ma (~10 ms)."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _np(a: array) -> np.ndarray:
    return np.frombuffer(a, dtype=np.int64) if len(a) else np.zeros(0, dtype=np.int64)


def read_file(path: Path, col: _Collector, warnings: list[str]) -> None:
    """Read one Kineto JSON file into `col`."""
    try:
        doc, read_error = read_bytes(path)
    except OSError as e:
        raise LlmtopError(f"cannot read {path}: {e.strerror or e}") from None
    if read_error is not None and not doc:
        raise LlmtopError(f"{path}: cannot decompress/read: {read_error}")
    st = WalkStatus()
    rank: int | None = None
    since = col.lengths()
    n0 = col.events
    for kind, v in walk(doc, "traceEvents", _Item, _TOP_KEYS, st):
        if kind == "items":
            col.add_events(v, _PENDING_RANK)  # distributedInfo may follow traceEvents: tagged below
            continue
        for k, val in v.items():
            col.meta.setdefault(k, val)
            if k == "distributedInfo" and isinstance(val, dict) and type(val.get("rank")) is int:
                rank = val["rank"] if rank is None else rank
            elif k == "deviceProperties" and isinstance(val, list):
                for d in val:
                    if isinstance(d, dict) and isinstance(d.get("name"), str):
                        with contextlib.suppress(TypeError):  # an id that is neither int nor str
                            col.devices.setdefault(col.key(d.get("id", 0)), d["name"])
    del doc
    if not st.form:
        raise LlmtopError(f"{path}: not a JSON trace (it does not start with '{{' or '[')")
    if st.not_a_list:
        raise LlmtopError(f"{path}: traceEvents is not a list")
    if not st.found:
        if st.truncated and col.events == n0:
            raise LlmtopError(f"{path}: {st.error}")
        raise LlmtopError(f"{path}: JSON object without traceEvents: not a Kineto/Chrome trace")
    if st.truncated and col.events == n0:
        if read_error:
            raise LlmtopError(f"{path}: cannot decompress/read: {read_error}")
        raise LlmtopError(f"{path}: {st.error}")
    rank = 0 if rank is None else rank
    col.set_rank(_PENDING_RANK, rank, since)
    col.ranks.append(rank)
    if read_error:
        warnings.append(f"{path.name}: stream ended early ({read_error}); imported what came before")
    if st.too_deep:
        col.skipped["too_deeply_nested"] += st.too_deep
        warnings.append(f"{path.name}: {st.too_deep} trace events nest deeper than the JSON decoders go "
                        "(about 1000 levels) and were left out (too_deeply_nested)")
    if st.truncated:
        col.skipped["truncated_record"] += 1
        warnings.append(
            f"{path.name}: JSON ends mid-record (truncated file?); the partial record was skipped "
            f"({st.error})"
        )
    elif st.error:
        warnings.append(f"{path.name}: {st.error}")



def _select_steps(col: _Collector, launch_hosts: set[int]) -> tuple[list[StepRange], str]:
    kind, val = _np(col.g_kind), _np(col.g_val)
    ts, end, pid, gpu = _np(col.g_ts), _np(col.g_end), _np(col.g_pid), _np(col.g_gpu)
    rank = _np(col.g_rank)
    is_step = (kind == 0) & (gpu == 0)
    facts = col.facts

    def ranges(mask: np.ndarray) -> list[int]:
        return [int(i) for i in np.flatnonzero(mask)]

    def nest(idx: list[int], outermost: bool = False) -> list[StepRange]:
        idx.sort(key=lambda i: (rank[i], pid[i], ts[i], -end[i]))
        children: dict[int, list[int]] = {i: [] for i in idx}
        stack: list[int] = []
        parent: dict[int, int] = {}
        for i in idx:
            while stack and not (
                rank[stack[-1]] == rank[i] and pid[stack[-1]] == pid[i] and ts[i] < end[stack[-1]]
            ):
                stack.pop()
            if stack:
                parent[i] = stack[-1]
                children[stack[-1]].append(i)
            stack.append(i)
        containers = set() if outermost else {i for i, ch in children.items() if len(ch) >= 2}
        out: list[StepRange] = []
        for i in idx:
            if i in containers:
                continue
            p = parent.get(i)
            while p is not None and p in containers:
                p = parent.get(p)
            if p is not None:
                continue  # nested 1:1 in a kept step: folded into it below
            f = facts[val[i]]
            for c in children[i]:
                f = merge_facts(f, facts[val[c]])
                for g in children[c]:
                    f = merge_facts(f, facts[val[g]])
            out.append(StepRange(int(ts[i]), int(end[i]), int(rank[i]) << 32 | int(pid[i]), f))
        return out

    fkind = np.array([facts[v].kind if k == 0 else "" for k, v in zip(kind, val, strict=True)], dtype=object)
    strong = is_step & ~np.isin(fkind, ["forward", "outer"]) if len(val) else is_step
    if strong.any():
        return nest(ranges(strong)), "annotations"
    fwd = is_step & (fkind == "forward") if len(val) else is_step
    if fwd.any():
        return nest(ranges(fwd)), "forward annotations"
    if col.module_calls:
        calls = sorted(col.module_calls, key=lambda c: (c[4], c[2], c[3], c[0], -c[1]))
        out, last_end = [], {}
        for t0, t1, p, t, r in calls:
            k = (r, p, t)
            if t0 >= last_end.get(k, -1):
                out.append(StepRange(t0, t1, r << 32 | p, StepFacts("forward")))
                last_end[k] = t1
        return out, "top-level nn.Module calls"
    outer = is_step & np.isin(pid, list(launch_hosts)) if len(val) else is_step
    if outer.any():
        return nest(ranges(outer), outermost=True), "outermost annotations"
    return [], "none"


def _innermost(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per point, the index of the innermost interval containing it, or -1.

    Intervals sorted by start (ties: longest first). The innermost one containing t is the last one
    that starts at or before t and has not ended by t: binary lifting over a table of the running
    maximum of ends over power-of-two windows finds it in O(log n) vectorised steps per point.
    """
    res = np.searchsorted(starts, t, side="right") - 1
    n = len(starts)
    if not n or not len(t):
        return np.full(len(t), -1, dtype=np.int64)
    tables = [ends]
    while (1 << len(tables)) <= n:
        h = 1 << (len(tables) - 1)
        prev = tables[-1]
        nxt = prev.copy()
        nxt[h:] = np.maximum(prev[h:], prev[:-h])  # max of ends over [j - 2h + 1, j]
        tables.append(nxt)
    for k in range(len(tables) - 1, -1, -1):
        ok = res >= 0
        skip = ok & (tables[k][np.where(ok, res, 0)] <= t)  # nothing in the window is still open at t
        res = np.where(skip, res - (1 << k), res)
    ok = res >= 0
    ok[ok] = ends[res[ok]] > t[ok]
    return np.where(ok, res, -1)


def _enclosing(
    i_key: tuple[np.ndarray, ...], i_start: np.ndarray, i_end: np.ndarray,
    q_key: tuple[np.ndarray, ...], q_t: np.ndarray, n_keys: int,
) -> np.ndarray:  # fmt: skip
    """Per query, the index of the innermost interval with the same (rank, pid, tid) containing q_t, or -1."""
    out = np.full(len(q_t), -1, dtype=np.int64)
    if not len(i_start) or not len(q_t):
        return out
    ig, qg = _group(i_key, n_keys), _group(q_key, n_keys)
    order = np.lexsort((-i_end, i_start, ig))
    g_sorted = ig[order]
    groups, lo = np.unique(g_sorted, return_index=True)
    hi = np.append(lo[1:], len(order))
    q_order = np.argsort(qg, kind="stable")
    qg_sorted = qg[q_order]
    q_lo = np.searchsorted(qg_sorted, groups, side="left")
    q_hi = np.searchsorted(qg_sorted, groups, side="right")
    for a, b, qa, qb in zip(lo, hi, q_lo, q_hi, strict=True):
        if qa == qb:
            continue
        rows = order[a:b]
        qi = q_order[qa:qb]
        r = _innermost(i_start[rows], i_end[rows], q_t[qi])
        out[qi] = np.where(r >= 0, rows[np.maximum(r, 0)], -1)
    return out


def _group(key: tuple[np.ndarray, ...], n_keys: int) -> np.ndarray:
    """(rank, pid, tid) columns -> one int64 (pid/tid are dense small keys, ranks are small)."""
    rank, pid, tid = key
    return (rank * n_keys + pid) * n_keys + tid


def _context(
    col: _Collector, n_keys: int, rows: np.ndarray, q_host: tuple[np.ndarray, ...], q_t: np.ndarray,
    k_track: tuple[np.ndarray, ...] | None, k_ts: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Name id of the innermost annotation / module range around each kernel's launch (rows: the
    kernels with a known launch, q_*: their host thread and launch time), else of the
    gpu_user_annotation around the kernel on its own stream; -1 when none."""
    out = np.full(len(k_ts), -1, dtype=np.int64)
    if not len(col.a_ts):
        return out
    a_name, a_ts, a_end, a_gpu = _np(col.a_name), _np(col.a_ts), _np(col.a_end), _np(col.a_gpu)
    a_key = (_np(col.a_rank), _np(col.a_pid), _np(col.a_tid))
    cpu = np.flatnonzero(a_gpu == 0)
    if len(cpu) and len(rows):
        ai = _enclosing(tuple(x[cpu] for x in a_key), a_ts[cpu], a_end[cpu], q_host, q_t, n_keys)
        out[rows] = np.where(ai >= 0, a_name[cpu][np.maximum(ai, 0)], -1)
    gpu = np.flatnonzero(a_gpu == 1)
    if len(gpu) and k_track is not None:
        miss = np.flatnonzero(out < 0)
        ai = _enclosing(
            tuple(x[gpu] for x in a_key), a_ts[gpu], a_end[gpu], tuple(x[miss] for x in k_track), k_ts[miss],
            n_keys,
        )
        out[miss] = np.where(ai >= 0, a_name[gpu][np.maximum(ai, 0)], -1)
    return out




def _op_classes(
    names: list[str], k_name: np.ndarray, launcher: np.ndarray, context: np.ndarray, k_kind: np.ndarray
) -> np.ndarray:
    """Op class per kernel, one rule call per distinct (kernel, launcher, context) triple; copies and
    fills are memcpy whatever their name (an MTIA `dma_request`, a ROCm `CopyDeviceToHost`)."""
    if not len(k_name):
        return np.zeros(0, dtype=np.int64)
    uniq, inv = _unique_rows(np.stack([k_name, launcher, context], axis=1))
    cls = np.array(
        [
            op_class_for(names[k], names[lc] if lc >= 0 else "", names[c] if c >= 0 else "")
            for k, lc, c in uniq.tolist()
        ],
        dtype=np.int64,
    )
    out = cls[inv.reshape(-1)]
    out[k_kind > 0] = OP_CLASS_ID["memcpy"]
    return out


def import_kineto(
    paths: list[Path], names: NameTable
) -> tuple[SourceInfo, list[EventBatch], dict[str, int], list[str]]:
    """The files as one trace: (source, batches, skipped records by reason, warnings)."""
    col = _Collector()
    warnings: list[str] = []
    for p in paths:
        read_file(p, col, warnings)
    k_ts = _np(col.k_ts)
    gpu_trace = len(k_ts) > 0
    if col.other_cats:
        n_other = sum(col.other_cats.values())
        col.skipped["unknown_category"] += n_other
        top = col.other_cats.most_common(5)
        parts = ", ".join(f"{c!r} ({n})" for c, n in top) + (", ..." if len(col.other_cats) > 5 else "")
        warnings.append(f"{n_other} complete events in categories llmtop does not read were left out: "
                        f"{parts} (unknown_category)")
    if col.device_bad:
        n_bad = sum(col.device_bad.values())
        per_cat, per_reason = Counter[str](), Counter[str]()
        for (c, r), n in col.device_bad.items():
            per_cat[c] += n
            per_reason[r] += n
        cats = ", ".join(f"{c!r} {n} of {col.device_cats[c]}" for c, n in per_cat.most_common())
        why = ", ".join(f"{r} {n}" for r, n in sorted(per_reason.items()))
        warnings.append(
            f"{n_bad} of {sum(col.device_cats.values())} device events failed validation and were left out "
            f"({cats}; {why})" + ("" if gpu_trace else
                                  ": none is left, so the report below shows the CPU side (cpu_ops), not "
                                  "the device")
        )
    if col.unknown_cats:
        col.skipped["unknown_device_category"] += sum(col.unknown_cats.values())
        parts = ", ".join(f"{c!r} ({n})" for c, n in col.unknown_cats.most_common())
        warnings.append(
            f"{sum(col.unknown_cats.values())} events in categories that look like device work but that "
            f"llmtop does not understand were left out: {parts}"
            + ("" if gpu_trace else "; the report below shows only the CPU side")
        )
    if gpu_trace:
        k_name, k_dur = _np(col.k_name), _np(col.k_dur)
        k_rank, k_dev, k_stream, k_corr = _np(col.k_rank), _np(col.k_dev), _np(col.k_stream), _np(col.k_corr)
        if len(col.f_id) and (k_corr < 0).any():
            # no args.correlation: follow the ac2g flow that ends on this kernel (its own pid/tid/ts)
            ends = dict(zip(zip(col.f_pid, col.f_tid, col.f_ts, strict=True), col.f_id, strict=True))
            started = set(col.s_id)
            k_pid, k_tid = _np(col.k_pid), _np(col.k_tid)
            for i in np.flatnonzero(k_corr < 0):
                fid = ends.get((int(k_pid[i]), int(k_tid[i]), int(k_ts[i])))
                if fid is not None and fid in started:
                    k_corr[i] = fid
        # launch lookup by (rank, correlation)
        r_corr, r_ts, r_pid, r_tid, r_rank = (
            _np(a) for a in (col.r_corr, col.r_ts, col.r_pid, col.r_tid, col.r_rank)
        )
        rk = (r_rank << 40) | (r_corr & ((1 << 40) - 1))
        order = np.argsort(rk, kind="stable")
        rk_s = rk[order]
        kk = (k_rank << 40) | (k_corr & ((1 << 40) - 1))
        pos = np.searchsorted(rk_s, kk)
        pos_c = np.minimum(pos, max(len(rk_s) - 1, 0))
        found = (k_corr >= 0) & (len(rk_s) > 0)
        if len(rk_s):
            found &= rk_s[pos_c] == kk
        src = order[pos_c] if len(rk_s) else pos_c
        launch = np.where(found, r_ts[src] if len(rk_s) else -1, -1)
        host = np.where(found, (k_rank << 32) | (r_pid[src] if len(rk_s) else 0), -1)
        l_tid = np.where(found, r_tid[src] if len(rk_s) else -1, -1)
        track_keys = np.stack([k_rank, k_dev, k_stream], axis=1)
        k_kind = _np(col.k_kind)
        # op-class context: the cpu_op around the launch, the annotation around it (else around the kernel)
        c_ts, c_end = _np(col.c_ts), _np(col.c_ts) + _np(col.c_dur)
        n_keys = len(col.keys) + 1
        has_l = np.flatnonzero(found)
        q_host = (k_rank[has_l], r_pid[src[has_l]], r_tid[src[has_l]])
        launcher = np.full(len(k_ts), -1, dtype=np.int64)
        if len(c_ts):
            li = _enclosing(
                (_np(col.c_rank), _np(col.c_pid), _np(col.c_tid)), c_ts, c_end, q_host, launch[has_l], n_keys
            )
            launcher[has_l] = np.where(li >= 0, _np(col.c_name)[np.maximum(li, 0)], -1)
        context = _context(col, n_keys, has_l, q_host, launch[has_l], (k_rank, k_dev, k_stream), k_ts)
    else:
        # CPU-only: leaf cpu_ops per thread are the kernels
        c_ts, c_dur = _np(col.c_ts), _np(col.c_dur)
        if not len(c_ts):
            where = ", ".join(str(p) for p in paths)
            why = ", ".join(f"{r} {n}" for r, n in sorted(col.skipped.items()))
            raise LlmtopError(f"{where}: trace has no kernel, memcpy or cpu_op events: nothing to import"
                              + (f" (skipped: {why})" if why else ""))
        c_name, c_pid, c_tid, c_rank = _np(col.c_name), _np(col.c_pid), _np(col.c_tid), _np(col.c_rank)
        o = np.lexsort((-(c_ts + c_dur), c_ts, c_tid, c_pid, c_rank))
        ts_o, end_o = c_ts[o], c_ts[o] + c_dur[o]
        thread = np.stack([c_rank[o], c_pid[o], c_tid[o]], axis=1)
        brk = np.flatnonzero((thread[1:] != thread[:-1]).any(axis=1)) + 1
        nested = np.zeros(len(o), dtype=bool)
        for lo, hi in zip(np.r_[0, brk], np.r_[brk, len(o)], strict=True):
            run_end = np.maximum.accumulate(end_o[lo:hi])
            nested[lo + 1 : hi] = ts_o[lo + 1 : hi] < run_end[:-1]
        leaf = o[~nested]  # outermost ops of each thread
        k_name, k_ts, k_dur = c_name[leaf], c_ts[leaf], c_dur[leaf]
        k_rank = c_rank[leaf]
        launch = k_ts.copy()
        host = (k_rank << 32) | c_pid[leaf]
        l_tid = c_tid[leaf]
        track_keys = np.stack([k_rank, c_pid[leaf], c_tid[leaf]], axis=1)
        k_kind = np.zeros(len(leaf), dtype=np.int64)
        launcher = np.full(len(leaf), -1, dtype=np.int64)
        every, own = np.arange(len(leaf)), (k_rank, c_pid[leaf], c_tid[leaf])
        context = _context(col, len(col.keys) + 1, every, own, k_ts, None, k_ts)
        what = ("no valid device events" if col.device_cats or col.unknown_cats else "CPU-only trace")
        warnings.append(
            f"{what}: the {len(leaf)} outermost cpu_ops of each thread (of {len(c_ts)}) are the "
            "kernels, so ops nested in them are not counted twice"
        )
    uniq_tracks, track = (
        _unique_rows(track_keys)
        if len(track_keys)
        else (np.zeros((0, 3), np.int64), np.zeros(0, np.int64))
    )
    track = track.reshape(-1).astype(np.int64)
    if len(uniq_tracks) > 65535:
        raise LlmtopError(f"trace has {len(uniq_tracks)} streams/threads; at most 65535 tracks are supported")

    # layers: GPU ranges on the kernel's own stream, CPU ranges around the launch, then the name
    layer = np.full(len(k_ts), NO_LAYER, dtype=np.int64)
    g_kind, g_val, g_ts, g_end = _np(col.g_kind), _np(col.g_val), _np(col.g_ts), _np(col.g_end)
    g_pid, g_tid, g_gpu, g_rank = _np(col.g_pid), _np(col.g_tid), _np(col.g_gpu), _np(col.g_rank)
    is_layer = g_kind == 1
    if is_layer.any():
        for r, p, t, g in {
            (int(a), int(b), int(c), int(d))
            for a, b, c, d in zip(
                g_rank[is_layer], g_pid[is_layer], g_tid[is_layer], g_gpu[is_layer], strict=True
            )
        }:
            m = is_layer & (g_rank == r) & (g_pid == p) & (g_tid == t) & (g_gpu == g)
            iv = Intervals(g_ts[m], g_end[m], g_val[m])
            if g and gpu_trace:
                km = (k_rank == r) & (k_dev == p) & (k_stream == t) & (layer == NO_LAYER)
                if km.any():
                    layer[km] = iv.lookup(k_ts[km], NO_LAYER)
            else:
                km = (host == ((r << 32) | p)) & (l_tid == t) & (layer == NO_LAYER)
                if km.any():
                    layer[km] = iv.lookup(launch[km], NO_LAYER)
    name_layer = np.array([layer_of(n) for n in col.names], dtype=np.int64) if col.names else np.zeros(0, int)
    nl = layer == NO_LAYER
    if nl.any() and len(name_layer):
        layer[nl] = name_layer[k_name[nl]]

    steps, step_source = _select_steps(col, {int(h & 0xFFFFFFFF) for h in _distinct(host[host >= 0])})
    op_class = _op_classes(col.names, k_name, launcher, context, k_kind)
    kc = KernelColumns(col.names, k_name, k_ts, k_dur, track, launch, host, layer, op_class)
    batches, info = build_batches(kc, steps, names)
    col.skipped.update(info["skipped"])
    warnings.extend(info["warnings"])

    dev_ids = sorted({int(d) for d in _distinct(uniq_tracks[:, 1])}) if gpu_trace else []
    key_back = {v: k for k, v in col.keys.items()}
    dev_names = sorted({col.devices[d] for d in dev_ids if d in col.devices})
    if not dev_names and len(set(col.devices.values())) == 1:
        dev_names = list(set(col.devices.values()))  # ROCm numbers agents differently from deviceProperties
    accel = "MTIA" if col.device_cats.get("mtia_ccp_events") else "GPU"
    device = ", ".join(dev_names) if dev_names else (f"{accel} (no deviceProperties)" if gpu_trace else "CPU")
    if not gpu_trace and isinstance(col.meta.get("host_name"), str):
        device = f"CPU ({col.meta['host_name']})"
    tracks = [
        {
            "track": i,
            "rank": int(r),
            ("device" if gpu_trace else "pid"): key_back.get(int(d), int(d)),
            ("stream" if gpu_trace else "tid"): key_back.get(int(s), int(s)),
        }
        for i, (r, d, s) in enumerate(uniq_tracks.tolist())
    ]
    streams = sorted({str(t.get("stream", t.get("tid"))) for t in tracks})
    n_layers = len(_distinct(layer[layer >= 0]))
    if info["inferred_layers"]:
        n_layers = info["inferred_layers"]
        warnings.append(f"no layer annotations: {n_layers} layers inferred from the repeating kernel pattern")
    if not steps:
        warnings.append("no step annotations (ProfilerStep#, execute_*, NVTX, forward): kernels have no step")
    source = SourceInfo(
        kind="import",
        backend="kineto",
        device=device,
        model=", ".join(p.name for p in paths),
        timing=("kineto/CUPTI" if accel == "GPU" else f"kineto/{accel}") if gpu_trace else "kineto cpu_op",
        n_layers=n_layers,
        extra={
            "ranks": sorted(set(col.ranks)),
            "streams": streams,
            "tracks": tracks,
            "skipped": sum(col.skipped.values()),
            "warnings": warnings,
            "records": col.events,
            "step_source": step_source,
            "layer_source": "inferred" if info["inferred_layers"] else "annotations/names",
            "kernels_outside_steps": info["kernels_outside_steps"],
            **_peak_of(dev_names),
        },
    )
    return source, batches, dict(col.skipped), warnings


def _peak_of(dev_names: list[str]) -> dict[str, Any]:
    """{"device_peak": ...} when the trace's one GPU (deviceProperties name) is a known part. A trace does
    not say its compute dtype: the 16-bit tensor peak is assumed, and the peak's source says so."""
    from llmtop.kernels.peaks import known_gpu_peak

    if len(dev_names) != 1:
        return {}
    p = known_gpu_peak(dev_names[0], "bfloat16")
    if p is None:
        return {}
    return {"device_peak": {**p, "source": f"{p['source']} (deviceProperties; bfloat16 assumed)"}}


# -- registration ----------------------------------------------------------------------------
def sniff(head: bytes) -> bool:
    """A JSON object or array of objects: any Chrome/Kineto trace (after metallic's narrower sniff)."""
    text = head_text(head)
    return text.startswith("{") or (text.startswith("[") and text[1:].lstrip()[:1] in ("{", "]"))


def read(path: Path, names: NameTable) -> ImportResult:
    source, batches, skipped, warnings = import_kineto([path], names)
    return ImportResult(source, batches, sum(skipped.values()), warnings, names, skipped_by=skipped)


FORMAT = register(TraceFormat("kineto", "Kineto JSON", sniff, read, priority=20))
