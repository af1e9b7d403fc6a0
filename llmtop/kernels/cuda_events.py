"""CUDA event timing for the torch backend: the resolving recorder and the event-timed op variants.

The engine thread records an anchor event at `begin_step` and one (start, end) event pair around each op
launch; `CudaEventRecorder._resolve` (collector thread) turns them into host-clock rows once the step's
last event has completed (query(), never synchronize). `TorchOps` binds the `_x_cuda` variants of
`CudaTimedOps` when it runs timed on CUDA (see torch_backend.py).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llmtop.events import DECODE, NO_LAYER
from llmtop.kernels.base import KernelRecorder, SamplingParams
from llmtop.kernels.torch_sampling import sample_device, sample_finish


class CudaEventRecorder(KernelRecorder):
    """KernelRecorder whose rows carry CUDA event pairs, resolved lazily in `drain`.

    The engine thread records an anchor event at `begin_step` and the ops record one (start, end)
    pair per kernel; `end_step` hands (host anchor time, events) to the base class as `pending`.
    `_resolve` (collector thread) returns None until the step's last event has completed, then
    converts event times into host-clock rows and returns the events to the pool.
    """

    def __init__(self, names: Any = None, enabled: bool = True, track: int = 0, *, pool_size: int = 8192):
        super().__init__(names, enabled=enabled, track=track)
        # deque append/pop are atomic: the engine pops, the collector thread pushes back.
        self._pool: deque[Any] = deque(torch.cuda.Event(enable_timing=True) for _ in range(pool_size))
        self._events: list[Any] = []

    def event(self) -> Any:
        try:
            return self._pool.pop()
        except IndexError:  # collector fell behind: grow rather than reuse a pending event
            return torch.cuda.Event(enable_timing=True)

    def begin_step(self, phase: int, step: int, tokens: int, batch: int, ctx: int) -> None:
        super().begin_step(phase, step, tokens, batch, ctx)
        if self.enabled:
            anchor = self.event()
            anchor.record()
            self._events = [anchor]

    def end_step(self, pending: Any = None) -> None:
        if self.enabled and pending is None:
            pending = (self._step_t0, self._events)
            self._events = []
        super().end_step(pending)

    def _resolve(self, rows: list[tuple], pending: Any) -> list[tuple] | None:
        if pending is None:
            return rows
        t0, events = pending
        if not events[-1].query():
            return None
        anchor = events[0]
        out = []
        for i, r in enumerate(rows):
            s, e = events[1 + 2 * i], events[2 + 2 * i]
            start = t0 + int(anchor.elapsed_time(s) * 1e6)
            out.append((r[0], r[1], r[2], start, int(s.elapsed_time(e) * 1e6), r[5], r[6], r[7]))
        self._pool.extend(events)
        return out


class CudaTimedOps:
    """The timed CUDA variant of each TorchOps op: an event pair around the launch; rows get their times in
    CudaEventRecorder._resolve. Mixed into TorchOps, whose `_x_raw` ops, `_ids`, `_positions` and
    `recorder` (a CudaEventRecorder) these use."""

    recorder: Any
    _ids: dict[str, tuple[int, int]]

    def _pair(self) -> tuple[Any, Any]:
        rec = self.recorder
        s, e = rec.event(), rec.event()  # type: ignore[attr-defined]
        rec._events.append(s)  # type: ignore[attr-defined]
        rec._events.append(e)  # type: ignore[attr-defined]
        return s, e

    def _embedding_cuda(self, ids: np.ndarray, table: Any) -> Any:
        s, e = self._pair()
        s.record()
        y = self._embedding_raw(ids, table)
        e.record()
        nid, cid = self._ids["embedding"]
        self.recorder.add(nid, cid, NO_LAYER, 0, 0)
        return y

    def _rmsnorm_cuda(self, x: Any, weight: Any, eps: float, *, name: str, layer: int) -> Any:
        s, e = self._pair()
        s.record()
        y = self._rmsnorm_raw(x, weight, eps, name=name, layer=layer)
        e.record()
        nid, cid = self._ids[name]
        self.recorder.add(nid, cid, layer, 0, 0)
        return y

    def _linear_cuda(self, x: Any, weight: Any, bias: Any | None, *, name: str, layer: int) -> Any:
        s, e = self._pair()
        s.record()
        y = F.linear(x, weight, bias)
        e.record()
        nid, cid = self._ids[name]
        xs, ws = x.shape, weight.shape
        self.recorder.add(nid, cid, layer, 0, 0, xs[0] * xs[1], ws[0], ws[1])
        return y

    def _rope_cuda(self, q: Any, k: Any, positions: np.ndarray, *, layer: int) -> tuple[Any, Any]:
        self._positions(positions)  # host-side prep (H2D of positions) stays outside the GPU pair
        s, e = self._pair()
        s.record()
        y = self._rope_raw(q, k, positions, layer=layer)
        e.record()
        nid, cid = self._ids["rope"]
        self.recorder.add(nid, cid, layer, 0, 0)
        return y

    def _kv_write_cuda(self, k: Any, v: Any, positions: np.ndarray, *, layer: int) -> None:
        self._positions(positions)
        s, e = self._pair()
        s.record()
        self._kv_write_raw(k, v, positions, layer=layer)
        e.record()
        nid, cid = self._ids["memcpy:kv_write"]
        self.recorder.add(nid, cid, layer, 0, 0)

    def _attention_cuda(self, q: Any, positions: np.ndarray, *, layer: int, phase: int) -> Any:
        self._positions(positions)
        s, e = self._pair()
        s.record()
        y = self._attention_raw(q, positions, layer=layer, phase=phase)
        e.record()
        nid, cid = self._ids["attention:decode" if phase == DECODE else "attention:prefill"]
        self.recorder.add(nid, cid, layer, 0, 0)
        return y

    def _silu_mul_cuda(self, gate: Any, up: Any, *, layer: int) -> Any:
        s, e = self._pair()
        s.record()
        y = F.silu(gate, inplace=True).mul_(up)
        e.record()
        nid, cid = self._ids["silu_mul"]
        self.recorder.add(nid, cid, layer, 0, 0)
        return y

    def _add_cuda(self, a: Any, b: Any, *, name: str, layer: int) -> Any:
        s, e = self._pair()
        s.record()
        y = torch.add(a, b)
        e.record()
        nid, cid = self._ids[name]
        self.recorder.add(nid, cid, layer, 0, 0)
        return y

    def _sample_cuda(self, logits: Any, params: SamplingParams, generator: Any) -> np.ndarray:
        last = logits[:, -1, :]
        s, e = self._pair()
        s.record()
        dev = sample_device(last, params)
        e.record()
        nid, cid = self._ids["sampling"]
        self.recorder.add(nid, cid, NO_LAYER, 0, 0)
        # the D2H copy waits for the step (the loop's only sync); the host draw is outside the event pair
        return sample_finish(last, dev, params, generator)


__all__ = ["CudaEventRecorder", "CudaTimedOps"]
