"""The one event schema shared by live runs, attach, replay and import.

Events travel in columnar batches (numpy structured arrays) so that moving and
aggregating a million of them per second stays cheap: the hot path appends
plain tuples, a collector thread turns them into arrays, and `stats/` folds
whole arrays with vectorized numpy.

Kernel names are interned into integer ids. Every batch carries the names that
were interned since the previous batch of the same stream (`new_names`, whose
first id is `names_base`), so a consumer that applies batches in order can
always resolve an id, and a recording that is cut short stays self-describing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OP_CLASSES: tuple[str, ...] = (
    "matmul",
    "attention",
    "norm",
    "rope",
    "elementwise",
    "embedding",
    "sampling",
    "memcpy",
    "other",
    # appended, not inserted: op class ids are stored in recordings, so existing ids never move
    "comm",  # collectives: NCCL/RCCL all-reduce, all-gather, ...
    "npu",  # XRT (pyxrt) calls to an NPU: BO write / NPU run / BO read of each invocation, and its loading
)
OP_CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(OP_CLASSES)}

PHASES: tuple[str, ...] = ("prefill", "decode")
PREFILL, DECODE = 0, 1

NO_LAYER = -1  # kernels outside the decoder layers (embedding, final norm, lm_head, sampling)

# One kernel launch. start_ns is on the source's monotonic clock (time.perf_counter_ns for
# live CPU runs; GPU clocks are mapped onto it); dur_ns is what the timer measured.
# m, n, k are the matmul shape (output rows, output cols, reduction) and 0 otherwise.
# track separates concurrent timelines (CUDA stream, device, rank); 0 for a plain loop.
KERNEL_DTYPE = np.dtype(
    [
        ("name", "<u4"),
        ("op_class", "u1"),
        ("phase", "u1"),
        ("layer", "<i2"),
        ("track", "<u2"),
        ("step", "<i4"),
        ("batch", "<i4"),
        ("ctx", "<i4"),
        ("start_ns", "<i8"),
        ("dur_ns", "<i8"),
        ("m", "<i4"),
        ("n", "<i4"),
        ("k", "<i4"),
    ]
)

# One prefill or decode step: `tokens` new tokens produced for `batch` sequences whose longest
# context (after the step) is `ctx`. dur_ns is the host wall time of the whole step; kernel_ns the
# sum of its kernels' durations (filled by the timer; -1 when the step was not timed).
# busy_ns / idle_ns: on a step sampled under CUPTI (kernels/gpu_profile.py), the GPU's kernel-busy time
# (union of its kernel, memcpy and memset intervals) and its idle gaps inside the GPU span (waiting for
# the host to launch: launch-bound); both 0 when the step was not sampled (and in older recordings).
STEP_DTYPE = np.dtype(
    [
        ("phase", "u1"),
        ("track", "<u2"),
        ("step", "<i4"),
        ("tokens", "<i4"),
        ("batch", "<i4"),
        ("ctx", "<i4"),
        ("start_ns", "<i8"),
        ("dur_ns", "<i8"),
        ("kernel_ns", "<i8"),
        ("busy_ns", "<i8"),
        ("idle_ns", "<i8"),
    ]
)

EMPTY_KERNELS = np.zeros(0, dtype=KERNEL_DTYPE)
EMPTY_STEPS = np.zeros(0, dtype=STEP_DTYPE)


class NameTable:
    """Append-only interning of kernel names; ids are dense and start at 0.

    `intern` is safe to call from the engine thread while another thread calls `since`.
    """

    def __init__(self, names: list[str] | None = None) -> None:
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        for n in names or ():
            self.intern(n)

    def intern(self, name: str) -> int:
        i = self._ids.get(name)
        if i is None:
            with self._lock:
                i = self._ids.get(name)
                if i is None:
                    i = len(self._names)
                    self._names.append(name)
                    self._ids[name] = i
        return i

    def since(self, base: int) -> list[str]:
        return self._names[base:]

    def extend(self, base: int, names: list[str]) -> None:
        """Apply a batch's `new_names` (consumer side); tolerate re-sent names."""
        if base > len(self._names):
            raise ValueError(f"name table gap: have {len(self._names)} names, batch starts at {base}")
        for off, n in enumerate(names):
            if base + off >= len(self._names):
                self.intern(n)

    def __getitem__(self, i: int) -> str:
        return self._names[i]

    def __len__(self) -> int:
        return len(self._names)

    @property
    def names(self) -> list[str]:
        return self._names


@dataclass(slots=True)
class EventBatch:
    """A chunk of events from one source, in order. Either array may be empty."""

    kernels: np.ndarray = field(default_factory=lambda: EMPTY_KERNELS)
    steps: np.ndarray = field(default_factory=lambda: EMPTY_STEPS)
    names_base: int = 0
    new_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kernels) + len(self.steps)


# Durations and times beyond this are corrupt, not slow (146 years of ns; leaves room for sums in int64).
NS_LIMIT = 1 << 62


def drop_invalid(batch: EventBatch) -> tuple[EventBatch, int]:
    """(the batch without rows no source can have produced, how many were dropped).

    A kernel or step with a negative or absurd duration, an unknown phase or op class, or a negative
    token, batch, context or kernel-time field is corruption (a damaged file, a buggy writer): it is
    dropped and counted rather than folded into a negative TTFT. One vectorized pass per array.
    """
    k, s = batch.kernels, batch.steps
    k_ok = ((k["dur_ns"] >= 0) & (k["dur_ns"] < NS_LIMIT) & (k["phase"] < len(PHASES))
            & (k["op_class"] < len(OP_CLASSES)))
    s_ok = ((s["dur_ns"] >= 0) & (s["dur_ns"] < NS_LIMIT) & (s["phase"] < len(PHASES)) & (s["tokens"] >= 0)
            & (s["batch"] >= 0) & (s["ctx"] >= 0) & (s["kernel_ns"] >= -1) & (s["kernel_ns"] < NS_LIMIT)
            & (s["busy_ns"] >= 0) & (s["busy_ns"] < NS_LIMIT)
            & (s["idle_ns"] >= 0) & (s["idle_ns"] < NS_LIMIT))
    bad = int(len(k) - np.count_nonzero(k_ok) + len(s) - np.count_nonzero(s_ok))
    if not bad:
        return batch, 0
    return EventBatch(k[k_ok], s[s_ok], batch.names_base, batch.new_names), bad


