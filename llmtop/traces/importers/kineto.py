"""Kineto / torch.profiler / Chrome-trace JSON (plain or gzip, Object or Array form) -> EventBatches.

Streaming: the file is decoded in text chunks; each chunk's complete events are parsed by one C-level
`json` call (falling back to per-event `raw_decode` when a chunk boundary guess is wrong), and only
compact int64 columns are kept, so memory stays far below the size of the JSON. Floats are kept as
their decimal text (`parse_float=str`) and µs-with-ns-fraction timestamps are converted to int ns by
splitting on '.', with no float rounding.

Mapping (see mapping.py for the name rules):
- kernels: `kernel`, `gpu_memcpy`, `gpu_memset` (and legacy `Kernel`, `Memcpy`, `Memset`) events; track =
  (rank, device, stream). CUDA-graph replays give one row per kernel even though they share a launch.
- launch: the `cuda_runtime`/`Runtime`/`cuda_driver` event with the kernel's `args.correlation` (or its
  `ac2g` flow); its host time places the kernel in steps and CPU-side layer ranges.
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

import json
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, NS_LIMIT, EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import (
    Intervals,
    StepFacts,
    layer_of,
    merge_facts,
    parse_step,
    us_to_ns,
)
from llmtop.traces.json_stream import JsonArrayReader, TextSource
from llmtop.traces.registry import ImportResult, TraceFormat, head_text, register

_DEVICE_CATS = {"kernel": 0, "Kernel": 0, "gpu_memcpy": 1, "Memcpy": 1, "gpu_memset": 2, "Memset": 2}
_RUNTIME_CATS = {"cuda_runtime", "Runtime", "cuda_driver"}
_ANNOT_CATS = {"user_annotation", "python_function", "gpu_user_annotation"}
_CPU_OP_CATS = {"cpu_op", "Operator"}


class _Collector:
    """Compact columns for everything the mapping needs, accumulated over one or more rank files."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.name_ids: dict[str, int] = {}
        self.keys: dict[Any, int] = {}  # pid/tid values (int or str) -> small int
        q = "q"
        # device events
        self.k_name, self.k_ts, self.k_dur, self.k_dev, self.k_stream = (array(q) for _ in range(5))
        self.k_corr, self.k_rank, self.k_kind = array(q), array(q), array(q)
        # runtime launches
        self.r_corr, self.r_ts, self.r_pid, self.r_tid, self.r_rank = (array(q) for _ in range(5))
        # cpu ops (kernels of CPU-only traces)
        self.c_name, self.c_ts, self.c_dur, self.c_pid, self.c_tid, self.c_rank = (array(q) for _ in range(6))
        # ranges: kind 0 step (value = facts index), 1 layer; gpu flag
        self.g_kind, self.g_val, self.g_ts, self.g_end, self.g_pid, self.g_tid, self.g_gpu, self.g_rank = (
            array(q) for _ in range(8)
        )
        self.g_name: list[str] = []
        self.facts: list[StepFacts] = []
        self.module_calls: list[tuple[int, int, int, int, int]] = []  # nn.Module top-level candidates
        self.flows_s: dict[int, tuple[int, int, int]] = {}
        self.flows_f: dict[tuple[int, int, int], int] = {}
        self.need_flows = False
        self.skipped = 0
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
        self.events += len(events)
        key, name_id, keys, names = self.key, self.name_id, self.keys, self.name_ids
        for e in events:
            try:
                ph = e.get("ph")
                if ph == "X":
                    cat = e.get("cat")
                    kind = _DEVICE_CATS.get(cat)
                    if kind is not None:
                        args = e.get("args") or {}
                        corr = args.get("correlation", -1)
                        if type(corr) is not int or not 0 <= corr < NS_LIMIT:
                            corr = -1  # absent or corrupt: the ac2g flow may still name the launch
                        dev = args.get("device", e["pid"])
                        stream = args.get("stream", e["tid"])
                        # every field is converted before any column grows: a bad event leaves no trace
                        ts, dur = us_to_ns(e["ts"]), us_to_ns(e["dur"])
                        dk = keys.get(dev)
                        if dk is None:
                            dk = key(dev)
                        sk = keys.get(stream)
                        if sk is None:
                            sk = key(stream)
                        nm = names.get(e["name"])
                        if nm is None:
                            nm = name_id(e["name"])
                        self.k_name.append(nm)
                        self.k_ts.append(ts)
                        self.k_dur.append(dur)
                        self.k_dev.append(dk)
                        self.k_stream.append(sk)
                        self.k_corr.append(corr)
                        self.k_rank.append(rank)
                        self.k_kind.append(kind)
                        if corr == -1:
                            self.need_flows = True
                            self.flows_f.setdefault((key(e["pid"]), key(e["tid"]), ts), -1)
                    elif cat in _CPU_OP_CATS:
                        ts, dur = us_to_ns(e["ts"]), us_to_ns(e["dur"])
                        pk = keys.get(e["pid"])
                        if pk is None:
                            pk = key(e["pid"])
                        tk = keys.get(e["tid"])
                        if tk is None:
                            tk = key(e["tid"])
                        nm = names.get(e["name"])
                        if nm is None:
                            nm = name_id(e["name"])
                        self.c_name.append(nm)
                        self.c_ts.append(ts)
                        self.c_dur.append(dur)
                        self.c_pid.append(pk)
                        self.c_tid.append(tk)
                        self.c_rank.append(rank)
                    elif cat in _RUNTIME_CATS:
                        args = e.get("args") or {}
                        corr = args.get("correlation")
                        ts = us_to_ns(e["ts"])
                        pid = keys.get(e["pid"])
                        if pid is None:
                            pid = key(e["pid"])
                        tid = keys.get(e["tid"])
                        if tid is None:
                            tid = key(e["tid"])
                        if type(corr) is int and 0 <= corr < NS_LIMIT:
                            self.r_corr.append(corr)
                            self.r_ts.append(ts)
                            self.r_pid.append(pid)
                            self.r_tid.append(tid)
                            self.r_rank.append(rank)
                    elif cat in _ANNOT_CATS:
                        self._annotation(e, cat, rank)
                    else:
                        self.ignored += 1
                elif ph == "s" or ph == "f":
                    # flows only matter for kernels without args.correlation (old traces); those list
                    # kernels before flows, so flows are kept only once such a kernel has been seen
                    if self.need_flows and e.get("cat") == "ac2g":
                        t = us_to_ns(e["ts"])
                        if ph == "s":
                            self.flows_s[e["id"]] = (key(e["pid"]), key(e["tid"]), t)
                        else:
                            k = (key(e["pid"]), key(e["tid"]), t)
                            if k in self.flows_f:
                                self.flows_f[k] = e["id"]
                elif ph == "M":
                    pass
                elif ph is None:
                    self.skipped += 1
                else:
                    self.ignored += 1
            except (KeyError, TypeError, ValueError, AttributeError):
                self.skipped += 1

    def _annotation(self, e: dict[str, Any], cat: str, rank: int) -> None:
        name = e["name"]
        if type(name) is not str:
            raise TypeError("name")
        gpu = cat == "gpu_user_annotation"
        if cat == "python_function":
            if not name.startswith("nn.Module:"):
                return
            layer = layer_of(name)
            facts = None
            if layer == NO_LAYER:
                ts, dur = us_to_ns(e["ts"]), us_to_ns(e["dur"])
                self.module_calls.append((ts, ts + dur, self.key(e["pid"]), self.key(e["tid"]), rank))
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
        ts, dur = us_to_ns(e["ts"]), us_to_ns(e["dur"])
        args = e.get("args") if gpu else None
        pk = self.key(args.get("device", e["pid"]) if isinstance(args, dict) else e["pid"])
        tk = self.key(args.get("stream", e["tid"]) if isinstance(args, dict) else e["tid"])
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


