"""Our own recordings (llmtop.traces.recording) as a registered trace format.

Unlike the foreign formats, a recording has timed items of its own (batches, counters, markers with the
time they were recorded), so its ImportResult carries `records`; `batches` is the EventBatches among
them. It cannot be merged with other files: it carries its own live SourceInfo.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llmtop.events import EventBatch, Item, NameTable, drop_invalid
from llmtop.traces.recording import RecordingReader, is_recording_head
from llmtop.traces.registry import ImportResult, TraceFormat, register


def read(path: Path, names: NameTable) -> ImportResult:
    """The file's items lazily. Damage adds its one-line warnings and `skipped` counts once the items
    are through: `corrupt_record` (records skipped for a failed checksum) and `impossible_values` (rows
    no source can produce). A cut-short tail is a warning only (the records before it are all there)."""
    reader = RecordingReader(path)
    res = ImportResult(source=reader.source, batches=(), names=names, format="llmtop")

    def records() -> Iterator[tuple[int, Item]]:
        dropped = 0
        with reader:
            for t_ns, item in reader:
                if isinstance(item, EventBatch):
                    item, bad = drop_invalid(item)
                    dropped += bad
                yield t_ns, item
            res.warnings.extend(reader.problems())
            if reader.corrupt_records:
                res.skipped_by["corrupt_record"] = reader.corrupt_records
            if dropped:
                res.skipped_by["impossible_values"] = dropped
                res.warnings.append(f"{path.name}: skipped {dropped} events with impossible values (negative "
                                    "or absurd durations, unknown phase or op class)")
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
