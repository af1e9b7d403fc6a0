"""CUDA event timing for the torch backend and the agent: the resolving recorder and the event-timed ops.

What an event time is. A CUDA event completes when the stream reaches it, so the time between two events
is a span of the GPU *timeline*: the kernels launched between them plus any time the GPU sat idle waiting
for the host to launch them. On a GPU-bound op (a large prefill matmul) that is the kernel time; on a
launch-bound one (small-batch decode) it is mostly host launch time. The rows are labelled for what they
are ("cuda events": GPU-timeline spans); kernels' busy time comes from CUPTI (gpu_profile.py).

Recording (engine thread, no sync anywhere):
- `begin_step` caches each device's current stream for the step and records an anchor event on it;
  every op records events from a reusable per-device pool on that cached stream (`mark`), so no Python
  `Stream` object is built per record.
- Consecutive TorchOps ops share events: op i's end is op i+1's start (`start`), n + 1 events for n ops.
  That is sound only where nothing else is queued on the stream between them, so host-side prep that
  launches work (the step's position tables, the prefill's last-token gather) calls `cut()` first. The
  agent times user models whose code launches untimed kernels between modules, so it records pairs.
- `end_step` records an end event per device: the step's GPU span is anchor -> end, and its wall is
  max(host span, GPU span) (a forward returns before its kernels finish).
- Rows carry event indices in their start/dur fields until `drain` resolves them.

Resolving (collector thread, `drain`): a step is ready when every device's end event has completed
(query(), never synchronize); each event's time is read once against its device's anchor (one
elapsed_time per event, not two per op), mapped onto the host `perf_counter_ns` clock at the step's
begin, and the events go back to their pool.

Pool and drops. The pool is sized from the model (`reserve(events per step, steps in flight)`) and never
grows: when it runs dry (the drain fell behind, or nothing drains) the step keeps its host wall and
tokens but loses its kernel rows (kernel_ns = -1, untimed), and `dropped_steps` / `dropped_rows` count it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llmtop.events import DECODE, NO_LAYER
from llmtop.kernels.base import KernelRecorder, SamplingParams
from llmtop.kernels.torch_sampling import sample_device, sample_finish

STEPS_IN_FLIGHT = 64  # finished steps whose events may wait for the drain (the engine drains at 4 Hz)
_RESOLVED = ("resolved",)  # the `pending` of a `_done` entry whose rows drain() has resolved already


def _current_stream(device: int | None) -> Any:
    """The current stream of `device` (None: the current device); None on a build without CUDA, where
    only tests run this path (with fake events, whose record() ignores the stream)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.current_stream(device)


class _Lane:
    """One device: its event pool and the stream cached for the open step."""

    __slots__ = ("device", "pool", "stream")

    def __init__(self, device: int | None) -> None:
        self.device = device
        self.pool: deque[Any] = deque()  # append/pop are atomic: the engine pops, the drain pushes back
        self.stream: Any = None


