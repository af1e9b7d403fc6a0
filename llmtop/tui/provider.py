"""What the app needs from whatever produces the numbers: live session, replay or attach.

The app never sees events. Every refresh tick (default 4 Hz) it asks its provider for one finished
`Snapshot` (built by `llmtop.stats.Aggregator.snapshot`) plus the counter gauges and the pipeline
status, and swaps them into the panes. One interface means the same panes serve every source.
"""

from __future__ import annotations

import math
import threading
import time
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
    position_s: float  # replay position, seconds of replayed time (shown in the footer)
    end_s: float  # the replay's length, once it has reached its end
    at_end: bool  # the replay sits at its end (waiting for a seek)


class ServerRow(TypedDict, total=False):
    """One row of the Servers pane: an attach target (or the "total" row), as `llmtop.attach.server_table`
    gives it, plus its recent history. Numbers are NaN when unknown or while the target is not connected;
    times in seconds, kv_cache and prefix_hit 0..1, preemptions/aborted/failed counted over the window."""

    label: str
    kind: str  # "agent", a server flavor ("vllm", "llamacpp", ...), or "total"
    link: str  # connecting / connected / disconnected / refused ("2/3 connected" on the total row)
    status: str  # the link plus its outages ("connected; disconnected 2.4 s")
    error: str | None
    model: str
    url: str
    source: str  # the CounterStore source of its samples ("" when it has none)
    gen_tok_s: float
    prompt_tok_s: float
    gen_tokens: float  # generated so far (lifetime, kept while disconnected)
    running: float
    waiting: float
    kv_cache: float
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p50_s: float
    itl_p95_s: float
    e2e_p50_s: float
    req_s: float
    prefix_hit: float
    preemptions: float
    aborted: float
    failed: float
    window_s: float  # what the window numbers cover now
    spark_s: float  # the span of the sparklines (the percentile window)
    tok_s_hist: list[tuple[float, float]]  # (time in s on the samples' clock, gen tok/s) over spark_s
    ttft_hist: list[tuple[float, float]]  # (time in s, TTFT p50 in s) over spark_s


class Counters(TypedDict, total=False):
    """Latest gauges for the device/process strip. Keys inside the dicts are optional too."""

    process: dict[str, float]  # cpu_pct, rss_bytes, threads
    process_error: str
    gpu: dict[str, float]  # util_pct, mem_used_bytes, mem_total_bytes, power_w, sm_clock_mhz, temp_c
    gpu_absent: str  # why there is no GPU strip ("no NVIDIA driver", "backend is cpu", ...)
    adapter: dict[str, Any]  # a WebGPU backend's adapter (SourceInfo.extra["adapter"]), shown without NVML
    servers: list[ServerRow]  # attach targets, then a "total" row when there are several
    servers_rate: list[tuple[float, float]]  # (time in s, gen tok/s) of the total or focused row


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

    def seek_by(self, delta_s: float) -> None: ...

    def restart(self) -> None: ...


SPARK_S = 30.0  # sparkline span when a row does not say (the scrapers' percentile window)
RATE_PLOT_S = 300.0  # the token-rate pane's plot of the servers' tok/s: the last five minutes


def _hist(store: Any, source: str, name: str, since_ns: int) -> list[tuple[float, float]]:
    # Absolute times (seconds on the samples' clock): between two scrapes the history, and so the row,
    # stays equal, and the pane skips redrawing it.
    return [(t / 1e9, v) for t, v in store.history(source, name, since_ns) if math.isfinite(v)]