def _np(a: array) -> np.ndarray:
    return np.frombuffer(a, dtype=np.int64) if len(a) else np.zeros(0, dtype=np.int64)


def read_file(path: Path, col: _Collector, warnings: list[str]) -> None:
    """Stream one Kineto JSON file into `col`."""
    f = TextSource(path)
    stats: dict[str, int] = {}
    rd = JsonArrayReader(f)
    try:
        first = rd.peek()
        if first == "\ufeff":
            rd.pos += 1
            first = rd.peek()
        rank = 0
        if first == "[":
            rd.pos += 1
            for chunk in rd.array_chunks(stats):
                col.add_events(chunk, rank)
        elif first == "{":
            rd.pos += 1
            seen_events = False
            while True:
                c = rd.peek()
                if c == ",":
                    rd.pos += 1
                    continue
                if c == "}" or c == "":
                    if c == "":
                        stats["truncated"] = 1
                    break
                k = rd.value()
                rd.expect(":")
                if k == "traceEvents":
                    if rd.peek() != "[":
                        raise LlmtopError(f"{path}: traceEvents is not a list")
                    rd.pos += 1
                    seen_events = True
                    for chunk in rd.array_chunks(stats):
                        col.add_events(chunk, rank)
                    if stats.get("truncated"):
                        break
                else:
                    v = rd.value()
                    col.meta.setdefault(k, v)
                    if k == "distributedInfo" and isinstance(v, dict) and type(v.get("rank")) is int:
                        # rank usually precedes traceEvents; when it follows, re-tag what we have
                        new_rank = v["rank"]
                        if seen_events and new_rank != rank:
                            for arr in (col.k_rank, col.r_rank, col.c_rank, col.g_rank):
                                for i in range(len(arr)):
                                    if arr[i] == rank:
                                        arr[i] = new_rank
                        rank = new_rank
                    elif k == "deviceProperties" and isinstance(v, list):
                        for d in v:
                            if isinstance(d, dict) and isinstance(d.get("name"), str):
                                col.devices.setdefault(col.key(d.get("id", 0)), d["name"])
            if not seen_events:
                raise LlmtopError(f"{path}: JSON object without traceEvents: not a Kineto/Chrome trace")
        else:
            raise LlmtopError(f"{path}: not a JSON trace (starts with {first[:1]!r})")
        col.ranks.append(rank)
    except json.JSONDecodeError as e:
        if col.events == 0:
            raise LlmtopError(f"{path}: invalid JSON at char {e.pos}: {e.msg}") from None
        stats["truncated"] = 1
    finally:
        f.close()
    if rd.read_error:
        if col.events == 0:
            raise LlmtopError(f"{path}: cannot decompress/read: {rd.read_error}")
        warnings.append(f"{path.name}: stream ended early ({rd.read_error}); imported what came before")
    if stats.get("truncated"):
        col.skipped += 1
        warnings.append(
            f"{path.name}: JSON ends mid-record (truncated file?); the partial record was skipped"
        )


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


