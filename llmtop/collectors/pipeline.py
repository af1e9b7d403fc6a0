"""The pipeline: collectors -> one bounded queue -> an aggregator thread -> Aggregator (+ recording).

The UI never touches collectors or the queue: it calls `pipeline.snapshot(...)` at its refresh rate
(taken under the same lock the aggregator thread ingests under) and `pipeline.status()` for the
header (drops, collector cost, errors) and `pipeline.counters` for the device/process strip.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llmtop.collectors.base import ERROR, RUNNING, UNAVAILABLE, Collector, CollectorStatus, Rewind
from llmtop.collectors.counters import CounterStore
from llmtop.collectors.queue import BoundedQueue
from llmtop.errors import LlmtopError
from llmtop.events import CounterSample, EventBatch, Item, Marker, SourceInfo

if TYPE_CHECKING:
    from llmtop.collectors.engine import DecodeEngine
    from llmtop.collectors.engine_worker import EngineSpec
    from llmtop.collectors.replay import ReplaySource
    from llmtop.kernels.base import SamplingParams
    from llmtop.model.engine import Generation

AGGREGATOR = "aggregator"  # the name the aggregator thread's own cost is reported under


@dataclass(slots=True, frozen=True)
class CollectorCost:
    status: CollectorStatus
    cpu_pct: float  # % of one core over the last report interval


class Sink(Protocol):
    """What the pipeline folds into: `llmtop.stats.Aggregator` (collectors do not import stats/)."""

    def set_source(self, info: SourceInfo) -> None: ...

    def ingest(self, batch: EventBatch) -> None: ...

    def note_dropped(self, collector: str, n: int) -> None: ...

    def note_cost(self, collector: str, seconds: float) -> None: ...

    def snapshot(self, mode: str = ..., group: str = ..., sort: str = ..., filter: str = ...) -> Any: ...

    def reset(self) -> None: ...


class Recorder(Protocol):
    """Where every folded item is teed: `llmtop.traces.recording.RecordingWriter`."""

    records_written: int

    def write(self, item: Item, t_ns: int | None = None) -> None: ...

    def close(self) -> None: ...


RECORDING_STOPPED = "recording stopped"  # prefix of the error a failed --record writer leaves (disk full)


@dataclass(slots=True, frozen=True)
class PipelineStatus:
    """Everything the header and the device strip show about the pipeline, built in one place."""

    collectors: list[CollectorCost]
    aggregator_cpu_pct: float
    queue_fill: float  # 0..1
    dropped_events: int  # total over all collectors since start
    recorded_records: int
    behind: str | None  # py-spy style warning line, None when keeping up
    errors: list[str]  # one line each: collectors that died, recording / ingest failures
    activity: str = ""  # what the producer is doing (the engine's "#3 prompt"); "" when nothing
    absent: dict[str, str] = field(default_factory=dict)  # collector -> why it delivers nothing
    notes: dict[str, str] = field(default_factory=dict)  # source-specific warnings (an attach link down)


class Pipeline:
    """Owns the collectors, the queue, the aggregator thread and the optional recording writer.

    aggregator: llmtop.stats.Aggregator (ingest/set_source/note_dropped/note_cost/snapshot/reset).
    note_dropped and note_cost are called with increments since the previous call (events, CPU s).
    writer: a RecordingWriter (or anything with write(item) / close()); every item the aggregator
    sees is teed to it, in order, and it is closed by stop().
    """

    def __init__(self, aggregator: Sink, *, writer: Recorder | None = None,
                 queue: BoundedQueue[Item] | None = None, counter_history: int = 600,
                 report_interval: float = 0.5, max_markers: int = 200) -> None:
        self.aggregator = aggregator
        self.writer = writer
        self._notes: dict[str, Callable[[], str | None]] = {}
        self._tables: dict[str, Callable[[], list[dict[str, Any]]]] = {}
        self.queue: BoundedQueue[Item] = queue if queue is not None else BoundedQueue()
        self.collectors: list[Collector] = []
        self.counters = CounterStore(counter_history)
        self.markers: deque[Marker] = deque(maxlen=max_markers)
        self.report_interval = report_interval
        self.source: SourceInfo | None = None
        self.lock = threading.Lock()  # guards the aggregator against snapshot/ingest races
        self.errors: list[str] = []
        self.ingested_events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._agg_cpu = 0.0
        self._cpu_pct: dict[str, float] = {}
        self._reported_drops: dict[str, int] = {}
        self._reported_cpu: dict[str, float] = {}
        self._last_report = time.monotonic()
        self._drops_at_last_report = 0
        self._behind: str | None = None
        self._folded_items = 0

    # -- setup -----------------------------------------------------------------------------
    def add(self, collector: Collector) -> Collector:
        self.collectors.append(collector)
        if self._thread is not None:
            collector.start(self.queue)
        return collector

    def remove(self, collector: Collector, timeout: float = 5.0) -> None:
        """Stop one collector and drop it (a target taken off an attach list); what it delivered stays.

        The list is replaced, not edited in place, so a status() iterating the old one is not disturbed."""
        collector.stop()
        self.collectors = [c for c in self.collectors if c is not collector]
        collector.join(timeout)
        close = getattr(collector, "close", None)
        if close is not None:
            close()

    def add_note(self, name: str, fn: Callable[[], str | None]) -> None:
        """A source-specific warning for the header: `fn()` is asked at every status(); None hides it."""
        self._notes[name] = fn

    def add_table(self, name: str, fn: Callable[[], list[dict[str, Any]]]) -> None:
        """Source-specific rows for a pane (attach: one row per target); `fn()` is asked by `table(name)`.

        The source that knows its rows registers them here, so the UI reads them without importing it."""
        self._tables[name] = fn

    def note_lines(self) -> dict[str, str]:
        """The source-specific warnings showing now (name -> line)."""
        return {name: line for name, fn in self._notes.items() if (line := fn())}

    @property
    def folded_items(self) -> int:
        """Items folded so far (batches, counter samples, markers): grows whenever there is news."""
        return self._folded_items

    def table(self, name: str) -> list[dict[str, Any]]:
        """The rows registered under `name`, fresh; [] when none are."""
        fn = self._tables.get(name)
        return fn() if fn is not None else []

    def set_source(self, source: SourceInfo) -> None:
        self.source = source
        with self.lock:
            self.aggregator.set_source(source)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("pipeline already started")
        self._thread = threading.Thread(target=self._run, name="llmtop-aggregator", daemon=True)
        self._thread.start()
        for c in self.collectors:
            c.start(self.queue)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop collectors, fold what is still queued, close the recording. Idempotent."""
        deadline = time.monotonic() + timeout
        for c in self.collectors:
            c.stop()
        for c in self.collectors:
            c.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        for c in self.collectors:
            close = getattr(c, "close", None)
            if close is not None:
                close()
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- UI side ---------------------------------------------------------------------------
    def snapshot(self, **kw: Any) -> Any:
        with self.lock:
            return self.aggregator.snapshot(**kw)

    def reset(self) -> None:
        with self.lock:
            self.aggregator.reset()
        self.counters.clear()

    @property
    def producers_done(self) -> bool:
        """Every collector finished (or never ran) — a non-loop run or a replay has ended (a replay kept
        open for seeking counts as done while it waits at its end)."""
        return all(not c.alive or getattr(c, "at_end", False) for c in self.collectors)

    @property
    def done(self) -> bool:
        """Producers finished and everything they queued has been folded (and recorded)."""
        return self.producers_done and self._folded_items == self.queue.put_items

    def wait_done(self, timeout: float | None = None, poll: float = 0.05) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)
        return True

    def status(self) -> PipelineStatus:
        costs = [CollectorCost(c.status(), self._cpu_pct.get(c.name, 0.0)) for c in self.collectors]
        errors = list(self.errors)
        absent: dict[str, str] = {}
        for cc in costs:
            c = cc.status
            if c.state == ERROR and c.error:
                errors.append(f"{c.name}: {c.error}")
            if c.state in (ERROR, UNAVAILABLE):
                absent[c.name] = c.error or c.state
        notes = self.note_lines()
        return PipelineStatus(
            collectors=costs,
            aggregator_cpu_pct=self._cpu_pct.get(AGGREGATOR, 0.0),
            queue_fill=self.queue.fill,
            dropped_events=sum(c.status.dropped_events for c in costs),
            recorded_records=self.writer.records_written if self.writer is not None else 0,
            behind=self._behind,
            errors=errors,
            activity=next((c.status.activity for c in costs if c.status.activity), ""),
            absent=absent,
            notes=notes,
        )

    # -- aggregator thread -----------------------------------------------------------------
    def _run(self) -> None:
        t0 = time.thread_time()
        while True:
            stopping = self._stop.is_set()
            items = self.queue.get_many(timeout=0.05)
            if items:
                self._fold(items)
                self._folded_items += len(items)
            self._agg_cpu = time.thread_time() - t0
            if time.monotonic() - self._last_report >= self.report_interval:
                self._report()
            if stopping and not items:
                break
        self._report()

    def _fold(self, items: list[Item]) -> None:
        with self.lock:
            for item in items:
                try:
                    if isinstance(item, EventBatch):
                        self.aggregator.ingest(item)
                        self.ingested_events += len(item)
                    elif isinstance(item, CounterSample):
                        self.counters.add(item)
                    elif isinstance(item, Rewind):  # a replay seeking back: start over from its refill
                        self.aggregator.reset()
                        self.counters.clear()
                        self.markers.clear()
                        self.markers.append(item)
                    elif isinstance(item, Marker):
                        self.markers.append(item)
                except Exception as e:  # keep folding the rest; the header shows the failure
                    self._error(f"ingest: {type(e).__name__}: {e}")
        if self.writer is not None:
            try:
                for item in items:
                    self.writer.write(item)
            except (LlmtopError, OSError) as e:
                self._error(f"{RECORDING_STOPPED}: {e}")
                self.writer.close()
                self.writer = None

    def _error(self, msg: str) -> None:
        msg = msg.replace("\n", " ")
        if msg not in self.errors and len(self.errors) < 20:
            self.errors.append(msg)

    def _report(self) -> None:
        now = time.monotonic()
        dt = max(now - self._last_report, 1e-9)
        self._last_report = now
        cpu = {c.name: c.cpu_s for c in self.collectors}
        cpu[AGGREGATOR] = self._agg_cpu
        with self.lock:
            for c in self.collectors:
                d = c.dropped_events - self._reported_drops.get(c.name, 0)
                if d:
                    self.aggregator.note_dropped(c.name, d)
                    self._reported_drops[c.name] = c.dropped_events
            for name, s in cpu.items():
                d = s - self._reported_cpu.get(name, 0.0)
                self._cpu_pct[name] = 100.0 * d / dt
                if d > 0:
                    self.aggregator.note_cost(name, d)
                    self._reported_cpu[name] = s
        drops = sum(c.dropped_events for c in self.collectors)
        new_drops = drops - self._drops_at_last_report
        self._drops_at_last_report = drops
        fill = self.queue.fill
        running = [c for c in self.collectors if c.state == RUNNING]
        if new_drops or fill > 0.5:
            lost = f"{new_drops} events dropped in {dt:.1f}s, " if new_drops else ""
            self._behind = f"falling behind: {lost}queue {fill:.0%} full"
        elif running and self._cpu_pct.get(AGGREGATOR, 0.0) > 90.0:
            self._behind = f"falling behind: aggregator at {self._cpu_pct[AGGREGATOR]:.0f}% of a core"
        else:
            self._behind = None


