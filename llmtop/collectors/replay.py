"""Replay: feed the pipeline from a file (our recording or a foreign trace) instead of a live engine.

`ReplaySource` is generic over any iterator of (t_ns, item) records, so importers' batches replay
exactly like a recording. Pacing follows the records' own timestamps scaled by `speed`; speed 0 (or
inf) means as fast as possible. Replay never drops: it waits for room in the queue instead. Files are
opened by llmtop.traces.open; `load_into` folds a whole file into an aggregator without pacing.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llmtop.collectors.base import Collector, Rewind
from llmtop.errors import LlmtopError
from llmtop.events import CounterSample, EventBatch, Item, Marker, SourceInfo
from llmtop.traces.open import TraceFile, TracePaths, open_trace_file
from llmtop.traces.recording import batch_time_ns


class ReplaySource(Collector):
    """A collector that replays records with their original spacing divided by `speed`.

    Controls (any thread): pause(), resume(), toggle_pause(), set_speed(x), seek(seconds),
    seek_by(delta), restart(). Gaps longer than `max_gap_s` (a recording left idle) are shortened to it so
    replay does not sit still; positions are on that shortened clock (what the footer shows).

    Seeking forward folds the records up to the target at once; seeking back sends a `Rewind` (the
    pipeline forgets what it folded when it reaches it) and refolds from the start up to the target, so
    cumulative statistics are exactly those of a replay that had run to that point.
    """

    name = "replay"

    def __init__(self, records: Iterable[tuple[int, Item]], source: SourceInfo, *, speed: float = 1.0,
                 max_gap_s: float | None = 5.0, warnings: list[str] | None = None,
                 keep_open: bool = False,
                 reopen: Callable[[], Iterable[tuple[int, Item]]] | None = None) -> None:
        super().__init__()
        self._check_speed(speed)
        self.records = records
        # seeking back reads the records again from the start: a list is replayed as is, a file reopened
        self._reopen: Callable[[], Iterable[tuple[int, Item]]] | None = reopen
        if reopen is None and isinstance(records, list):
            self._reopen = lambda: records
        self.source = source
        self.speed = speed
        self.max_gap_s = max_gap_s
        self.warnings = warnings if warnings is not None else []
        self.position_ns = 0  # replayed time since the first record (source clock)
        self.emitted_records = 0
        self._resume = threading.Event()
        self._resume.set()
        self._changed = threading.Event()
        self._seek: float | None = None  # a pending seek target, seconds of replayed time
        self.keep_open = keep_open  # at the end, wait for a seek instead of finishing (the TUI)
        self.at_end = False
        self.end_ns: int | None = None  # the replay's length (replayed time), once it has reached its end

    @classmethod
    def open(cls, path: TracePaths, *, speed: float = 1.0, max_gap_s: float | None = 5.0,
             kernel_names: str = "demangled", max_bytes: int | None = None,
             keep_open: bool = False) -> ReplaySource:
        """Replay a file; `.source` is the recorded SourceInfo with kind="replay". max_bytes: `--max-bytes`
        (llmtop.traces.open.open_trace_file)."""
        tf = open_trace_file(path, kernel_names=kernel_names, max_bytes=max_bytes)
        extra = {**tf.source.extra, "replay_of": str(tf.path), "recorded_kind": tf.source.kind,
                 "format": tf.format}
        src = dataclasses.replace(tf.source, kind="replay", extra=extra)
        # An importer hands its whole trace over as one batch (or a few): cut into slices of trace time,
        # it plays out over its own span like a recording, and the footer's position and seek mean
        # something. Our recordings are already timed records, written as they happened.
        sliced = tf.format != "llmtop"

        def records(t: TraceFile) -> Iterable[tuple[int, Item]]:
            return time_sliced(t.records) if sliced else t.records

        def reopen() -> Iterable[tuple[int, Item]]:  # a seek back reads the file again from its start
            return records(open_trace_file(path, kernel_names=kernel_names, max_bytes=max_bytes))

        return cls(records(tf), src, speed=speed, max_gap_s=max_gap_s, warnings=tf.warnings,
                   keep_open=keep_open, reopen=reopen)

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

    def seek(self, seconds: float) -> None:
        """Go to `seconds` of replayed time; back and forth (back needs a list of records or a file)."""
        if math.isnan(seconds):
            raise LlmtopError("seek needs a time in seconds")
        self._seek = max(0.0, seconds)  # past the end: everything is folded, the replay sits at its end
        self._changed.set()  # a paused replay stays paused, at the new position

    def seek_by(self, delta_s: float) -> None:
        self.seek(self.position_ns / 1e9 + delta_s)

    def restart(self) -> None:
        self.seek(0.0)

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
        ff_until = -1  # fast-forward (no waiting) through records before this replayed time (a seek)
        it = iter(self.records)
        pending: tuple[int, Item] | None = None
        while True:
            if self._seek is not None:
                to, self._seek = int(self._seek * 1e9), None
                if to < virt and self._reopen is not None:  # back: forget, then refold up to `to`
                    rewind = Rewind(time.perf_counter_ns(), f"seek to {to / 1e9:.1f} s")
                    while not self._queue.put_wait(rewind, 0.1):
                        if self.stopping:
                            return
                    it, pending, first, virt = iter(self._reopen()), None, None, 0
                ff_until = max(to, virt)
                self.position_ns = ff_until
                self.at_end = False
                anchor_wall, anchor_virt = time.monotonic(), ff_until
            if pending is None:
                pending = next(it, None)
                if pending is None:  # the end
                    if not self.keep_open:
                        return
                    self.at_end = True  # the TUI's replay stays open at its end: home / [ seek back
                    self.end_ns = max(self.end_ns or 0, virt)
                    while self._seek is None:
                        if self.stopping:
                            return
                        self._changed.wait(0.1)
                        self._changed.clear()
                    continue
            t, item = pending
            if first is None:
                first = t
            target = max(t - first, virt)  # out-of-order records go out at once
            if self.max_gap_s is not None and target - virt > self.max_gap_s * 1e9:
                shift = target - virt - int(self.max_gap_s * 1e9)
                first += shift
                target -= shift
            # Wait until the virtual clock reaches `target`, re-anchoring on pause and speed changes.
            while target > ff_until:
                if self.stopping:
                    return
                if self._seek is not None:
                    break
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
            if self._seek is not None:
                continue  # the record is still pending: after a seek forward it goes out at once
            pending = None
            virt = target
            self.position_ns = max(virt, ff_until)
            if self.as_fast_as_possible:
                anchor_wall, anchor_virt = time.monotonic(), virt
            item = _with_time(item, t)
            while not self._queue.put_wait(item, 0.1):
                if self.stopping:
                    return
            self.emitted_events += len(item)
            self.emitted_records += 1
            self.account_cpu(t_cpu)


SLICE_NS = 50_000_000  # an imported batch replays in slices of this much trace time


def time_sliced(records: Iterable[tuple[int, Item]], slice_ns: int = SLICE_NS) -> Iterator[tuple[int, Item]]:
    """Records with every batch spanning more than `slice_ns` cut into consecutive slices of that much
    trace time (rows in start order; each slice timed by its own last end, as `timed_batches` times a
    batch). The first slice carries the batch's new names. A step whose kernels straddle a cut stays one
    step: the aggregator joins a track's run that continues into the next batch (stats/aggregator.py)."""
    for t, item in records:
        if not isinstance(item, EventBatch) or len(item) < 2:
            yield t, item
            continue
        k = item.kernels[np.argsort(item.kernels["start_ns"], kind="stable")]
        st = item.steps[np.argsort(item.steps["start_ns"], kind="stable")]
        starts = np.concatenate([k["start_ns"], st["start_ns"]])
        lo, hi = int(starts.min()), int(starts.max())
        if hi - lo <= slice_ns:
            yield t, item
            continue
        # Slice ids of the rows (divided first: a hostile file's times can span all of int64), and a cut
        # at every occupied slice only, so the work follows the rows, not the span.
        k_id, s_id = k["start_ns"] // slice_ns, st["start_ns"] // slice_ns
        cuts = np.union1d(k_id, s_id)[1:]
        k_parts = np.split(k, np.searchsorted(k_id, cuts, side="left"))
        s_parts = np.split(st, np.searchsorted(s_id, cuts, side="left"))
        names_base, new_names = item.names_base, item.new_names
        for kp, sp in zip(k_parts, s_parts, strict=True):
            if not len(kp) and not len(sp):
                continue
            part = EventBatch(kp, sp, names_base, new_names)
            names_base, new_names = names_base + len(new_names), []
            yield batch_time_ns(part) or t, part


