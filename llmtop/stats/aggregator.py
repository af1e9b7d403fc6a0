"""The Aggregator: folds EventBatches into bounded, mergeable statistics; hands out Snapshots.

Time: everything is keyed on event time (the source's clock), so replay at any speed gives the same
numbers. Events go into slices of `window_s / 20` by start time; the window is the 20 most recent
slices (the slice holding the newest event plus the 19 before it, i.e. between 95 % and 100 % of
`window_s`). Slices that fall out of the window are folded into an archive, so "cumulative" =
archive + live slices. Memory is bounded by the number of distinct (kernel, layer, phase, duration
bucket) cells seen, never by the number of events or the run length.

Ingestion is vectorized: per batch a fixed number of numpy passes (log for the bucket, two table
gathers for key and cell ids, np.add.at / np.bincount into the head slice); Python loops only run
over things that are few per batch (new names, new keys, slices touched, tracks, matmul shapes).
Batches smaller than COALESCE events are concatenated and folded together (fixed per-call numpy
overhead dominates tiny batches); results do not depend on batch boundaries, and snapshot() folds
anything pending first.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import OP_CLASS_ID, EventBatch, NameTable, SourceInfo
from llmtop.stats.buckets import bucket_index
from llmtop.stats.filter import parse_filter
from llmtop.stats.frozen import (
    N_TR_COLS,
    TR_DECODE_STEPS,
    TR_DECODE_TOKENS,
    TR_DECODE_WALL_NS,
    TR_KERNEL_NS,
    TR_KERNELS,
    TR_STEPS,
    Frozen,
    GenTrend,
    copy_gen,
)
from llmtop.stats.interning import CellIndex
from llmtop.stats.snapshot import Snapshot, build_snapshot
from llmtop.stats.store import N_CTX_BUCKETS, Store
from llmtop.stats.views import check_view

N_SLICES = 20
COALESCE = 8192  # small batches are folded together once this many kernel events are pending
COALESCE_STEPS = 256  # ... or this many step batches
COALESCE_S = 0.05  # ... or once the oldest pending batch waited this long (wall time), so the folding
# happens in the ingesting thread and a snapshot (the UI thread, 4 Hz) finds little left to fold
SERIES_LEN = 3600  # tok/s points kept (one per second of event time: one hour)
RATE_NS = 2_000_000_000  # "tok/s now" looks at the last 2 s of event time
SHAPES_PER_KERNEL = 32
COST_WINDOW_S = 5.0  # collector cost / drops are judged over the last 5 s of wall time
BEHIND_CPU_FRACTION = 0.8  # a collector using >= 80 % of a core is falling behind
CTX_WIDTH0 = 16  # initial context-bucket width (tokens) for the attention fit

_ATTN = OP_CLASS_ID["attention"]
_NPU = OP_CLASS_ID["npu"]
_H1, _H2, _H3, _H4 = (np.uint64(v) for v in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F,
                                                 0x165667B19E3779F9, 0x27D4EB2F165667C5))


@dataclass(slots=True)
class _Cost:
    total_s: float = 0.0
    recent: deque[tuple[float, float]] = field(default_factory=deque)
    first_t: float = 0.0
    first_cost: float = 0.0


class Aggregator:
    """Streaming statistics over EventBatches. Thread-safe: ingest and snapshot share a lock."""

    def __init__(self, window_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        try:
            w = float(window_s)
        except (TypeError, ValueError):
            raise LlmtopError(f"window must be a number of seconds, got {window_s!r}") from None
        if not (math.isfinite(w) and w > 0):
            raise LlmtopError(f"window must be a positive number of seconds, got {window_s!r}")
        self.window_s = w
        self._n_slices = N_SLICES
        self._slice_ns = max(1, round(w * 1e9 / N_SLICES))
        self._clock = clock
        self._lock = threading.RLock()
        self.names = NameTable()
        self._source = SourceInfo(kind="")
        self._ix = CellIndex()  # (name, layer, phase) -> key id; (key, bucket) -> cell id. Kept by reset.
        self._decode_steps_total = 0  # decode steps since the start, kept by reset: the header's `step`
        self._reset_state()

    # -- public API ---------------------------------------------------------------------------
    def set_source(self, info: SourceInfo) -> None:
        with self._lock:
            self._source = info

    def reset(self) -> None:
        """Forget all statistics (names and interning tables stay: later batches refer to them)."""
        with self._lock:
            self._reset_state()

    def note_dropped(self, collector: str, n: int) -> None:
        if n < 0:
            raise ValueError("dropped count must be >= 0")
        if n == 0:
            return
        with self._lock:
            self._dropped[collector] = self._dropped.get(collector, 0) + int(n)
            self._drop_recent.setdefault(collector, deque()).append((self._clock(), int(n)))

    def note_cost(self, collector: str, seconds: float) -> None:
        with self._lock:
            self._note_cost(collector, float(seconds))

    def ingest(self, batch: EventBatch) -> None:
        """Fold one batch. Small batches are coalesced (up to COALESCE events) and folded together:
        the statistics do not depend on how events are split into batches, and every snapshot()
        folds what is pending first, so nothing is ever hidden from a snapshot."""
        with self._lock:
            if batch.new_names:
                try:
                    self.names.extend(batch.names_base, batch.new_names)
                except ValueError as e:
                    raise LlmtopError(str(e)) from None
            k = batch.kernels
            if len(k):
                top = int(np.maximum.reduce(k["name"]))
                if top >= len(self.names):  # reject here, not at a later flush
                    raise LlmtopError(f"kernel name id {top} is not in the name table "
                                      f"({len(self.names)} names): batches applied out of order?")
                self._pend_k.append(k)
                self._pend_n += len(k)
            if len(batch.steps):
                self._pend_s.append(batch.steps)
            now = time.perf_counter()
            if not self._pend_t:
                self._pend_t = now
            if (self._pend_n >= COALESCE or len(self._pend_s) >= COALESCE_STEPS
                    or now - self._pend_t >= COALESCE_S):
                self._flush()

    def flush(self) -> None:
        """Fold pending (coalesced) batches now; an ingesting thread can call this when it goes idle."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._pend_t = 0.0
        if self._pend_k:
            k = self._pend_k[0] if len(self._pend_k) == 1 else np.concatenate(self._pend_k)
            self._pend_k, self._pend_n = [], 0
            self._ingest_kernels(k)
        if self._pend_s:
            st = self._pend_s[0] if len(self._pend_s) == 1 else np.concatenate(self._pend_s)
            self._pend_s = []
            self._ingest_steps(st)

    def snapshot(self, mode: str = "window", group: str = "kernel", sort: str = "total",
                 filter: str = "") -> Snapshot:
        check_view(mode, group, sort)
        parse_filter(filter)  # validate before taking the lock
        with self._lock:
            self._flush()
            fz = self._freeze(mode, group, sort, filter)
        return build_snapshot(fz)

    # -- state --------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._pend_k: list[np.ndarray] = []  # coalesced small batches, folded by _flush
        self._pend_s: list[np.ndarray] = []
        self._pend_n = 0
        self._pend_t = 0.0  # perf_counter when the oldest pending batch arrived (0: none pending)
        self._live: dict[int, Store] = {}
        self._head: int | None = None
        self._archive = Store()
        self._ctx_width = CTX_WIDTH0
        self._t_first: int | None = None
        self._now = 0
        self._events = 0
        self._run_carry: dict[int, int] = {}  # track -> code of its last kernel-step run
        # track -> [code, ctx, attention ns, slice, all kernels ns] of the open run
        self._open: dict[int, list[Any]] = {}
        self._tok_bins: deque[list[int]] = deque(maxlen=SERIES_LEN)
        self._recent_end = np.zeros(0, np.int64)
        self._recent_gen = np.zeros(0, np.float64)
        self._gen_cur = GenTrend()
        self._gen_prev: GenTrend | None = None
        self._context = 0
        self._shape_h = np.zeros(0, np.uint64)  # sorted hashes of known (name, m, n, k)
        self._shape_slot = np.zeros(0, np.int64)  # their accumulator slots
        self._shape_of: dict[int, dict[tuple[int, int, int], int]] = {}  # name -> shape -> slot
        self._shape_meta: list[tuple[int, int, int, int]] = []  # slot -> (name, m, n, k)
        self._shape_cnt = np.zeros(0, np.int64)
        self._shape_tot = np.zeros(0, np.float64)
        self._dropped: dict[str, int] = {}
        self._drop_recent: dict[str, deque[tuple[float, int]]] = {}
        self._costs: dict[str, _Cost] = {}
        self._tracks = np.zeros((0, N_TR_COLS))
        # Snapshot caches. The merge of every store except the head slice is reused until one of those
        # stores changes (`_cold_gen`) or the head moves; in steady state a snapshot then merges only
        # the head slice into a copy instead of re-merging 20 slices (+ the archive).
        self._cold_gen = 0
        self._merge_cache: dict[str, tuple[tuple[int, int | None], Store]] = {}
        self._cell_cache: dict[str, Any] = {}

    def _note_cost(self, collector: str, seconds: float) -> None:
        now = self._clock()
        c = self._costs.get(collector)
        if c is None:
            c = self._costs[collector] = _Cost(first_t=now, first_cost=seconds)
        c.total_s += seconds
        c.recent.append((now, seconds))
        while c.recent and c.recent[0][0] < now - COST_WINDOW_S:
            c.recent.popleft()

    # -- time slices --------------------------------------------------------------------------
    def _advance(self, s: int) -> None:
        if self._head is not None and s <= self._head:
            return
        self._head = s
        self._cold_gen += 1
        lo = s - self._n_slices + 1
        for k in [k for k in self._live if k < lo]:
            self._archive.merge_from(self._live.pop(k), self._ix.nk, self._ix.nc)
        for k, st in self._live.items():
            if k != s:
                st.freeze()

    def _store_for(self, s: int) -> Store:
        if self._head is None or s < self._head - self._n_slices + 1:
            self._cold_gen += 1
            return self._archive
        if s != self._head:
            self._cold_gen += 1  # a late event into an older slice: the cached merge is stale
        st = self._live.get(s)
        if st is None:
            st = self._live[s] = Store()
        return st

    @staticmethod
    def _parts(sl: np.ndarray) -> list[tuple[int, Any]]:
        s0 = int(sl[0])
        if len(sl) == 1 or bool((sl == s0).all()):
            return [(s0, slice(None))]
        if bool((sl[1:] >= sl[:-1]).all()):
            edges = [0, *(np.flatnonzero(sl[1:] != sl[:-1]) + 1).tolist(), len(sl)]
            return [(int(sl[a]), slice(a, b)) for a, b in itertools.pairwise(edges)]
        return [(s, np.flatnonzero(sl == s)) for s in np.unique(sl).tolist()]

    def _see_times(self, start: np.ndarray, dur: np.ndarray) -> None:
        t0 = _min(start)
        self._t_first = t0 if self._t_first is None else min(self._t_first, t0)
        self._now = max(self._now, _max(start + dur))

    # -- kernels ------------------------------------------------------------------------------
    def _ingest_kernels(self, k: np.ndarray) -> None:
        track = k["track"]
        if len(k) > 1 and _min(track) != _max(track):
            k = k[np.argsort(track, kind="stable")]  # per-track runs of steps must be contiguous
            track = k["track"]
        name = k["name"].astype(np.int64)
        if _max(name) >= len(self.names):
            raise LlmtopError(f"kernel name id {_max(name)} is not in the name table "
                              f"({len(self.names)} names): batches applied out of order?")
        phase = (k["phase"] != 0).view(np.int8).astype(np.int64)
        opc = k["op_class"]
        start = k["start_ns"]
        dur = k["dur_ns"]
        d = dur.astype(np.float64)
        kid = self._ix.key_ids(name, k["layer"].astype(np.int64), phase, opc, len(self.names))
        cell = self._ix.cell_ids(kid, bucket_index(d))
        self._events += len(k)
        self._track_kernels(track, d)
        self._see_times(start, dur)
        sl = start // self._slice_ns
        self._advance(_max(sl))
        nk, nc = self._ix.nk, self._ix.nc
        for s, ix in self._parts(sl):
            self._store_for(s).add_kernels(kid[ix], cell[ix], d[ix], nk, nc)

        # Steps: runs of one (track, phase, step) code. A run that continues the previous batch's last
        # run of its track is the same step. A step counts in the slice of its first event.
        code = (track.astype(np.int64) << 33) | (phase << 32) | (k["step"].astype(np.int64) & 0xFFFFFFFF)
        starts, firsts, lasts = _runs(code)
        rcode = code[starts].tolist()
        cont = np.zeros(len(starts), bool)
        for i in firsts.tolist():
            if self._run_carry.get(rcode[i] >> 33) == rcode[i]:
                cont[i] = True
        for i in lasts.tolist():
            self._run_carry[rcode[i] >> 33] = rcode[i]
        rsl = sl[starts]
        rph = phase[starts]
        if len(starts) == 1:
            if not cont[0]:
                self._store_for(int(rsl[0])).ksteps[int(rph[0])] += 1
        else:
            rs, rp = rsl[~cont], rph[~cont]
            if len(rs):
                smin = _min(rs)
                cnt = np.bincount((rs - smin) * 2 + rp)
                for j in np.flatnonzero(cnt).tolist():
                    self._store_for(smin + j // 2).ksteps[j % 2] += cnt[j]

        # Attention ms per decode step: attention-class time summed over each run.
        att = np.where((opc == _ATTN) & (phase == 1), d, 0.0)
        ys = np.add.reduceat(att, starts)
        if np.count_nonzero(ys):
            kall = np.add.reduceat(np.where(phase == 1, d, 0.0), starts)  # the step's kernels, all classes
            self._attention_runs(rcode, firsts.tolist(), lasts.tolist(), cont, ys,
                                 k["ctx"][starts].astype(np.int64), rsl, kall)

        mnk = k["m"] | k["n"] | k["k"]
        npu = opc == _NPU
        if np.count_nonzero(npu):  # XRT events carry bytes / buffers in m / n (events.py), not a shape
            sel = np.flatnonzero(npu)
            kb, kn, ks = k["m"][sel].astype(np.float64), k["n"][sel].astype(np.float64), kid[sel]
            for s, ix in self._parts(sl[sel]):
                self._store_for(s).add_bytes(ks[ix], kb[ix], kn[ix], nk)
            mnk = np.where(npu, 0, mnk)
        if np.count_nonzero(mnk):
            sm = np.flatnonzero(mnk)
            self._add_shapes(name[sm], k["m"][sm], k["n"][sm], k["k"][sm], d[sm])
            self._add_roofline(k[sm], kid[sm], d[sm], sl[sm])

    def _add_roofline(self, k: np.ndarray, kid: np.ndarray, d: np.ndarray, sl: np.ndarray) -> None:
        """Matmuls (every dimension > 0): elements moved and flops per key, what the roofline columns
        need (stats/roofline.py)."""
        full = np.flatnonzero((k["m"] > 0) & (k["n"] > 0) & (k["k"] > 0))
        if not len(full):
            return
        m_, n_, k_ = (k[f][full].astype(np.float64) for f in ("m", "n", "k"))
        elems, flops, ks, ds = n_ * k_ + m_ * k_ + m_ * n_, 2.0 * m_ * n_ * k_, kid[full], d[full]
        for s, ix in self._parts(sl[full]):
            self._store_for(s).add_shaped(ks[ix], elems[ix], flops[ix], ds[ix], self._ix.nk)

    def _track_rows(self, top: int) -> np.ndarray:
        if top >= len(self._tracks):
            grown = np.zeros((top + 1, N_TR_COLS))
            grown[: len(self._tracks)] = self._tracks
            self._tracks = grown
        return self._tracks

    def _track_kernels(self, track: np.ndarray, d: np.ndarray) -> None:
        lo, hi = _min(track), _max(track)
        t = self._track_rows(hi)
        if lo == hi:  # the common case (one timeline): no per-row pass
            t[lo, TR_KERNELS] += len(track)
            t[lo, TR_KERNEL_NS] += float(d.sum())
        else:
            t[: hi + 1, TR_KERNELS] += np.bincount(track, minlength=hi + 1)
            t[: hi + 1, TR_KERNEL_NS] += np.bincount(track, weights=d, minlength=hi + 1)

    def _track_steps(self, track: np.ndarray, phase: np.ndarray, gen: np.ndarray, wall: np.ndarray) -> None:
        hi = _max(track)
        t = self._track_rows(hi)
        dec = (phase == 1).astype(np.float64)
        t[: hi + 1, TR_STEPS] += np.bincount(track, minlength=hi + 1)
        t[: hi + 1, TR_DECODE_STEPS] += np.bincount(track, weights=dec, minlength=hi + 1)
        t[: hi + 1, TR_DECODE_TOKENS] += np.bincount(track, weights=gen * dec, minlength=hi + 1)
        t[: hi + 1, TR_DECODE_WALL_NS] += np.bincount(track, weights=wall * dec, minlength=hi + 1)

    def _attention_runs(self, rcode: list[int], firsts: list[int], lasts: list[int], cont: np.ndarray,
                        ys: np.ndarray, cs: np.ndarray, rsl: np.ndarray, ks: np.ndarray) -> None:
        """Commit finished steps' attention time (ys) and all-kernel time (ks); keep each track's last
        step open (it may continue in the next batch)."""
        commit = ys > 0
        extra: list[tuple[int, int, float, float]] = []  # finished open steps: (slice, ctx, ns, all ns)
        for i0, i1 in zip(firsts, lasts, strict=True):
            t = rcode[i0] >> 33
            op = self._open.pop(t, None)
            if op is not None:
                if cont[i0] and op[0] == rcode[i0]:  # the open step continues in this batch
                    op[2] += float(ys[i0])
                    op[4] += float(ks[i0])
                    commit[i0] = False
                    if i0 == i1:
                        self._open[t] = op
                        continue
                extra.append((op[3], op[1], op[2], op[4]))
            if ys[i1] > 0:
                commit[i1] = False
                self._open[t] = [rcode[i1], int(cs[i1]), float(ys[i1]), int(rsl[i1]), float(ks[i1])]
        c_sl, c_ctx, c_y, c_k = rsl[commit], cs[commit], ys[commit], ks[commit]
        if extra:
            c_sl = np.append(c_sl, [e[0] for e in extra])
            c_ctx = np.append(c_ctx, [e[1] for e in extra])
            c_y = np.append(c_y, [e[2] for e in extra])
            c_k = np.append(c_k, [e[3] for e in extra])
        if len(c_sl):
            self._ensure_ctx_width(_max(c_ctx))
            for s, ix in self._parts(c_sl):
                self._store_for(s).add_attention(c_ctx[ix], c_y[ix] / 1e6, self._ctx_width, c_k[ix] / 1e6)

    def _ensure_ctx_width(self, ctx: int) -> None:
        while ctx >= N_CTX_BUCKETS * self._ctx_width:
            self._ctx_width *= 2
            self._cold_gen += 1
            for st in (self._archive, *self._live.values()):
                st.rebin_attention()

    def _add_shapes(self, name: np.ndarray, m: np.ndarray, n: np.ndarray, k: np.ndarray,
                    d: np.ndarray) -> None:
        """Count/total per (kernel, m, n, k). Known shapes are found by hash with searchsorted, so the
        per-batch cost is one np.unique and one np.add.at; only new shapes run Python code."""
        h = (name.astype(np.uint64) * _H1) ^ (m.astype(np.uint64) * _H2) ^ (n.astype(np.uint64) * _H3) \
            ^ (k.astype(np.uint64) * _H4)
        nh = len(self._shape_h)
        if nh:
            pos = np.minimum(np.searchsorted(self._shape_h, h), nh - 1)
            slots = np.where(self._shape_h[pos] == h, self._shape_slot[pos], -1)
        else:
            slots = np.full(len(h), -1, np.int64)
        miss = slots < 0
        if np.count_nonzero(miss):
            mi = np.flatnonzero(miss)
            u, first = np.unique(h[mi], return_index=True)
            new_h, new_s = [], []
            for hv, i in zip(u.tolist(), mi[first].tolist(), strict=True):
                nid = int(name[i])
                per = self._shape_of.setdefault(nid, {})
                key = (int(m[i]), int(n[i]), int(k[i]))
                if key not in per and len(per) >= SHAPES_PER_KERNEL:
                    key = (-1, -1, -1)  # "other shapes" (its hashes are not cached: stays bounded)
                if key not in per:
                    per[key] = len(self._shape_meta)
                    self._shape_meta.append((nid, *key))
                slots[mi[h[mi] == hv]] = per[key]
                if key[0] >= 0:
                    new_h.append(hv)
                    new_s.append(per[key])
            if new_h:
                hh = np.concatenate([self._shape_h, np.array(new_h, np.uint64)])
                ss = np.concatenate([self._shape_slot, np.array(new_s, np.int64)])
                o = np.argsort(hh)
                self._shape_h, self._shape_slot = hh[o], ss[o]
            need = len(self._shape_meta)
            if need > len(self._shape_cnt):
                cap = max(64, 2 * need)
                grow = cap - len(self._shape_cnt)
                self._shape_cnt = np.concatenate([self._shape_cnt, np.zeros(grow, np.int64)])
                self._shape_tot = np.concatenate([self._shape_tot, np.zeros(grow)])
        np.add.at(self._shape_cnt, slots, 1)
        np.add.at(self._shape_tot, slots, d)

    # -- steps --------------------------------------------------------------------------------
    def _ingest_steps(self, st: np.ndarray) -> None:
        phase = (st["phase"] != 0).astype(np.int64)
        tokens = st["tokens"].astype(np.float64)
        batch = st["batch"].astype(np.float64)
        ctx = st["ctx"].astype(np.float64)
        start, dur = st["start_ns"], st["dur_ns"]
        wall = dur.astype(np.float64)
        kern = st["kernel_ns"].astype(np.float64)
        busy, idle = st["busy_ns"].astype(np.float64), st["idle_ns"].astype(np.float64)
        # `tokens` is the step's total over the batch (engine: prefill = sum of prompt lengths, decode =
        # active sequences). A prefill also samples each sequence's first token: `batch` generated.
        proc = tokens
        gen = np.where(phase == 1, tokens, batch)
        self._track_steps(st["track"], phase, gen, wall)
        self._see_times(start, dur)
        sl = start // self._slice_ns
        self._advance(int(sl.max()))
        for s, ix in self._parts(sl):
            self._store_for(s).add_steps(phase[ix], gen[ix], proc[ix], ctx[ix], wall[ix], kern[ix],
                                         busy[ix], idle[ix])
        self._context = int(st["ctx"][-1])
        self._decode_steps_total += int(np.count_nonzero(phase == 1))
        end = start + np.maximum(dur, 0)
        self._add_tok_bins(end, gen)
        keep = self._recent_end > self._now - RATE_NS
        self._recent_end = np.concatenate([self._recent_end[keep], end])
        self._recent_gen = np.concatenate([self._recent_gen[keep], gen])
        # Per-token trend: decode steps after the latest prefill.
        pre = np.flatnonzero(phase == 0).tolist()
        bounds = [0, *pre, len(st)]
        for j, (a, b) in enumerate(itertools.pairwise(bounds)):
            if j > 0:  # this segment starts with a prefill: a new generation
                if self._gen_cur.n:
                    self._gen_prev = self._gen_cur
                self._gen_cur = GenTrend()
            seg = slice(a, b)
            dm = phase[seg] == 1
            self._gen_cur.add(wall[seg][dm])

    def _add_tok_bins(self, end: np.ndarray, gen: np.ndarray) -> None:
        sec = end // 1_000_000_000
        u, inv = np.unique(sec, return_inverse=True)
        tot = np.bincount(inv, weights=gen)
        bins = self._tok_bins
        for s, t in zip(u.tolist(), tot.tolist(), strict=True):
            if not bins or s > bins[-1][0]:
                last = bins[-1][0] if bins else s - 1
                for z in range(max(last + 1, s - SERIES_LEN), s):
                    bins.append([z, 0])
                bins.append([s, t])
            else:
                for bn in reversed(bins):  # a late step: find its bin if it is still kept
                    if bn[0] == s:
                        bn[1] += t
                        break
                    if bn[0] < s:
                        break

    # -- snapshot -----------------------------------------------------------------------------
    def _freeze(self, mode: str, group: str, sort: str, filt: str) -> Frozen:
        ix = self._ix
        nk, nc, ns = ix.nk, ix.nc, len(self._shape_meta)
        lo = (self._head - self._n_slices + 1) if self._head is not None else 0
        merged = self._merged(mode, nk, nc)
        if mode == "window":
            # Attention growth is about context, which a window of seconds cannot span (the default run's
            # context grows for minutes): its moments are always since the start (or the last reset).
            att_stores = [self._archive, *self._live.values()]
            merged.att = np.sum([st.att for st in att_stores], axis=0)
            merged.att_min = np.min([st.att_min for st in att_stores], axis=0)
            merged.att_max = np.max([st.att_max for st in att_stores], axis=0)
        for _code, c, y, _slice, kn in self._open.values():
            merged.add_attention(np.array([c]), np.array([y / 1e6]), self._ctx_width, np.array([kn / 1e6]))
        t_first = self._t_first if self._t_first is not None else 0
        if mode == "window" and self._head is not None:
            span = self._now - max(t_first, lo * self._slice_ns)
        else:
            span = self._now - t_first
        tok_now: float | None = None
        if self._t_first is not None and len(self._recent_end):
            elapsed = min(RATE_NS, self._now - self._t_first)
            if elapsed > 0:
                recent = self._recent_end > self._now - RATE_NS
                tok_now = float(self._recent_gen[recent].sum()) / (elapsed / 1e9)
        bins = np.array([b for b in self._tok_bins if b[0] < self._now // 1_000_000_000], np.float64)
        bins = bins.reshape(-1, 2)
        if len(bins):
            bins[:, 0] -= t_first // 1_000_000_000
        gen, kind = self._gen_cur, "current"
        if gen.n < 2 and self._gen_prev is not None:
            gen, kind = self._gen_prev, "previous"
        now_w = self._clock()
        collectors: dict[str, dict[str, Any]] = {}
        for cname, c in self._costs.items():
            while c.recent and c.recent[0][0] < now_w - COST_WINDOW_S:
                c.recent.popleft()
            elapsed = now_w - c.first_t
            if elapsed >= COST_WINDOW_S:
                frac = sum(x for t, x in c.recent if t > now_w - COST_WINDOW_S) / COST_WINDOW_S
            else:  # a sample is the work done before it: the first one predates `elapsed`
                frac = (sum(x for _, x in c.recent) - c.first_cost) / max(elapsed, 1.0)
            collectors[cname] = {"cost_s": c.total_s, "cpu_pct": 100.0 * frac,
                                 "behind": frac >= BEHIND_CPU_FRACTION}
        for cname, dq in self._drop_recent.items():
            while dq and dq[0][0] < now_w - COST_WINDOW_S:
                dq.popleft()
            row = collectors.setdefault(cname, {"cost_s": 0.0, "cpu_pct": 0.0, "behind": False})
            row["dropped_recent"] = sum(x for _, x in dq)
            row["behind"] = bool(row["behind"] or row["dropped_recent"] > 0)
        return Frozen(
            store=merged,
            names=list(self.names.names),
            key_name=ix.k_name[:nk].copy(),
            key_layer=ix.k_layer[:nk].copy(),
            key_phase=ix.k_phase[:nk].copy(),
            key_opc=ix.k_opc[:nk].copy(),
            cell_key=ix.c_key[:nc].copy(),
            cell_bucket=ix.c_bucket[:nc].copy(),
            mode=mode,
            group=group,
            sort=sort,
            filter=filt,
            window_s=self.window_s,
            source=self._source.to_dict(),
            span_s=max(0, span) / 1e9,
            events=self._events,
            context=self._context,
            decode_steps_total=self._decode_steps_total,
            tok_s_now=tok_now,
            tok_bins=bins,
            gen=copy_gen(gen) if gen.n else None,
            gen_kind=kind,
            shapes=(list(self._shape_meta), self._shape_cnt[:ns].copy(), self._shape_tot[:ns].copy()),
            dropped=dict(self._dropped),
            collectors=collectors,
            cell_cache=self._cell_cache,
            tracks=self._tracks.copy(),
        )

    def _merged(self, mode: str, nk: int, nc: int) -> Store:
        """The stores of `mode` merged into a fresh Store: cached merge of the cold stores + the head."""
        head = self._live.get(self._head) if self._head is not None else None
        key = (self._cold_gen, self._head)
        hit = self._merge_cache.get(mode)
        if hit is None or hit[0] != key:
            cold = [st for s, st in self._live.items() if st is not head]
            if mode == "cumulative":
                cold.insert(0, self._archive)
            hit = self._merge_cache[mode] = (key, Store.merged(cold, nk, nc))
        out = hit[1].copy()
        if head is not None:
            out.merge_from(head, nk, nc)
        else:
            out.ensure_keys(nk)
            out.dense(nc)
        return out


def _min(a: np.ndarray) -> int:
    return int(np.minimum.reduce(a))  # skips ndarray.min's Python wrapper: this runs on every batch


def _max(a: np.ndarray) -> int:
    return int(np.maximum.reduce(a))


def _runs(code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start index of each run of equal codes; indices (into the runs) of each track's first and last run."""
    chg = np.empty(len(code), bool)
    chg[0] = True
    np.not_equal(code[1:], code[:-1], out=chg[1:])
    starts = np.flatnonzero(chg)
    rt = code[starts] >> 33
    tchg = np.empty(len(starts), bool)
    tchg[0] = True
    np.not_equal(rt[1:], rt[:-1], out=tchg[1:])
    firsts = np.flatnonzero(tchg)
    lasts = np.append(firsts[1:] - 1, len(starts) - 1)
    return starts, firsts, lasts