def _live_setup(producer: Collector, source: SourceInfo, aggregator: Sink, *, record: str | None,
                process: bool, pid: int | None, gpu: bool) -> Pipeline:
    """Engine producer + process gauges (of `pid`, default this process) + GPU, optionally recording."""
    from llmtop.collectors.gpu import GpuCollector
    from llmtop.collectors.process import ProcessCollector

    writer = None
    if record:
        from llmtop.traces.recording import RecordingWriter

        writer = RecordingWriter(record, source)
    p = Pipeline(aggregator, writer=writer)
    p.set_source(source)
    p.add(producer)
    if process:
        p.add(ProcessCollector(pid=pid))
    if gpu:  # the engine's own GPU (by UUID, CUDA backend); UNAVAILABLE, with its reason, without NVIDIA
        p.add(GpuCollector(uuid=source.extra.get("device_uuid")))
    return p


def live_pipeline(engine: DecodeEngine, aggregator: Sink, *, prompts: list[str] | None = None, batch: int = 1,
                  max_new_tokens: int = 64, sampling: SamplingParams | None = None, chat: bool = True,
                  loop: bool = True, record: str | None = None, process: bool = True, gpu: bool = True,
                  on_round: Callable[[int, list[Generation]], None] | None = None) -> Pipeline:
    """The live setup with the engine in a thread of this process (--in-process, --once). Not started.

    `on_round(i, generations)` runs on the engine thread after each round (--once keeps the texts).
    """
    from llmtop.collectors.engine import EngineCollector

    if batch > engine.max_batch:
        raise LlmtopError(f"--batch {batch} exceeds the engine's max batch {engine.max_batch}")
    producer = EngineCollector(engine, prompts=prompts, batch=batch, max_new_tokens=max_new_tokens,
                               sampling=sampling, chat=chat, loop=loop, on_round=on_round)
    return _live_setup(producer, engine.source_info(), aggregator, record=record, process=process, pid=None,
                       gpu=gpu)