def import_kineto(paths: list[Path], names: NameTable) -> tuple[SourceInfo, list[EventBatch], int, list[str]]:
    col = _Collector()
    warnings: list[str] = []
    for p in paths:
        read_file(p, col, warnings)
    k_ts = _np(col.k_ts)
    gpu_trace = len(k_ts) > 0
    if gpu_trace:
        k_name, k_dur = _np(col.k_name), _np(col.k_dur)
        k_rank, k_dev, k_stream, k_corr = _np(col.k_rank), _np(col.k_dev), _np(col.k_stream), _np(col.k_corr)
        if col.flows_s and (k_corr < 0).any():
            # no args.correlation: follow the ac2g flow that ends on this kernel
            k_pid = k_dev  # legacy traces put the device in pid
            for i in np.flatnonzero(k_corr < 0):
                fid = col.flows_f.get((int(k_pid[i]), int(k_stream[i]), int(k_ts[i])), -1)
                if fid in col.flows_s:
                    k_corr[i] = fid if isinstance(fid, int) else -1
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
    else:
        # CPU-only: leaf cpu_ops per thread are the kernels
        c_ts, c_dur = _np(col.c_ts), _np(col.c_dur)
        if not len(c_ts):
            raise LlmtopError("trace has no kernel, memcpy or cpu_op events: nothing to import")
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
        warnings.append(
            f"CPU-only trace: the {len(leaf)} outermost cpu_ops of each thread (of {len(c_ts)}) are the "
            "kernels, so ops nested in them are not counted twice"
        )
    uniq_tracks, track = (
        np.unique(track_keys, axis=0, return_inverse=True)
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

    steps, step_source = _select_steps(col, {int(h & 0xFFFFFFFF) for h in np.unique(host[host >= 0])})
    kc = KernelColumns(col.names, k_name, k_ts, k_dur, track, launch, host, layer)
    batches, info = build_batches(kc, steps, names)

    dev_ids = sorted({int(d) for d in np.unique(uniq_tracks[:, 1])}) if gpu_trace else []
    key_back = {v: k for k, v in col.keys.items()}
    dev_names = sorted({col.devices[d] for d in dev_ids if d in col.devices})
    if not dev_names and len(set(col.devices.values())) == 1:
        dev_names = list(set(col.devices.values()))  # ROCm numbers agents differently from deviceProperties
    device = ", ".join(dev_names) if dev_names else ("CPU" if not gpu_trace else "GPU (no deviceProperties)")
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
    n_layers = len(np.unique(layer[layer >= 0]))
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
        timing="kineto/CUPTI" if gpu_trace else "kineto cpu_op",
        n_layers=n_layers,
        extra={
            "ranks": sorted(set(col.ranks)),
            "streams": streams,
            "tracks": tracks,
            "skipped": col.skipped,
            "warnings": warnings,
            "records": col.events,
            "step_source": step_source,
            "layer_source": "inferred" if info["inferred_layers"] else "annotations/names",
            "kernels_outside_steps": info["kernels_outside_steps"],
        },
    )
    return source, batches, col.skipped, warnings


# -- registration ----------------------------------------------------------------------------
def sniff(head: bytes) -> bool:
    """A JSON object or array of objects: any Chrome/Kineto trace (after metallic's narrower sniff)."""
    text = head_text(head)
    return text.startswith("{") or (text.startswith("[") and text[1:].lstrip()[:1] in ("{", "]"))


def read(path: Path, names: NameTable) -> ImportResult:
    source, batches, skipped, warnings = import_kineto([path], names)
    return ImportResult(source, batches, skipped, warnings, names)


FORMAT = register(TraceFormat("kineto", "Kineto JSON", sniff, read, priority=20))