@dataclass(slots=True)
class CounterSample:
    """One sample of a source's gauges, e.g. source="process", values={"cpu_pct": 97.0, ...}.

    Kernel events travel as columnar `EventBatch`es; counters are few (about one sample per second per
    source), so a small dataclass with a name -> value dict is enough and stays self-describing when
    recorded. t_ns is on the same clock as the kernel events (time.perf_counter_ns for live runs).
    """

    source: str
    t_ns: int
    values: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:  # counted as one "event" for drop accounting
        return 1


@dataclass(slots=True)
class Marker:
    """A point in time with a label (a new prompt round, a pause, a collector error)."""

    t_ns: int
    text: str

    def __len__(self) -> int:
        return 1


# What travels on a collector queue, in a recording and over the wire: the one event schema.
Item = EventBatch | CounterSample | Marker


@dataclass(slots=True)
class SourceInfo:
    """What produced the events: shown in the header, written in recording headers."""

    kind: str  # "live", "replay", "attach", "import"
    backend: str = ""  # cpu, cuda, wgpu, npu, or the importer's format ("kineto", "nsys", ...)
    device: str = ""  # human name of the device ("Intel Xeon (2 threads)", "NVIDIA H100 80GB")
    model: str = ""  # model name or file
    dtype: str = ""
    timing: str = ""  # how kernel durations were measured, e.g. "perf_counter_ns", "cuda events"
    max_context: int = 0  # the model's maximum context (for the attention projection); 0 = unknown
    n_layers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "backend": self.backend,
            "device": self.device,
            "model": self.model,
            "dtype": self.dtype,
            "timing": self.timing,
            "max_context": self.max_context,
            "n_layers": self.n_layers,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceInfo:
        return cls(
            kind=str(d.get("kind", "")),
            backend=str(d.get("backend", "")),
            device=str(d.get("device", "")),
            model=str(d.get("model", "")),
            dtype=str(d.get("dtype", "")),
            timing=str(d.get("timing", "")),
            max_context=int(d.get("max_context", 0) or 0),
            n_layers=int(d.get("n_layers", 0) or 0),
            extra=dict(d.get("extra") or {}),
        )


# -- NPU (XRT) kernel names ------------------------------------------------------------------------
# One XRT invocation (agent/xrt_hooks.py live; traces/importers/mlir_air.py from a log) is three kernel
# events of op class `npu`, back to back on the host clock, so their sum never exceeds the step wall:
# `xrt:<kernel>/bo_write` (host -> BO copies and TO_DEVICE syncs), `xrt:<kernel>/npu_run` (run set-up,
# start, wait: the NPU executing) and `xrt:<kernel>/bo_read` (FROM_DEVICE syncs, reading the outputs).
# Bytes ride in the shape fields, which an XRT call has no other use for: m = bytes synced (to the device
# on bo_write, from it on bo_read; clamped at 2**31 - 1), n = buffers synced; both 0 on npu_run. The slow
# set-up calls (hw_context, register_xclbin, kernel construction, ...) are `xrt:load/<call>`. Events
# outside every step (a process's set-up before its first step, e.g. weight preloads) are named with
# `xrt-setup:` instead, so the per-step attribution can tell them apart without a schema change.
XRT_PREFIX = "xrt:"
XRT_SETUP_PREFIX = "xrt-setup:"
XRT_PARTS: tuple[str, ...] = ("bo_write", "npu_run", "bo_read")
XRT_LOAD = "load"  # the pseudo-kernel of the set-up calls
I32_MAX = (1 << 31) - 1


def xrt_name(kernel: str, part: str, setup: bool = False) -> str:
    """'xrt:rms_gemv_rope/npu_run' (or 'xrt-setup:...' outside every step)."""
    return f"{XRT_SETUP_PREFIX if setup else XRT_PREFIX}{kernel}/{part}"


def parse_xrt_name(name: str) -> tuple[str, str, bool] | None:
    """(kernel, part, setup) of an XRT event name, or None for any other name. For a set-up call the
    kernel is XRT_LOAD and the part the call ('hw_context')."""
    if name.startswith(XRT_PREFIX):
        rest, setup = name[len(XRT_PREFIX):], False
    elif name.startswith(XRT_SETUP_PREFIX):
        rest, setup = name[len(XRT_SETUP_PREFIX):], True
    else:
        return None
    kernel, sep, part = rest.rpartition("/")
    if not sep or not kernel or not part:
        return None
    return kernel, part, setup


def track_label(t: dict[str, Any], *, rank_tag: str | None = None) -> str:
    """'rank 0 · GPU 0 · stream 7' (GPU tracks) or 'rank 0 · pid 12 · tid 34' (CPU-only traces)."""
    parts = [rank_tag if rank_tag is not None else f"rank {t.get('rank', 0)}"]
    if "device" in t:
        parts.append(f"GPU {t['device']}")
        if "stream" in t:
            parts.append(f"stream {t['stream']}")
    elif "pid" in t:
        parts.append(f"pid {t['pid']}")
        if "tid" in t:
            parts.append(f"tid {t['tid']}")
    return " · ".join(parts)
