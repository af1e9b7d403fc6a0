"""Encoding and GPU timing of the wgpu backend: one command encoder per step, a timestamp pair per op, and
the one submit + map per sync point that reads back both the result and the step's timestamps.

Every op records into one command encoder that is submitted only at sync points (sampling, `to_host`,
`synchronize`, end of step). With `timestamp-query-inside-passes` one long compute pass holds all
dispatches and `write_timestamp` brackets each op; otherwise each op gets its own pass with pass-level
`timestamp_writes`. The query set is resolved into a MAP_READ buffer once per step, in the same submit and
map that reads the sampled token back (no extra sync). Ticks are scaled by the queue's timestamp period
and each step is anchored on `time.perf_counter_ns` (`_emit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmtop.kernels.base import KernelRecorder
from llmtop.kernels.wgpu.resources import WTensor

QUERIES_PER_SET = 4096  # wgpu's per-query-set maximum


class Timing:
    """Mixin of WgpuOps: the step's command encoder, its timestamp queries and the readback that ends it."""

    device: Any
    queue: Any
    recorder: KernelRecorder
    mode: str  # "inside-pass", "per-pass" or "off"
    tick_ns: float
    _extras: Any
    _U: Any
    _dummy: Any
    _used_dynamic: set[str]
    _bind: Callable[[Any, tuple[Any, ...]], Any]
    _buffer: Callable[..., Any]

    def _init_timing(self, recorder: KernelRecorder) -> None:
        self._enc = None
        self._pass = None
        self._query_sets: list[Any] = []
        self._n_timed = 0
        self._pending: list[tuple[int, int, int, int, int, int]] = []  # name_id, class, layer, m, n, k
        self._first_submit_ns: int | None = None
        self._resolve_buf = None
        self._readback = None
        self._readback_size = 0
        self._hook_end_step(recorder)

    def _hook_end_step(self, recorder: KernelRecorder) -> None:
        # Timings of a step must reach the recorder before it closes the step; sampling already
        # flushes, this covers steps that end without a sync point.
        original = recorder.end_step

        def end_step(pending: Any = None) -> None:
            self._flush()
            original(pending)

        recorder.end_step = end_step  # type: ignore[method-assign]

    def _encoder(self) -> Any:
        if self._enc is None:
            self._enc = self.device.create_command_encoder()
        return self._enc

    def _close_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def _query_slot(self) -> tuple[Any, int]:
        i = self._n_timed
        set_i, slot = divmod(2 * i, QUERIES_PER_SET)
        while set_i >= len(self._query_sets):
            self._query_sets.append(self.device.create_query_set(type="timestamp", count=QUERIES_PER_SET))
        return self._query_sets[set_i], slot

    def _run(self, dispatches: list[tuple[Any, tuple[Any, ...], int, int]], name: str, layer: int,
             m: int = 0, n: int = 0, k: int = 0) -> None:
        """Encode one op (one or more dispatches) bracketed by one timestamp pair; queue its event row."""
        enc = self._encoder()
        if self.mode == "per-pass":
            qs, slot = self._query_slot()
            cp = enc.begin_compute_pass(timestamp_writes={
                "query_set": qs, "beginning_of_pass_write_index": slot, "end_of_pass_write_index": slot + 1})
        else:
            if self._pass is None:
                self._pass = enc.begin_compute_pass()
            cp = self._pass
            if self.mode == "inside-pass":
                qs, slot = self._query_slot()
                self._extras.write_timestamp(cp, qs, slot)
        for pl, bufs, gx, gy in dispatches:
            cp.set_pipeline(pl)
            cp.set_bind_group(0, self._bind(pl, bufs))
            cp.dispatch_workgroups(gx, gy)
        if self.mode == "per-pass":
            cp.end()
        elif self.mode == "inside-pass":
            self._extras.write_timestamp(cp, qs, slot + 1)
        nid, cls = self.recorder.ids[name]
        self._pending.append((nid, cls, layer, m, n, k))
        self._n_timed += 1

    def _submit(self) -> None:
        if self._enc is None:
            return
        self._close_pass()
        if self._first_submit_ns is None:
            self._first_submit_ns = time.perf_counter_ns()
        self.queue.submit([self._enc.finish()])
        self._enc = None
        self._used_dynamic.clear()

    def _ensure_readback(self, nbytes: int) -> Any:
        if self._readback is None or self._readback_size < nbytes:
            self._readback_size = 1 << max(12, (nbytes - 1).bit_length())
            self._readback = self._buffer(self._readback_size, self._U.MAP_READ | self._U.COPY_DST)
        return self._readback

    def _flush(self, result: WTensor | None = None, result_bytes: int = 0) -> np.ndarray | None:
        """Submit recorded work; resolve this step's timestamps and read back `result` in one map.

        Returns the first `result_bytes` of `result` as uint8, or None without a result.
        """
        n_ts = 2 * self._n_timed if self.mode != "off" else 0
        if self._enc is None and not self._pending and result is None:
            return None
        ts_bytes = n_ts * 8
        res_off = (ts_bytes + 255) // 256 * 256
        if result is None:
            # Nothing to read: map 16 bytes anyway as the completion fence (wgpu-py 0.32's
            # on_submitted_work_done is broken), which also gives the step a t_done.
            result, result_bytes = WTensor(self._dummy, (4,)), 16
        copy_bytes = (result_bytes + 3) // 4 * 4  # copies move whole 4-byte words
        total = (res_off + copy_bytes + 7) // 8 * 8
        enc = self._encoder()
        self._close_pass()
        rb = self._ensure_readback(total)
        if n_ts:
            if self._resolve_buf is None or self._resolve_buf.size < ts_bytes:
                self._resolve_buf = self._buffer(max(ts_bytes, len(self._query_sets) * QUERIES_PER_SET * 8),
                                                 self._U.QUERY_RESOLVE | self._U.COPY_SRC)
            for si, qs in enumerate(self._query_sets):
                lo = si * QUERIES_PER_SET
                cnt = min(n_ts - lo, QUERIES_PER_SET)
                if cnt <= 0:
                    break
                enc.resolve_query_set(qs, 0, cnt, self._resolve_buf, lo * 8)
            enc.copy_buffer_to_buffer(self._resolve_buf, 0, rb, 0, ts_bytes)
        enc.copy_buffer_to_buffer(result.buf, 0, rb, res_off, copy_bytes)
        t_submit = self._first_submit_ns
        self._submit()
        if t_submit is None:
            t_submit = self._first_submit_ns
        rb.map_sync("read", 0, total)
        t_done = time.perf_counter_ns()
        data = np.frombuffer(rb.read_mapped(0, total, copy=True), np.uint8)
        rb.unmap()
        if n_ts:
            self._emit(data[:ts_bytes].view(np.uint64), t_submit or t_done, t_done)
        out = data[res_off:res_off + result_bytes]
        if not n_ts:
            self._emit(None, t_submit or t_done, t_done)
        self._n_timed = 0
        self._first_submit_ns = None
        return out

    def _emit(self, ticks: np.ndarray | None, t_submit: int, t_done: int) -> None:
        """Convert GPU ticks to host-clock events; anchor the step's first GPU tick after its first submit."""
        rows = self._pending
        self._pending = []
        add = self.recorder.add
        if ticks is None or not rows:
            for nid, cls, layer, m, n, k in rows:
                add(nid, cls, layer, t_submit, 0, m, n, k)
            return
        t = ticks.astype(np.float64)
        begin, end = t[0::2], t[1::2]
        g0 = begin.min()
        span_ns = (end.max() - g0) * self.tick_ns
        # The GPU cannot start before the first submit nor finish after the map completed.
        anchor = min(t_submit, t_done - span_ns)
        starts = (anchor + (begin - g0) * self.tick_ns).astype(np.int64)
        durs = np.maximum((end - begin) * self.tick_ns, 0).astype(np.int64)
        for (nid, cls, layer, m, n, k), s, d in zip(rows, starts.tolist(), durs.tolist(), strict=True):
            add(nid, cls, layer, s, d, m, n, k)


__all__ = ["QUERIES_PER_SET", "Timing"]