class PipelineProvider:
    """Adapts `llmtop.collectors.pipeline.Pipeline` (live runs, replay, attach) to the protocol.

    `control` is the collector that honours pause/speed (a ReplaySource); without one, pause only
    freezes the display while the pipeline keeps collecting. An attach pipeline's "targets" table
    becomes `Counters["servers"]`, each row with the history of its scrapes from the CounterStore.
    """

    def __init__(self, pipeline: Pipeline, *, kind: str | None = None,
                 control: Control | None = None, against: Any = None) -> None:
        self.pipeline = pipeline
        self.control = control
        # `replay A --against B`: B folded whole (an Aggregator); the kernel table shows each row vs B
        self.against = against
        self._against_cache: tuple[tuple[str, str], Any] | None = None
        self._kind = kind
        self._paused = False
        self.server_focus: str | None = None  # the target the Servers pane drilled into (its rate plot)

    def version(self) -> tuple[Any, ...] | None:
        """Changes whenever a refresh could show something new; None: always (a source with events, whose
        window statistics age with time). A scrape-only source (attach to /metrics) is news only when an
        item is folded (twice a second: the scrapes, then the fleet total), a collector changes state or a
        target its link, so the app skips the ticks in between instead of redrawing the same numbers."""
        p = self.pipeline
        if p.ingested_events:
            return None
        # A collector's state, an attach target's link and a targets file's problem are what the header's
        # warnings are made of; read as attributes, since building the warnings costs a frame's worth.
        links = tuple((c.state, getattr(c, "link", None), getattr(c, "problem", None)) for c in p.collectors)
        return (p.folded_items, len(p.errors), id(p.source), links, self._paused, self.server_focus)

    def set_server_focus(self, label: str | None) -> None:
        """Which row's tok/s `servers_rate` follows: a target's label, or None for the total."""
        self.server_focus = label

    def _servers(self, out: Counters) -> None:
        rows: list[ServerRow] = self.pipeline.table("targets")  # type: ignore[assignment]
        if not rows:
            return
        store = self.pipeline.counters
        now = time.perf_counter_ns()
        for r in rows:
            src = r.get("source") or ""
            span = r.get("spark_s") or SPARK_S
            if src:
                since = now - int(span * 1e9)
                r["tok_s_hist"] = _hist(store, src, "gen_tok_s", since)
                r["ttft_hist"] = _hist(store, src, "ttft_p50_s", since)
        out["servers"] = rows
        # The rate plot follows the drilled-into target, else the total (or the only target).
        pick = next((r for r in rows if r.get("label") == self.server_focus), None) if self.server_focus \
            else rows[-1]
        if pick is not None and pick.get("source"):
            out["servers_rate"] = _hist(store, pick["source"], "gen_tok_s", now - int(RATE_PLOT_S * 1e9))

    def snapshot(self, mode: str, group: str, sort: str, filter: str) -> Snapshot:
        own = self._focused_own()
        if own is not None:  # drilled into one of several agents: its events alone
            return own.snapshot(mode=mode, group=group, sort=sort, filter=filter)
        return self.pipeline.snapshot(mode=mode, group=group, sort=sort, filter=filter)

    def target_alone(self) -> bool:
        """True while the panes show one attach target's own events (a drill-in into an agent row)."""
        return self._focused_own() is not None

    def _focused_own(self) -> Any:
        """The drilled-into attach target's own aggregator (`AgentCollector.own`), if it keeps one."""
        if self.server_focus is None:
            return None
        return next((own for c in list(self.pipeline.collectors)
                     if getattr(c, "label", None) == self.server_focus
                     and (own := getattr(c, "own", None)) is not None), None)

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
        self._servers(out)
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
            pos = getattr(self.control, "position_ns", None)
            if pos is not None:
                out["position_s"] = float(pos) / 1e9
            end = getattr(self.control, "end_ns", None)
            if end is not None:
                out["end_s"] = float(end) / 1e9
            out["at_end"] = bool(getattr(self.control, "at_end", False))
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
        for c in list(self.pipeline.collectors):  # each attach target's own statistics too
            own = getattr(c, "own", None)
            if own is not None:
                own.reset()

    def set_speed(self, speed: float) -> float:
        if self.control is None:
            return 1.0
        self.control.set_speed(speed)
        return float(self.control.speed)

    def compare(self, snapshot: Any) -> dict[str, dict[str, Any]]:
        """Per kernel-table row of `snapshot` (A, the replay): its diff against the baseline B in the same
        group-by and filter (stats/compare.py: B is the diff's "a" side, so delta = A - B); {} without B."""
        if self.against is None or snapshot is None:
            return {}
        from llmtop.stats.compare import diff_rows

        rep = snapshot.report
        key = (str(rep.get("group")), str(rep.get("filter") or ""))
        if self._against_cache is None or self._against_cache[0] != key:
            self._against_cache = (key, self.against.snapshot(mode="cumulative", group=key[0], sort="total",
                                                              filter=key[1]))
        base = self._against_cache[1]
        rows = diff_rows(base.report["kernels"], rep["kernels"], base.row_buckets(), snapshot.row_buckets())
        return {r["name"]: r for r in rows}

    @property
    def can_seek(self) -> bool:
        return self.control is not None and hasattr(self.control, "seek_by")

    def seek_by(self, delta_s: float) -> None:
        """Replay: jump `delta_s` seconds of replayed time (back refolds from the start)."""
        if self.can_seek:
            self.control.seek_by(delta_s)  # type: ignore[union-attr]

    def restart(self) -> None:
        if self.can_seek:
            self.control.restart()  # type: ignore[union-attr]