def _with_time(item: Item, t: int) -> Item:
    if isinstance(item, (CounterSample, Marker)) and item.t_ns == 0:
        item.t_ns = t
    return item


class FoldTarget(Protocol):
    """What `load_into` folds a file into: `llmtop.stats.Aggregator` (collectors do not import stats/)."""

    def set_source(self, info: SourceInfo) -> None: ...

    def ingest(self, batch: EventBatch) -> None: ...


class CounterTarget(Protocol):
    """Where `load_into` puts process/GPU samples: `llmtop.collectors.counters.CounterStore`."""

    def add(self, sample: CounterSample) -> None: ...


@dataclass(slots=True)
class LoadSummary:
    source: SourceInfo
    format: str
    records: int
    events: int
    warnings: list[str]
    skipped: int
    skipped_by: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count


def load_into(path: TracePaths, aggregator: FoldTarget, counters: CounterTarget | None = None, *,
              kernel_names: str = "demangled", max_bytes: int | None = None) -> LoadSummary:
    """Fold a whole file into an aggregator as fast as possible, no threads (`report`, `--once`).

    The aggregator gets the SourceInfo exactly as recorded, so a report of the file equals the
    report of the live run. counters: an optional CounterStore for process/GPU samples. kernel_names:
    `--names` (llmtop.traces.open.KERNEL_NAME_STYLES). max_bytes: `--max-bytes`, the largest document a
    reader may build (None: the defaults of llmtop.traces.registry.ReadLimits).
    """
    return fold_into(open_trace_file(path, kernel_names=kernel_names, max_bytes=max_bytes), aggregator,
                     counters)


def fold_into(tf: TraceFile, aggregator: FoldTarget, counters: CounterTarget | None = None) -> LoadSummary:
    """Fold an opened trace (`open_trace_file`, `merge_recordings`) into an aggregator, no threads."""
    aggregator.set_source(tf.source)
    records = events = 0
    for _, item in tf.records:
        records += 1
        if isinstance(item, EventBatch):
            aggregator.ingest(item)
            events += len(item)
        elif isinstance(item, CounterSample) and counters is not None:
            counters.add(item)
    return LoadSummary(tf.source, tf.format, records, events, tf.warnings, tf.skipped, tf.skipped_by)
