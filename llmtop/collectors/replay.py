"""Replay: feed the pipeline from a file (our recording or a foreign trace) instead of a live engine.

`ReplaySource` is generic over any iterator of (t_ns, item) records, so importers' batches replay
exactly like a recording. Pacing follows the records' own timestamps scaled by `speed`; speed 0 (or
inf) means as fast as possible. Replay never drops: it waits for room in the queue instead.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtop.collectors.base import Collector
from llmtop.errors import LlmtopError
from llmtop.events import CounterSample, EventBatch, Item, Marker, NameTable, SourceInfo
from llmtop.traces.recording import RecordingReader, batch_time_ns, is_recording


@dataclass
class TraceFile:
    """An opened trace: where it came from, its records, and warnings (filled while iterating)."""

    path: Path
    source: SourceInfo
    format: str  # "llmtop" or the importer's format name
    records: Iterator[tuple[int, Item]]
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0  # events an importer could not map
    names: NameTable | None = None  # an importer's name table (its batches carry new_names as well)


TracePaths = str | Path | Sequence[str | Path]


def open_trace_file(path: TracePaths) -> TraceFile:
    """Open a llmtop recording, or any trace the importers understand; LlmtopError otherwise.

    Several paths, or a directory, are foreign traces merged by `open_traces` (one track per rank,
    device and stream); `TraceFile.path` is then the directory or the first file.
    """
    if not isinstance(path, str | Path):
        paths = list(path)
        if len(paths) != 1:
            return _open_many(paths)
        path = paths[0]
    p = Path(path)
    if p.is_dir():
        return _open_many([p])
    if not p.exists():
        raise LlmtopError(f"no such file: {p}")
    if is_recording(p):
        reader = RecordingReader(p)
        tf = TraceFile(p, reader.source, "llmtop", iter(()))
        tf.records = _recording_records(reader, tf)
        return tf
    try:
        from llmtop.traces.importers import open_trace
    except ImportError:
        raise LlmtopError(f"{p} is not an llmtop recording (and no trace importers are installed)") from None
    res = open_trace(p)
    tf = TraceFile(p, res.source, getattr(res, "format", "") or res.source.backend or "import", iter(()),
                   _live_list(getattr(res, "warnings", None)), int(getattr(res, "skipped", 0) or 0),
                   getattr(res, "names", None))
    tf.records = timed_batches(res.batches)
    return tf


def _open_many(paths: list[str | Path]) -> TraceFile:
    from llmtop.traces.importers import open_traces

    if not paths:
        raise LlmtopError("no trace files given")
    res = open_traces(paths)
    tf = TraceFile(Path(paths[0]), res.source, res.source.backend or "import", iter(()),
                   res.warnings, res.skipped, res.names)
    tf.records = timed_batches(res.batches)
    return tf


def _live_list(x: Any) -> list[str]:
    # keep the importer's own list: lazy importers append warnings while their batches iterate
    return x if isinstance(x, list) else list(x or [])


def _recording_records(reader: RecordingReader, tf: TraceFile) -> Iterator[tuple[int, Item]]:
    with reader:
        yield from reader
        if reader.truncated:
            tf.warnings.append(reader.truncated)


def timed_batches(batches: Iterable[EventBatch]) -> Iterator[tuple[int, Item]]:
    """Give untimed batches (importers) a record time: their last step/kernel end, else the previous."""
    last = 0
    for b in batches:
        t = batch_time_ns(b)
        last = t if t is not None else last
        yield last, b


class ReplaySource(Collector):
    """A collector that replays records with their original spacing divided by `speed`.

    Controls (any thread): pause(), resume(), toggle_pause(), set_speed(x). Gaps longer than
    `max_gap_s` (a recording left idle) are shortened to it so replay does not sit still.
    """

    name = "replay"

    def __init__(self, records: Iterable[tuple[int, Item]], source: SourceInfo, *, speed: float = 1.0,
                 max_gap_s: float | None = 5.0, warnings: list[str] | None = None) -> None:
        super().__init__()
        self._check_speed(speed)
        self.records = iter(records)
        self.source = source
        self.speed = speed
        self.max_gap_s = max_gap_s
        self.warnings = warnings if warnings is not None else []
        self.position_ns = 0  # replayed time since the first record (source clock)
        self.emitted_records = 0
        self._resume = threading.Event()
        self._resume.set()
        self._changed = threading.Event()

    @classmethod
    def open(cls, path: TracePaths, *, speed: float = 1.0, max_gap_s: float | None = 5.0) -> ReplaySource:
        """Replay a file; `.source` is the recorded SourceInfo with kind="replay"."""
        tf = open_trace_file(path)
        extra = {**tf.source.extra, "replay_of": str(tf.path), "recorded_kind": tf.source.kind,
                 "format": tf.format}
        src = dataclasses.replace(tf.source, kind="replay", extra=extra)
        return cls(tf.records, src, speed=speed, max_gap_s=max_gap_s, warnings=tf.warnings)

    @staticmethod
    def _check_speed(speed: float) -> None:
        if not (speed >= 0) or math.isnan(speed):
            raise LlmtopError(f"replay speed must be >= 0 (0 = as fast as possible), got {speed}")

    # -- controls --------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def pause(self) -> None:
        self._resume.clear()
        self._changed.set()

    def resume(self) -> None:
        self._resume.set()
        self._changed.set()

    def toggle_pause(self) -> None:
        self.resume() if self.paused else self.pause()

    def set_speed(self, speed: float) -> None:
        self._check_speed(speed)
        self.speed = speed
        self._changed.set()

    @property
    def as_fast_as_possible(self) -> bool:
        return self.speed == 0 or math.isinf(self.speed)

    # -- collector thread ------------------------------------------------------------------
    def run(self) -> None:
        assert self._queue is not None
        t_cpu = time.thread_time()
        first: int | None = None
        virt = 0  # replayed source-clock ns since `first`
        anchor_wall, anchor_virt = time.monotonic(), 0
        for t, item in self.records:
            if first is None:
                first = t
            target = max(t - first, virt)  # out-of-order records go out at once
            if self.max_gap_s is not None and target - virt > self.max_gap_s * 1e9:
                shift = target - virt - int(self.max_gap_s * 1e9)
                first += shift
                target -= shift
            # Wait until the virtual clock reaches `target`, re-anchoring on pause and speed changes.
            while True:
                if self.stopping:
                    return
                if self.paused:
                    self._resume.wait(0.1)
                    anchor_wall, anchor_virt = time.monotonic(), virt
                    continue
                if self.as_fast_as_possible:
                    break
                self._changed.clear()
                now_virt = anchor_virt + (time.monotonic() - anchor_wall) * self.speed * 1e9
                if now_virt >= target:
                    break
                virt = max(virt, int(now_virt))
                if self._changed.wait(min(0.1, (target - now_virt) / self.speed / 1e9)):
                    anchor_wall, anchor_virt = time.monotonic(), virt
            virt = target
            self.position_ns = virt
            if self.as_fast_as_possible:
                anchor_wall, anchor_virt = time.monotonic(), virt
            item = _with_time(item, t)
            while not self._queue.put_wait(item, 0.1):
                if self.stopping:
                    return
            self.emitted_events += len(item)
            self.emitted_records += 1
            self.account_cpu(t_cpu)


def _with_time(item: Item, t: int) -> Item:
    if isinstance(item, (CounterSample, Marker)) and item.t_ns == 0:
        item.t_ns = t
    return item


@dataclass(slots=True)
class LoadSummary:
    source: SourceInfo
    format: str
    records: int
    events: int
    warnings: list[str]
    skipped: int


def load_into(path: TracePaths, aggregator: Any, counters: Any | None = None) -> LoadSummary:
    """Fold a whole file into an aggregator as fast as possible, no threads (`report`, `--once`).

    The aggregator gets the SourceInfo exactly as recorded, so a report of the file equals the
    report of the live run. counters: an optional CounterStore for process/GPU samples.
    """
    tf = open_trace_file(path)
    aggregator.set_source(tf.source)
    records = events = 0
    for _, item in tf.records:
        records += 1
        if isinstance(item, EventBatch):
            aggregator.ingest(item)
            events += len(item)
        elif isinstance(item, CounterSample) and counters is not None:
            counters.add(item)
    return LoadSummary(tf.source, tf.format, records, events, tf.warnings, tf.skipped)