def child_pipeline(spec: EngineSpec, aggregator: Sink, *, record: str | None = None, process: bool = True,
                   gpu: bool = True, on_note: Callable[[str], None] | None = None,
                   on_stage: Callable[[str], None] | None = None) -> Pipeline:
    """The live setup with the engine in a worker process (EngineSpec); blocks until the model is loaded.

    The process gauges follow the worker, since that is where the decode loop's CPU and memory go.
    `on_stage`: each start-up stage the worker reports (backend, model read, warm-up).
    """
    from llmtop.collectors.engine_process import EngineProcessCollector

    producer = EngineProcessCollector(spec, on_note=on_note, on_stage=on_stage)
    source = producer.launch()
    try:
        return _live_setup(producer, source, aggregator, record=record, process=process, pid=producer.pid,
                           gpu=gpu)
    except BaseException:
        producer.close()
        raise


def replay_pipeline(path: str, aggregator: Sink, *, speed: float = 1.0, kernel_names: str = "demangled",
                    keep_open: bool = False, start_s: float = 0.0,
                    max_bytes: int | None = None) -> tuple[Pipeline, ReplaySource]:
    """Replay a recording or imported trace through the same pipeline; returns (pipeline, ReplaySource).

    keep_open: at its end the replay waits for a seek (the TUI) instead of finishing; start_s: begin
    there (everything before it folded at once, as after a seek); max_bytes: `--max-bytes`, for the
    first read and every re-read a seek back makes (on the replay's own thread)."""
    from llmtop.collectors.replay import ReplaySource

    src = ReplaySource.open(path, speed=speed, kernel_names=kernel_names, keep_open=keep_open,
                            max_bytes=max_bytes)
    if start_s > 0:
        src.seek(start_s)
    p = Pipeline(aggregator)
    p.set_source(src.source)
    p.add(src)
    return p, src
