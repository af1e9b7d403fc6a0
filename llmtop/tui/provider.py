"""What the app needs from whatever produces the numbers: live session, replay or attach.

The app never sees events. Every refresh tick (default 4 Hz) it asks its provider for one finished
`Snapshot` (built by `llmtop.stats.Aggregator.snapshot`) plus the counter gauges and the pipeline
status, and swaps them into the panes. One interface means the same panes serve every source.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

if TYPE_CHECKING:
    from llmtop.collectors.pipeline import Pipeline
    from llmtop.stats.aggregator import Aggregator
    from llmtop.stats.snapshot import Snapshot


class ProviderStatus(TypedDict, total=False):
    """Pipeline state for the header. Every key is optional; absent means unknown."""

    kind: str  # "live", "replay", "attach", "import"
    state: str  # "running", "paused", "finished", "error"
    prompt: str  # current prompt (or "round 3 · prompt 2/8")
    errors: dict[str, str]  # collector name -> one-line error (its pane shows it, the rest runs on)
    behind: str  # non-empty when collectors or the aggregator cannot keep up (py-spy style warning)
    collector_cost_pct: float  # the collectors' own CPU time, percent of one core
    speed: float  # replay speed multiplier
    progress: float  # replay position, 0..1


class Counters(TypedDict, total=False):
    """Latest gauges for the device/process strip. Keys inside the dicts are optional too."""

    process: dict[str, float]  # cpu_pct, rss_bytes, threads
    process_error: str
    gpu: dict[str, float]  # util_pct, mem_used_bytes, mem_total_bytes, power_w, sm_clock_mhz, temp_c
    gpu_absent: str  # why there is no GPU strip ("no NVIDIA driver", "backend is cpu", ...)
    adapter: dict[str, Any]  # a WebGPU backend's adapter (SourceInfo.extra["adapter"]), shown without NVML


@runtime_checkable
class SnapshotProvider(Protocol):
    def snapshot(self, mode: str, group: str, sort: str, filter: str) -> Snapshot:
        """A finished `llmtop.stats.Snapshot` (has `.report`, `.series`, `.kernel_detail(name)`)."""
        ...

    def counters(self) -> Counters: ...

    def status(self) -> ProviderStatus: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def reset(self) -> None:
        """Forget what was aggregated so far (the next snapshot starts from empty)."""
        ...

    def set_speed(self, speed: float) -> float:
        """Replay speed; returns the speed now in effect. Live sources return their fixed 1.0."""
        ...


class AggregatorProvider:
    """A provider over a bare Aggregator: replaying a finished report, or tests.

    Pausing here is display-only: the app keeps the last snapshot, and the aggregator (fed by
    whoever owns it) keeps folding events, so nothing is lost while paused.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        kind: str = "live",
        counters: Counters | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.aggregator = aggregator
        self._kind = kind
        self._counters: Counters = counters if counters is not None else {}
        self._paused = False
        # The aggregator is fed from another thread in live use; snapshot and ingest share a lock.
        self.lock = lock or threading.Lock()

    def snapshot(self, mode: str, group: str, sort: str, filter: str) -> Snapshot:
        with self.lock:
            return self.aggregator.snapshot(mode=mode, group=group, sort=sort, filter=filter)

    def counters(self) -> Counters:
        return self._counters

    def set_counters(self, counters: Counters) -> None:
        self._counters = counters

    def status(self) -> ProviderStatus:
        return {"kind": self._kind, "state": "paused" if self._paused else "running"}

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def reset(self) -> None:
        with self.lock:
            self.aggregator.reset()

    def set_speed(self, speed: float) -> float:
        return 1.0


class Control(Protocol):
    """The collector that honours pause and speed: `llmtop.collectors.replay.ReplaySource`."""

    speed: float

    @property
    def paused(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def set_speed(self, speed: float) -> None: ...


class PipelineProvider:
    """Adapts `llmtop.collectors.pipeline.Pipeline` (live runs, replay, attach) to the protocol.

    `control` is the collector that honours pause/speed (a ReplaySource); without one, pause only
    freezes the display while the pipeline keeps collecting.
    """

    def __init__(self, pipeline: Pipeline, *, kind: str | None = None,
                 control: Control | None = None) -> None:
        self.pipeline = pipeline
        self.control = control
        self._kind = kind
        self._paused = False

    def snapshot(self, mode: str, group: str, sort: str, filter: str) -> Snapshot:
        return self.pipeline.snapshot(mode=mode, group=group, sort=sort, filter=filter)

    def counters(self) -> Counters:
        latest = self.pipeline.counters.latest()
        out: Counters = {}
        proc = latest.get("process")
        if proc is not None:
            out["process"] = dict(proc.values)
        gpus = sorted(k for k in latest if k.startswith("gpu"))
        if gpus:
            out["gpu"] = dict(latest[gpus[0]].values)
        else:
            st = self.pipeline.status()
            if "gpu" in st.absent:
                out["gpu_absent"] = st.absent["gpu"]
            elif any(c.status.name == "gpu" for c in st.collectors):
                out["gpu_absent"] = "no sample yet"
            else:
                out["gpu_absent"] = "no GPU collector for this source"
        src = self.pipeline.source
        adapter = src.extra.get("adapter") if src is not None else None
        if isinstance(adapter, dict):
            out["adapter"] = adapter
        return out

    def status(self) -> ProviderStatus:
        st = self.pipeline.status()
        errors: dict[str, str] = {}
        for c in st.collectors:
            # An unavailable GPU is not a failure: the strip already says why it is absent.
            if c.status.state == "error" and c.status.error:
                errors[c.status.name] = c.status.error
        for i, line in enumerate(st.errors):
            name, sep, msg = line.partition(": ")
            if not (sep and name in errors):
                errors[f"pipeline {i + 1}" if not sep else name] = msg if sep else line
        errors.update(st.notes)  # e.g. "link": "disconnected: 127.0.0.1:7070 (retrying)"
        src = self.pipeline.source
        out: ProviderStatus = {
            "kind": self._kind or (src.kind if src is not None else "live"),
            "errors": errors,
            "collector_cost_pct": sum(c.cpu_pct for c in st.collectors) + st.aggregator_cpu_pct,
        }
        if st.behind:
            out["behind"] = st.behind
        paused = self._paused or (self.control is not None and self.control.paused)
        out["state"] = "paused" if paused else ("finished" if self.pipeline.producers_done else "running")
        if st.activity:
            out["prompt"] = st.activity
        if self.control is not None:
            out["speed"] = float(self.control.speed)
        return out

    def pause(self) -> None:
        self._paused = True
        if self.control is not None:
            self.control.pause()

    def resume(self) -> None:
        self._paused = False
        if self.control is not None:
            self.control.resume()

    def reset(self) -> None:
        self.pipeline.reset()

    def set_speed(self, speed: float) -> float:
        if self.control is None:
            return 1.0
        self.control.set_speed(speed)
        return float(self.control.speed)