class CudaEventRecorder(KernelRecorder):
    """KernelRecorder whose rows carry CUDA events, resolved lazily in `drain` (module docstring).

    `device`: the CUDA device index of the default lane (None: the current device). Further devices
    (a model split over GPUs) get lanes through `lane(index)` and record with `mark_on`.
    """

    def __init__(self, names: Any = None, enabled: bool = True, track: int = 0, *, pool_size: int = 1024,
                 device: int | None = None) -> None:
        super().__init__(names, enabled=enabled, track=track)
        self._lane0 = _Lane(device)
        self._lanes: list[_Lane] = [self._lane0]
        self._pool = self._lane0.pool
        self._stream: Any = None
        self._events: list[Any] = []
        self._foreign: dict[int, _Lane] = {}  # event index -> lane, for events not on the default lane
        self._bounds: list[tuple[_Lane, int]] = []  # per lane of the open step: its anchor's index
        self._last = -1  # index of the last event recorded when consecutive ops may share it, else -1
        self._short = False  # the open step ran out of events: it will be untimed
        self._untimed: set[int] = set()  # step numbers resolved without timings (drain patches them)
        self._splits: dict[int, Any] = {}  # a resolved step's start_ns -> its GpuSplit, for drain to patch in
        self.sampler: Any = None  # a gpu_profile.StepSampler: CUPTI busy/idle of one step every few seconds
        self.pool_size = 0
        self.dropped_steps = 0
        self.dropped_rows = 0
        self._grow(self._lane0, pool_size)

    # -- pool ---------------------------------------------------------------------------------------------
    def _grow(self, lane: _Lane, n: int) -> None:
        evs = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        if evs and torch.cuda.is_available():
            # record each once now, so the driver event exists before the hot path (cudaEventCreate there
            # would land inside the first steps' timings)
            s = torch.cuda.current_stream(lane.device)
            for e in evs:
                e.record(s)
        lane.pool.extend(evs)
        if lane is self._lane0:
            self.pool_size += n

    def reserve(self, events_per_step: int, steps_in_flight: int = STEPS_IN_FLIGHT) -> None:
        """Size every lane's pool for `steps_in_flight` finished steps of `events_per_step` events each
        (setup only: call before the first step)."""
        want = max(1, events_per_step) * max(1, steps_in_flight)
        for lane in self._lanes:
            have = len(lane.pool)
            if want > have:
                self._grow(lane, want - have)

    def lane(self, device: int | None) -> _Lane:
        """The lane of CUDA device `device` (created, with a pool as large as the default lane's)."""
        for ln in self._lanes:
            if ln.device == device:
                return ln
        ln = _Lane(device)
        self._lanes.append(ln)
        self._grow(ln, max(len(self._pool), 64))
        return ln

    @property
    def devices(self) -> list[int | None]:
        return [ln.device for ln in self._lanes]

    # -- engine thread: the hot path ----------------------------------------------------------------------
    def mark(self) -> int:
        """Record a pooled event on the default lane's cached stream: its step index (-1: pool empty)."""
        try:
            ev = self._pool.pop()
        except IndexError:
            self._short = True
            self._last = -1
            return -1
        ev.record(self._stream)
        evs = self._events
        evs.append(ev)
        self._last = n = len(evs) - 1
        return n

    def mark_on(self, lane: _Lane) -> int:
        """`mark` on another device's lane (a model split over GPUs)."""
        if lane is self._lane0:
            return self.mark()
        try:
            ev = lane.pool.pop()
        except IndexError:
            self._short = True
            self._last = -1
            return -1
        ev.record(lane.stream)
        evs = self._events
        evs.append(ev)
        n = len(evs) - 1
        self._foreign[n] = lane
        self._last = -1  # never shared across devices
        return n

    def start(self) -> int:
        """The start event of an op that directly follows the previous one: that op's end event when nothing
        was queued in between (`cut` not called), else a new one."""
        last = self._last
        return last if last >= 0 else self.mark()

    def cut(self) -> None:
        """Work was queued on the stream outside any op: the next op records its own start event."""
        self._last = -1

    # -- engine thread: steps -----------------------------------------------------------------------------
    def begin_step(self, phase: int, step: int, tokens: int, batch: int, ctx: int) -> None:
        if self.sampler is not None:
            self.sampler.before_step()  # a sampled step's profiler starts before its wall does
        super().begin_step(phase, step, tokens, batch, ctx)
        if not self.enabled:
            return
        self._events, self._foreign, self._short, self._bounds = [], {}, False, []
        for ln in self._lanes:
            ln.stream = _current_stream(ln.device)
        self._stream = self._lane0.stream
        for ln in self._lanes:
            self._bounds.append((ln, self.mark_on(ln)))
        self._last = self._bounds[0][1]  # the first op starts at the anchor (nothing queued in between)

    def _pending_droppable(self) -> bool:
        return False  # a pending step holds pooled events: the fixed pool bounds the backlog instead

    def end_step(self, pending: Any = None) -> None:
        sampler = self.sampler
        # A sampled step's split is known only after its wall: the slot keeps the drain from resolving
        # the step before after_step has filled it (else the split would miss the step's row).
        slot: list[Any] | None = [] if sampler is not None and sampler.active else None
        if self.enabled and pending is None:
            ends = [self.mark_on(ln) for ln, _ in self._bounds]
            if self._short:
                self.dropped_steps += 1
                self.dropped_rows += len(self.rows)
            pending = (self._events, self._foreign, self._bounds, ends, self._short, slot)
            self._events, self._foreign, self._bounds, self._last = [], {}, [], -1
        step, t0 = (self._step_meta[1] if self._step_meta is not None else -1), self._step_t0
        super().end_step(pending)
        if sampler is not None:  # ... and stops after its wall was taken
            split = sampler.after_step(step, time.perf_counter_ns() - t0)
            if slot is not None:
                slot.append(split)

    # -- collector thread ---------------------------------------------------------------------------------
    def _ready(self, pending: Any) -> bool:
        events, _, _, ends, short, slot = pending
        if slot is not None and not slot:  # the sampled step's profiler has not stopped yet
            return False
        if short:  # some marks failed: wait for whatever was recorded before handing it back
            return all(e.query() for e in events)
        return all(events[i].query() for i in ends)

    def _release(self, events: list[Any], foreign: dict[int, _Lane]) -> None:
        if not foreign:
            self._pool.extend(events)
            return
        p0 = self._pool
        for i, e in enumerate(events):
            ln = foreign.get(i)
            (ln.pool if ln is not None else p0).append(e)

    def _times(self, t0: int, pending: Any) -> tuple[np.ndarray, int]:
        """(host-clock ns of every event, GPU span of the step in ns)."""
        events, foreign, bounds, ends, _, _ = pending
        anchor0 = events[bounds[0][1]]
        el = anchor0.elapsed_time
        if not foreign:
            ms = [el(e) for e in events]
        else:
            anchors = {id(ln): events[i] for ln, i in bounds}
            ms = [(anchors[id(foreign[i])] if i in foreign else anchor0).elapsed_time(e)
                  for i, e in enumerate(events)]
        rel = np.asarray(ms, dtype=np.float64) * 1e6
        span = max(rel[e] - rel[a] for (_, a), e in zip(bounds, ends, strict=True))
        return t0 + rel.astype(np.int64), int(span)

    def drain(self) -> Any:
        """Resolve the finished steps whose events have completed (oldest first, stopping at the first that
        has not), then hand them to KernelRecorder.drain as ready rows."""
        done = self._done
        i = 0
        while i < len(done):
            meta, rows, t0, wall, pending = done[i]
            if pending is None or pending is _RESOLVED:
                i += 1
                continue
            if not self._ready(pending):
                break
            events, foreign, _, _, short, slot = pending
            if slot and slot[0] is not None:
                self._splits[t0] = slot[0]  # keyed by the step's start: step numbers restart per prompt
            if short:
                self._untimed.add(meta[1])
                out: list[tuple] = []
            else:
                at, span = self._times(t0, pending)
                wall = max(wall, span)
                out = [(r[0], r[1], r[2], int(at[r[3]]), int(at[r[4]] - at[r[3]]), r[5], r[6], r[7])
                       for r in rows]
            self._release(events, foreign)
            done[i] = (meta, out, t0, wall, _RESOLVED)
            i += 1
        batch = super().drain()
        if batch is not None and self._untimed:
            st = batch.steps
            hit = np.isin(st["step"], list(self._untimed))
            st["kernel_ns"][hit] = -1
            self._untimed.difference_update(st["step"][hit].tolist())
        if batch is not None and self._splits:
            st = batch.steps
            for i in np.flatnonzero(np.isin(st["start_ns"], list(self._splits))).tolist():
                sp = self._splits.pop(int(st["start_ns"][i]), None)
                # busy 0 reads "not sampled": a step without GPU work has no split to show
                if sp is not None and sp.busy_ns > 0:
                    st["busy_ns"][i], st["idle_ns"][i] = sp.busy_ns, sp.idle_ns
        return batch

    def _resolve(self, rows: list[tuple], pending: Any) -> list[tuple] | None:
        if pending is None or pending is _RESOLVED:
            return rows
        return None  # not resolved by `drain` yet: later steps wait for this one


