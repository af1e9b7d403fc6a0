"""GPU busy vs idle per step, from CUPTI kernel records (torch.profiler with CUDA activities, i.e. Kineto).

CUDA event pairs measure spans of the GPU timeline, idle gaps included (cuda_events.py). What the GPU really
did is in CUPTI's activity records: each kernel, memcpy and memset with its start and end on the device.
For one step, with its wall time from the host:
- busy: the union of those intervals (overlapping kernels on several streams count once);
- idle: the GPU span (first activity start -> last activity end) minus busy: the GPU waited between
  kernels, for the host to launch the next (launch-bound);
- host: the wall minus the GPU span (before the first kernel and after the last: host prep, the
  sampled token's read-back and the host draw).
A step is launch-bound when idle > busy. Only GPU-side timestamps are compared with each other and the wall
only with the span's length, so the profiler's clock never has to be mapped onto perf_counter_ns.

`StepSampler` profiles one step every `every_s` seconds (default 2): the profiler starts before the step's
begin and stops after its end, so its own start/stop cost (stopping flushes CUPTI's buffers: a sync) lands
between steps, never inside a measured wall. The pure functions take Kineto-like records, so the CPU tests
feed them a recorded trace.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

GPU_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})  # Kineto's GPU activity categories


@dataclass(slots=True, frozen=True)
class GpuSplit:
    """One step: busy, idle and host ns (busy + idle + host == wall when the GPU span fits in the wall)."""

    wall_ns: int
    busy_ns: int
    idle_ns: int
    host_ns: int
    activities: int

    @property
    def launch_bound(self) -> bool:
        return self.idle_ns > self.busy_ns

    def as_dict(self) -> dict[str, Any]:
        return {"wall_ns": self.wall_ns, "busy_ns": self.busy_ns, "idle_ns": self.idle_ns,
                "host_ns": self.host_ns, "activities": self.activities, "launch_bound": self.launch_bound}


def chrome_intervals(events: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """(N, 2) int64 [start, end) ns of the GPU activities in Chrome-trace records (Kineto's JSON: "cat",
    "ts" and "dur" in microseconds), relative to the first activity's start."""
    out = [(float(e["ts"]), float(e.get("dur", 0.0))) for e in events
           if e.get("ph") == "X" and str(e.get("cat", "")).lower() in GPU_CATEGORIES]
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    a = np.asarray(out, dtype=np.float64)
    # relative to the first start: epoch microseconds times 1e3 would exceed float64's exact integers
    start = np.rint((a[:, 0] - a[:, 0].min()) * 1e3).astype(np.int64)
    return np.stack([start, start + np.rint(a[:, 1] * 1e3).astype(np.int64)], axis=1)


def kineto_intervals(prof: Any) -> np.ndarray:
    """(N, 2) ns intervals of the CUDA activities a stopped `torch.profiler.profile` recorded."""
    import torch

    res = getattr(getattr(prof, "profiler", prof), "kineto_results", None)
    if res is None:
        return np.zeros((0, 2), dtype=np.int64)
    cuda = torch.autograd.DeviceType.CUDA
    iv = [(e.start_ns(), e.end_ns()) for e in res.events()
          if e.device_type() == cuda and str(e.activity_type()).lower() in GPU_CATEGORIES]
    return np.asarray(iv, dtype=np.int64).reshape(-1, 2)


def union_ns(iv: np.ndarray) -> int:
    """Total length of the union of [start, end) intervals."""
    if len(iv) == 0:
        return 0
    iv = iv[np.argsort(iv[:, 0], kind="stable")]
    start, end = iv[:, 0], np.maximum.accumulate(iv[:, 1])  # end: the furthest any interval so far reaches
    first = np.flatnonzero(np.r_[True, start[1:] > end[:-1]])  # runs of overlapping intervals begin here
    last = np.r_[first[1:] - 1, len(iv) - 1]
    return int(np.maximum(end[last] - start[first], 0).sum())


def split_step(iv: np.ndarray, wall_ns: int) -> GpuSplit:
    """Busy / idle / host of one step from its GPU activity intervals and its wall."""
    if len(iv) == 0:
        return GpuSplit(int(wall_ns), 0, 0, int(wall_ns), 0)
    span = int(iv[:, 1].max() - iv[:, 0].min())
    busy = union_ns(iv)
    return GpuSplit(int(wall_ns), busy, span - busy, max(0, int(wall_ns) - span), len(iv))


class StepSampler:
    """Profiles one step every `every_s` seconds with CUDA activities (recorder hooks: `before_step` just
    before a step's begin, `after_step(step, wall_ns)` just after its end); `splits` holds the last
    `keep` sampled steps as (step, GpuSplit). `profiler` builds a profiler to start (tests pass a fake)."""

    def __init__(self, every_s: float = 2.0, *, keep: int = 256, profiler: Callable[[], Any] | None = None,
                 intervals: Callable[[Any], np.ndarray] = kineto_intervals,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.splits: deque[tuple[int, GpuSplit]] = deque(maxlen=keep)
        self._make = profiler or _cuda_profiler
        self._intervals = intervals
        self._clock = clock
        self._next = clock()  # the first step is sampled
        self._prof: Any = None
        self.errors = 0

    def before_step(self) -> None:
        if self._prof is not None or self._clock() < self._next:
            return
        try:
            p = self._make()
            p.start()
        except Exception:  # no CUPTI, another profiler active: stop trying
            self.errors += 1
            self._next = float("inf")
            return
        self._prof = p

    @property
    def active(self) -> bool:
        """A profiler is running: the step now open is a sampled one."""
        return self._prof is not None

    def after_step(self, step: int, wall_ns: int) -> GpuSplit | None:
        """Stop a sampled step's profiler: its split (None when this step was not sampled or failed)."""
        p, self._prof = self._prof, None
        if p is None:
            return None
        split = None
        try:
            p.stop()
            split = split_step(self._intervals(p), wall_ns)
            self.splits.append((step, split))
        except Exception:
            self.errors += 1
        self._next = self._clock() + self.every_s
        return split


def _cuda_profiler() -> Any:
    import torch

    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])


__all__ = ["GPU_CATEGORIES", "GpuSplit", "StepSampler", "chrome_intervals", "kineto_intervals", "split_step",
           "union_ns"]
