"""Our own recordings (llmtop.traces.recording) as a registered trace format.

Unlike the foreign formats, a recording has timed items of its own (batches, counters, markers with the
time they were recorded), so its ImportResult carries `records`; `batches` is the EventBatches among
them. It cannot be merged with other files: it carries its own live SourceInfo.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llmtop.events import EventBatch, Item, NameTable
from llmtop.traces.recording import RecordingReader, is_recording_head
from llmtop.traces.registry import ImportResult, TraceFormat, register


def read(path: Path, names: NameTable) -> ImportResult:
    """The file's items lazily; a cut-short tail ends them cleanly and adds one warning."""
    reader = RecordingReader(path)
    res = ImportResult(source=reader.source, batches=(), names=names, format="llmtop")

    def records() -> Iterator[tuple[int, Item]]:
        with reader:
            yield from reader
            if reader.truncated:
                res.warnings.append(reader.truncated)

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
