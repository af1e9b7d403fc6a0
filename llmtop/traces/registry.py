"""The one table of trace formats: name, sniff over the first bytes, reader.

Every format is a module under llmtop.traces.importers that calls `register(TraceFormat(...))` when it
is imported (our own recordings included: importers/llmtop_recording.py). `llmtop.traces.open` imports
them all and uses this table for `detect_format`, `open_trace` / `open_traces` and every command that
opens a file, so adding a format is one new file in importers/.

Reading limits live here too, for every reader: `ReadLimits` (how large a document a file may become:
8 GiB, and 200 times the compressed size of a .gz beyond 64 MiB; `--max-bytes N` replaces both),
`using_limits` / `read_limits` (the limits in force, set by the commands), `parse_size` ("4G") and
`TextLines` (a text trace's lines, a .gz decompressed under the limits).

This module imports nothing else from llmtop.traces: importers import it, never the other way round.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from llmtop.errors import LlmtopError
from llmtop.events import EventBatch, Item, NameTable, SourceInfo

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RATIO",
    "GZIP_MAGIC",
    "HEAD_BYTES",
    "RATIO_FLOOR",
    "ImportResult",
    "ReadLimits",
    "Reader",
    "Sniff",
    "TextLines",
    "TraceFormat",
    "fmt_bytes",
    "head_text",
    "parse_size",
    "read_head",
    "read_limits",
    "register",
    "registered",
    "unregister",
    "using_limits",
]

GZIP_MAGIC = b"\x1f\x8b"
HEAD_BYTES = 65536  # how much of a file the sniffs see

# -- how much a trace may take in memory ---------------------------------------------------------
# A document (a decompressed .gz, or a plain file read whole) may be at most DEFAULT_MAX_BYTES, and a
# compressed one may expand to at most DEFAULT_MAX_RATIO times its compressed size (never limiting it
# below RATIO_FLOOR): real Kineto JSON compresses 12-30x (53x pretty-printed with indent=4), deflate
# cannot exceed ~1032x, and a "bomb" (2 MB of gzip holding 2 GB of spaces) stops after 400 MB.
# `--max-bytes N` replaces both: the document may be up to N bytes, whatever its ratio.
DEFAULT_MAX_BYTES = 8 << 30
DEFAULT_MAX_RATIO = 200
RATIO_FLOOR = 64 << 20


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 8 << 30 -> '8 GiB' (binary units, as --max-bytes reads its suffixes)."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} bytes"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?b)?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4G' / '4GiB' -> 4 * 2**30, '4GB' -> 4 * 10**9, '512M', '1.5G', '1000' (bytes), as coreutils reads
    sizes. ValueError for anything else, or a size that is not positive."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (a number of bytes, or with a suffix K, M, G, T)")
    unit = (m.group(2) or "").lower()
    power = "kmgt".index(unit) + 1 if unit else 0
    base = 1000 if (m.group(3) or "").lower() == "b" else 1024
    try:
        n = int(float(m.group(1)) * base**power)
    except OverflowError:
        raise ValueError(f"size too large: {text!r}") from None
    if n <= 0:
        raise ValueError(f"size must be > 0, got {text!r}")
    return n


@dataclass(frozen=True)
class ReadLimits:
    """How large a document the readers may build: `max_bytes` at most and, for compressed files, at most
    `max_ratio` times the compressed size (None: no ratio limit, as with an explicit --max-bytes)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_ratio: float | None = DEFAULT_MAX_RATIO
    ratio_floor: int = RATIO_FLOOR  # the ratio never limits a document below this many bytes

    @classmethod
    def explicit(cls, max_bytes: int | None) -> ReadLimits:
        """The defaults, or `--max-bytes N`: N bytes whatever the compression ratio."""
        return cls() if max_bytes is None else cls(max_bytes=max_bytes, max_ratio=None)

    def allowed(self, compressed: int) -> int:
        """The most bytes a file of `compressed` bytes may decompress to."""
        if self.max_ratio is None:
            return self.max_bytes
        return min(self.max_bytes, max(self.ratio_floor, int(self.max_ratio * compressed)))

    def too_large(self, path: Path, compressed: int) -> str:
        """The one-line reason a compressed file went past `allowed(compressed)`: which limit it hit."""
        cap = self.allowed(compressed)
        if cap < self.max_bytes:
            return (f"{path}: decompresses to more than {fmt_bytes(cap)}, {self.max_ratio:g} times its "
                    f"compressed size ({fmt_bytes(compressed)}): the ratio limit for compressed traces (a "
                    "decompression bomb?); --max-bytes N allows up to N bytes")
        return f"{path}: decompresses to more than {fmt_bytes(cap)}, {self._which()}"

    def plain_too_large(self, path: Path, size: int) -> str | None:
        """Why a plain (uncompressed) document of `size` bytes is refused, or None."""
        if size <= self.max_bytes:
            return None
        return f"{path} is {fmt_bytes(size)}, more than {fmt_bytes(self.max_bytes)}: {self._which()}"

    def _which(self) -> str:
        if self.max_ratio is None:
            return "the --max-bytes limit"
        return "the size limit; --max-bytes N allows up to N bytes"


_LIMITS: ContextVar[ReadLimits | None] = ContextVar("llmtop_read_limits", default=None)


def read_limits() -> ReadLimits:
    """The limits in force (what `using_limits` set, else the defaults)."""
    return _LIMITS.get() or ReadLimits()


@contextlib.contextmanager
def using_limits(max_bytes: int | None) -> Iterator[ReadLimits]:
    """Read files under `ReadLimits.explicit(max_bytes)` inside the block (None: the defaults)."""
    lim = ReadLimits.explicit(max_bytes)
    token = _LIMITS.set(lim)
    try:
        yield lim
    finally:
        _LIMITS.reset(token)


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


class _Capped(io.RawIOBase):
    """A gzip stream that raises LlmtopError (which limit) once it has given more than `cap` bytes."""

    def __init__(self, g: gzip.GzipFile, cap: int, too_large: Callable[[], str]) -> None:
        self._g, self._cap, self._too_large, self._n = g, cap, too_large, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._g.readinto(b)
        self._n += n
        if self._n > self._cap:
            raise LlmtopError(self._too_large())
        return n


class TextLines:
    """The lines of a text trace (a log, JSON lines), plain or gzip, decoded as UTF-8 (damaged bytes
    replaced). A .gz is decompressed as it is read, under `read_limits()` (LlmtopError naming the limit it
    hits); a cut or corrupt .gz ends the lines early and `error` says why (the lines before it are kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "rb") as f:
            if f.read(2) != GZIP_MAGIC:
                f.seek(0)
                yield from io.TextIOWrapper(f, encoding="utf-8", errors="replace")
                return
            size = f.seek(0, 2)
            f.seek(0)
            lim = read_limits()
            raw = _Capped(gzip.GzipFile(fileobj=f, mode="rb"), lim.allowed(size),
                          lambda: lim.too_large(self.path, size))
            text = io.TextIOWrapper(io.BufferedReader(raw, 1 << 16), encoding="utf-8", errors="replace")
            try:
                yield from text
            except (OSError, EOFError, zlib.error) as e:
                self.error = f"compressed stream ends early or is corrupt ({e}); the lines before were read"
