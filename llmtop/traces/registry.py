"""The one table of trace formats: name, sniff over the first bytes, reader.

Every format is a module under llmtop.traces.importers that calls `register(TraceFormat(...))` when it
is imported (our own recordings included: importers/llmtop_recording.py). `llmtop.traces.open` imports
them all and uses this table for `detect_format`, `open_trace` / `open_traces` and every command that
opens a file, so adding a format is one new file in importers/.

This module imports nothing else from llmtop.traces: importers import it, never the other way round.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmtop.errors import LlmtopError
from llmtop.events import EventBatch, Item, NameTable, SourceInfo

__all__ = [
    "GZIP_MAGIC",
    "HEAD_BYTES",
    "ImportResult",
    "Reader",
    "Sniff",
    "TraceFormat",
    "head_text",
    "read_head",
    "register",
    "registered",
    "unregister",
]

GZIP_MAGIC = b"\x1f\x8b"
HEAD_BYTES = 65536  # how much of a file the sniffs see


@dataclass
class ImportResult:
    """A trace file read into events.

    `batches` may be lazy (then `warnings` and `names` fill while it is iterated). `names` is the one
    table every batch's name ids refer to (its batches carry `new_names` as well). `records`, when a
    format has timed items of its own (our recordings: batches, counters and markers with their record
    times), is the primary stream and `batches` the EventBatches among it: both draw on one pass over
    the file, so iterate one of them. `format` is what reports call the file's format ("llmtop" for
    recordings); empty means the source's backend. `skipped` counts the records left out of every
    number; `skipped_by` says why, reason -> count (snake_case reasons such as `malformed_record`,
    `negative_duration`; a lazy reader fills it while iterating); what `skipped` has beyond its sum is
    reported as `unmapped`. `warnings` are one-line notes on anything skipped, repaired or guessed.
    """

    source: SourceInfo
    batches: Iterable[EventBatch]
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    names: NameTable = field(default_factory=NameTable)
    format: str = ""
    records: Iterator[tuple[int, Item]] | None = None
    skipped_by: dict[str, int] = field(default_factory=dict)


Sniff = Callable[[bytes], bool]
Reader = Callable[[Path, NameTable], ImportResult]


@dataclass(frozen=True)
class TraceFormat:
    """One readable format.

    name: what `detect_format` returns ("kineto"); label: how messages name it ("Kineto JSON").
    sniff(head): whether a file's first HEAD_BYTES bytes (decompressed when the file is gzip) are this
    format. read(path, names): the file as an ImportResult, interning kernel names into `names`; bad
    input raises LlmtopError with one line. Formats are sniffed by ascending `priority` (catch-alls go
    last). gzip: the sniff also sees the decompressed start of gzip files (False: a gzip file never
    matches, e.g. SQLite, which cannot be read compressed). mergeable: `open_traces` may merge the file
    with others. errors: exceptions of the reader's libraries that mean bad input (reported in one
    line, like OSError).
    """

    name: str
    label: str
    sniff: Sniff
    read: Reader
    priority: int = 50
    gzip: bool = True
    mergeable: bool = True
    errors: tuple[type[Exception], ...] = ()


_FORMATS: dict[str, TraceFormat] = {}


def register(fmt: TraceFormat) -> TraceFormat:
    """Add a format; ValueError when another format already has its name."""
    have = _FORMATS.get(fmt.name)
    if have is not None and have != fmt:
        raise ValueError(f"trace format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    _FORMATS.pop(name, None)


def registered() -> list[TraceFormat]:
    """The formats registered so far, in sniffing order (llmtop.traces.open.formats() loads them all)."""
    return sorted(_FORMATS.values(), key=lambda f: (f.priority, f.name))


def read_head(path: Path, n: int = HEAD_BYTES) -> tuple[bytes, bool]:
    """(the first `n` bytes, decompressed when the file is gzip; whether it is gzip)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(n)
    except OSError as e:
        raise LlmtopError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] != GZIP_MAGIC:
        return raw, False
    try:
        with gzip.open(path, "rb") as g:
            return g.read(n), True
    except (OSError, EOFError, zlib.error) as e:
        # a truncated gzip still yields its first bytes through a raw decompressor
        d = zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            return d.decompress(raw, n), True
        except zlib.error:
            raise LlmtopError(f"{path}: corrupt gzip data ({e})") from None


def head_text(head: bytes) -> str:
    """A text format's first bytes as text, without a byte-order mark or leading blanks."""
    return head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
