"""Our own recordings (llmtop.traces.recording) as a registered trace format.

Unlike the foreign formats, a recording has timed items of its own (batches, counters, markers with the
time they were recorded), so its ImportResult carries `records`; `batches` is the EventBatches among
them. It cannot be merged with other files: it carries its own live SourceInfo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llmtop.events import NS_LIMIT, EventBatch, Item, NameTable, drop_invalid
from llmtop.traces.importers.common import MAX_TRACE_SPAN_NS, time_warnings
from llmtop.traces.recording import RecordingReader, is_recording_head
from llmtop.traces.registry import ImportResult, TraceFormat, register


def _sane(batch: EventBatch, n_names: int, skipped: Counter[str]) -> EventBatch:
    """The batch without rows whose times no clock has (beyond ±NS_LIMIT, a duration over
    MAX_TRACE_SPAN_NS, a start that far from the batch's median: one batch covers a fraction of a second)
    or whose kernel name id is not in the name table; counted by reason in `skipped`."""
    k, s = batch.kernels, batch.steps
    if not len(k) and not len(s):
        return batch
    starts = np.concatenate([k["start_ns"], s["start_ns"]])
    durs = np.concatenate([k["dur_ns"], s["dur_ns"]])  # 0 <= dur < NS_LIMIT (drop_invalid)
    in_range = (starts > -NS_LIMIT) & (starts < NS_LIMIT)
    mid = int(np.median(starts[in_range])) if in_range.any() else 0
    bad = np.zeros(len(starts), dtype=np.int8)
    bad[~in_range] = 1
    bad[(bad == 0) & (durs > MAX_TRACE_SPAN_NS)] = 2
    bad[(bad == 0) & ((starts < mid - MAX_TRACE_SPAN_NS) | (starts > mid + MAX_TRACE_SPAN_NS))] = 3
    nk = len(k)
    unknown = k["name"].astype(np.int64) >= n_names
    bad[:nk][(bad[:nk] == 0) & unknown] = 4
    if not bad.any():
        return batch
    for code, reason in ((1, "time_out_of_range"), (2, "absurd_duration"), (3, "absurd_timestamp"),
                         (4, "unknown_name")):
        n = int(np.count_nonzero(bad == code))
        if n:
            skipped[reason] += n
    return EventBatch(k[bad[:nk] == 0], s[bad[nk:] == 0], batch.names_base, batch.new_names)


def read(path: Path, names: NameTable) -> ImportResult:
    """The file's items lazily. Damage adds its one-line warnings and `skipped` counts once the items
    are through: `corrupt_record` (records skipped for a failed checksum), `impossible_values` (rows
    no source can produce: negative durations, unknown phase or op class), `time_out_of_range`,
    `absurd_duration`, `absurd_timestamp` (times no clock has, or a start more than a day away from the
    rest of its batch) and `unknown_name` (a kernel name id beyond the names recorded). A cut-short
    tail is a warning only (the records before it are all there)."""
    reader = RecordingReader(path)
    res = ImportResult(source=reader.source, batches=(), names=names, format="llmtop")

    def records() -> Iterator[tuple[int, Item]]:
        dropped = 0
        odd: Counter[str] = Counter()
        n_names = 0
        with reader:
            for t_ns, item in reader:
                if isinstance(item, EventBatch):
                    item, bad = drop_invalid(item)
                    dropped += bad
                    n_names = max(n_names, item.names_base + len(item.new_names))
                    item = _sane(item, n_names, odd)
                yield t_ns, item
            res.warnings.extend(reader.problems())
            if reader.corrupt_records:
                res.skipped_by["corrupt_record"] = reader.corrupt_records
            if dropped:
                res.skipped_by["impossible_values"] = dropped
                res.warnings.append(f"{path.name}: skipped {dropped} events with impossible values (negative "
                                    "or absurd durations, unknown phase or op class)")
            if odd:
                res.skipped_by.update(odd)
                res.warnings.extend(f"{path.name}: {w}" for w in time_warnings(odd, "events"))
                if odd.get("unknown_name"):
                    res.warnings.append(f"{path.name}: left out {odd['unknown_name']} kernels whose name id "
                                        "is not in the recording's name table (unknown_name)")
            res.skipped = sum(res.skipped_by.values())
            if reader.records_read == 0 and not reader.truncated and not reader.corrupt_records:
                res.warnings.append(f"{path.name}: the recording holds no events (only its header)")

    def batches(items: Iterator[tuple[int, Item]]) -> Iterator[EventBatch]:
        for _, item in items:
            if isinstance(item, EventBatch):
                names.extend(item.names_base, item.new_names)
                yield item

    res.records = records()
    res.batches = batches(res.records)
    return res


# gzip=True: a gzip-compressed recording is still recognised as one, and its reader says in one line
# that it cannot read it (the file must be decompressed first)
FORMAT = register(TraceFormat("recording", "llmtop recording", is_recording_head, read, priority=0,
                              mergeable=False))