class CudaTimedOps:
    """The timed CUDA variant of each TorchOps op. Consecutive ops share events (`start` / `mark`): the rows
    carry event indices that CudaEventRecorder resolves. Mixed into TorchOps, whose `_x_raw` ops, `_ids`,
    `_positions` and `recorder` (a CudaEventRecorder) these use."""

    recorder: Any
    _ids: dict[str, tuple[int, int]]

    def _prep_positions(self, positions: np.ndarray) -> None:
        """Build the step's position tables outside any op's events (they queue an H2D copy and gathers):
        when they are new, the next op records its own start event."""
        before = self._pos  # type: ignore[attr-defined]
        if self._positions(positions) is not before:  # type: ignore[attr-defined]
            self.recorder.cut()

    def _embedding_cuda(self, ids: np.ndarray, table: Any) -> Any:
        rec = self.recorder
        s = rec.start()
        y = self._embedding_raw(ids, table)  # type: ignore[attr-defined]
        e = rec.mark()
        nid, cid = self._ids["embedding"]
        rec.rows.append((nid, cid, NO_LAYER, s, e, 0, 0, 0))
        return y

    def _rmsnorm_cuda(self, x: Any, weight: Any, eps: float, *, name: str, layer: int) -> Any:
        rec = self.recorder
        s = rec.start()
        y = self._rmsnorm_raw(x, weight, eps, name=name, layer=layer)  # type: ignore[attr-defined]
        e = rec.mark()
        nid, cid = self._ids[name]
        rec.rows.append((nid, cid, layer, s, e, 0, 0, 0))
        return y

    def _linear_cuda(self, x: Any, weight: Any, bias: Any | None, *, name: str, layer: int) -> Any:
        rec = self.recorder
        s = rec.start()
        y = F.linear(x, weight, bias)
        e = rec.mark()
        nid, cid = self._ids[name]
        xs, ws = x.shape, weight.shape
        rec.rows.append((nid, cid, layer, s, e, xs[0] * xs[1], ws[0], ws[1]))
        return y

    def _rope_cuda(self, q: Any, k: Any, positions: np.ndarray, *, layer: int) -> tuple[Any, Any]:
        self._prep_positions(positions)
        rec = self.recorder
        s = rec.start()
        y = self._rope_raw(q, k, positions, layer=layer)  # type: ignore[attr-defined]
        e = rec.mark()
        nid, cid = self._ids["rope"]
        rec.rows.append((nid, cid, layer, s, e, 0, 0, 0))
        return y

    def _kv_write_cuda(self, k: Any, v: Any, positions: np.ndarray, *, layer: int) -> None:
        self._prep_positions(positions)
        rec = self.recorder
        s = rec.start()
        self._kv_write_raw(k, v, positions, layer=layer)  # type: ignore[attr-defined]
        e = rec.mark()
        nid, cid = self._ids["memcpy:kv_write"]
        rec.rows.append((nid, cid, layer, s, e, 0, 0, 0))

    def _attention_cuda(self, q: Any, positions: np.ndarray, *, layer: int, phase: int) -> Any:
        self._prep_positions(positions)
        rec = self.recorder
        s = rec.start()
        y = self._attention_raw(q, positions, layer=layer, phase=phase)  # type: ignore[attr-defined]
        e = rec.mark()
        nid, cid = self._ids["attention:decode" if phase == DECODE else "attention:prefill"]
        rec.rows.append((nid, cid, layer, s, e, 0, 0, 0))
        return y

    def _silu_mul_cuda(self, gate: Any, up: Any, *, layer: int) -> Any:
        rec = self.recorder
        s = rec.start()
        y = F.silu(gate, inplace=True).mul_(up)
        e = rec.mark()
        nid, cid = self._ids["silu_mul"]
        rec.rows.append((nid, cid, layer, s, e, 0, 0, 0))
        return y

    def _add_cuda(self, a: Any, b: Any, *, name: str, layer: int) -> Any:
        rec = self.recorder
        s = rec.start()
        y = torch.add(a, b)
        e = rec.mark()
        nid, cid = self._ids[name]
        rec.rows.append((nid, cid, layer, s, e, 0, 0, 0))
        return y

    def _sample_cuda(self, logits: Any, params: SamplingParams, generator: Any) -> np.ndarray:
        last = logits[:, -1, :]  # a view: no kernel
        rec = self.recorder
        s = rec.start()
        dev = sample_device(last, params)
        e = rec.mark()
        nid, cid = self._ids["sampling"]
        rec.rows.append((nid, cid, NO_LAYER, s, e, 0, 0, 0))
        rec.cut()  # the read-back copy below is not an op
        # the step's one wait: the D2H copy of the result into pinned memory, then an event wait; the host
        # draw is outside the events
        return sample_finish(last, dev, params, generator, readback=self._readback)  # type: ignore[attr-defined]


__all__ = ["STEPS_IN_FLIGHT", "CudaEventRecorder", "CudaTimedOps"]
