"""Open any trace file: a llmtop recording or a foreign trace, one file or several (one per rank).

The format comes from the file's content, through the one registry of formats (llmtop.traces.registry),
never from its extension. `open_trace_file` is what `replay`, `report` and `export` open: every item
with its record time. `open_trace` / `open_traces` give an ImportResult (batches and the one name table
they refer to); `open_traces` merges several files, one track per rank, device and stream.

The formats are the modules of llmtop.traces.importers: each registers itself when imported, and this
module imports them all (`formats()`) the first time a file is opened.

Bad input never ends in a traceback: a file that is not a regular file (a FIFO, a device), cannot be read
(permissions) or is no trace is refused in one line (LlmtopError); a reader's malformed values become
skipped events counted in `skipped_by`. `max_bytes` (`--max-bytes`) bounds the document a reader may build
(registry.ReadLimits: by default 8 GiB, and 200 times the compressed size of a .gz).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import importlib
import inspect
import pkgutil
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import EventBatch, Item, NameTable, SourceInfo, track_label
from llmtop.traces import importers
from llmtop.traces.recording import batch_time_ns
from llmtop.traces.registry import (
    ImportResult,
    ReadLimits,
    TraceFormat,
    parse_size,
    read_head,
    registered,
    using_limits,
)

__all__ = [
    "KERNEL_NAME_STYLES",
    "ImportResult",
    "ReadLimits",
    "TraceFile",
    "TracePaths",
    "detect_format",
    "expand_trace_paths",
    "format_of",
    "formats",
    "known_formats",
    "open_trace",
    "open_trace_file",
    "open_traces",
    "parse_size",
    "timed_batches",
    "using_limits",
]

MAX_TRACKS = 65536  # KERNEL_DTYPE.track is uint16
# `--names`: which kernel names a format that records several kinds shows (nsys: demangledName, as
# `nsys stats` prints them, or shortName, which merges template instances); the first is the default
KERNEL_NAME_STYLES = ("demangled", "short")
# what any reader may raise on bad input (a format adds its libraries' errors in TraceFormat.errors)
_BAD_INPUT: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, UnicodeError, MemoryError,
                                           RecursionError)


# -- formats -----------------------------------------------------------------------------------
@functools.cache
def _load_importers() -> None:
    """Import every module of llmtop.traces.importers once; the format modules register on import."""
    for mod in pkgutil.iter_modules(importers.__path__, importers.__name__ + "."):
        importlib.import_module(mod.name)


def formats() -> list[TraceFormat]:
    """Every registered format, in sniffing order."""
    _load_importers()
    return registered()


def _known(fmts: list[TraceFormat]) -> str:
    return ", ".join(f.label for f in fmts)


def known_formats() -> str:
    """The registered formats' labels, for help texts and errors ("llmtop recording, nsys SQLite, ...")."""
    return _known(formats())


def format_of(path: str | Path) -> TraceFormat:
    """The format whose sniff matches the file's first bytes; one-line LlmtopError otherwise."""
    p = Path(path)
    if p.is_dir():
        raise LlmtopError(f"{p} is a directory; give a trace file")
    if not p.exists():
        raise LlmtopError(f"no such file: {p}")
    if not p.is_file():  # a FIFO, socket or device would block the read or never end
        raise LlmtopError(f"{p} is not a regular file (a pipe, socket or device); give a trace file")
    head, gzipped = read_head(p)
    if not head.strip():
        raise LlmtopError(f"{p} is empty")
    fmts = formats()
    for fmt in fmts:
        if (fmt.gzip or not gzipped) and fmt.sniff(head):
            return fmt
    raise LlmtopError(f"{p}: unrecognised trace format (known formats: {_known(fmts)})")


def detect_format(path: str | Path) -> str:
    """The registered format name of a file ('kineto', 'nsys', 'recording', ...); LlmtopError otherwise."""
    return format_of(path).name


@functools.cache
def _takes_kernel_names(read: Any) -> bool:
    try:
        return "kernel_names" in inspect.signature(read).parameters
    except (TypeError, ValueError):
        return False


def _read(
    p: Path, fmt: TraceFormat, names: NameTable, kernel_names: str = KERNEL_NAME_STYLES[0]
) -> ImportResult:
    """One file read into `names`. Bad input -> LlmtopError with one line.

    kernel_names: a KERNEL_NAME_STYLES entry, passed to readers whose `read` takes a `kernel_names`
    keyword (formats with one kind of name record them as they are).
    """
    if kernel_names not in KERNEL_NAME_STYLES:
        raise LlmtopError(f"unknown kernel name style {kernel_names!r} (choose from "
                          f"{', '.join(KERNEL_NAME_STYLES)})")
    try:
        if _takes_kernel_names(fmt.read):
            return fmt.read(p, names, kernel_names=kernel_names)
        res = fmt.read(p, names)
        if kernel_names != KERNEL_NAME_STYLES[0]:
            res.warnings.append(f"--names {kernel_names}: {fmt.label} files record one kind of kernel name; "
                                "shown as recorded")
        return res
    except LlmtopError:
        raise
    except PermissionError as e:
        raise LlmtopError(f"cannot read {p}: {e.strerror or e}") from None
    except (*_BAD_INPUT, *fmt.errors) as e:
        first = (str(e).splitlines() or [""])[0]
        raise LlmtopError(f"{p}: cannot import {fmt.name} trace: {type(e).__name__}: {first}") from None


def open_trace(path: str | Path, *, kernel_names: str = KERNEL_NAME_STYLES[0],
               max_bytes: int | None = None) -> ImportResult:
    """Read a trace file (format chosen by its content). Bad input -> LlmtopError with one line.
    max_bytes: the largest document the reader may build (None: registry.ReadLimits' defaults)."""
    p = Path(path)
    with _limits(max_bytes):
        return _read(p, format_of(p), NameTable(), kernel_names)


def _limits(max_bytes: int | None) -> contextlib.AbstractContextManager[object]:
    """`using_limits(max_bytes)`, or the limits already in force (a caller's `using_limits`) for None."""
    return using_limits(max_bytes) if max_bytes is not None else contextlib.nullcontext()


# -- several files -----------------------------------------------------------------------------
def expand_trace_paths(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files named, with each directory replaced by its trace files (sorted; hidden files and files of
    no known trace format are left out with a warning). Returns (files, warnings); LlmtopError if none."""
    files: list[Path] = []
    warnings: list[str] = []
    for x in paths:
        p = Path(x)
        if not p.is_dir():
            if not p.exists():
                raise LlmtopError(f"no such file: {p}")
            files.append(p)
            continue
        found = 0
        try:
            entries = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        except OSError as e:
            raise LlmtopError(f"cannot read {p}: {e.strerror or e}") from None
        for f in entries:
            try:
                format_of(f)
            except LlmtopError as e:
                why = str(e).removeprefix(f"{f}: ").removeprefix(f"{f} ")
                warnings.append(f"{f}: not a trace file ({why}), left out")
                continue
            files.append(f)
            found += 1
        if not found:
            left = [w for w in warnings if w.startswith(f"{p}{'/' if not str(p).endswith('/') else ''}")]
            raise LlmtopError(f"{p}: directory holds no trace files" + (f" ({left[0]}" + (
                f"; {len(left) - 1} more)" if len(left) > 1 else ")") if left else ""))
    if not files:
        raise LlmtopError("no trace files given")
    seen: set[Path] = set()
    for f in files:
        r = f.resolve()
        if r in seen:
            raise LlmtopError(f"{f}: the same file is given twice")
        seen.add(r)
    return files, warnings


def _first_ns(b: EventBatch) -> int:
    starts = [int(a["start_ns"].min()) for a in (b.kernels, b.steps) if len(a)]
    return min(starts) if starts else -(1 << 62)  # a names-only batch goes first


def open_traces(paths: Sequence[str | Path], *, kernel_names: str = KERNEL_NAME_STYLES[0],
                max_bytes: int | None = None) -> ImportResult:
    """Several foreign traces (files and/or directories of them) as one ImportResult.

    Each file is imported on its own (its launches, steps and layers are matched within the file), into
    one shared NameTable; its tracks are then renumbered after the previous files' tracks, so every
    rank's devices and streams stay on their own `track`, and its steps keep that track. Batches of all
    files are interleaved by start time (a replay plays the ranks side by side). SourceInfo.extra:
    `ranks` = [{rank, file, format, device, tracks}], `tracks` = [{track, rank, file, device/stream or
    pid/tid, label}], `files`. Recordings cannot be merged (they carry their own live source).
    max_bytes: the largest document each reader may build (None: registry.ReadLimits' defaults).
    """
    with _limits(max_bytes):
        return _open_traces(paths, kernel_names)


def _open_traces(paths: Sequence[str | Path], kernel_names: str) -> ImportResult:
    files, warnings = expand_trace_paths(paths)
    names = NameTable()
    per_file: list[tuple[Path, str, SourceInfo, list[EventBatch]]] = []
    skipped = 0
    skipped_by: Counter[str] = Counter()
    for p in files:
        fmt = format_of(p)
        if not fmt.mergeable:
            raise LlmtopError(f"{p}: {fmt.label}s cannot be merged with other files; give it alone")
        res = _read(p, fmt, names, kernel_names)
        per_file.append((p, fmt.name, res.source, list(res.batches)))
        skipped += res.skipped
        skipped_by.update(res.skipped_by)
        warnings.extend(f"{p.name}: {x}" for x in res.warnings)

    file_rank = [_rank_of(src) for _, _, src, _ in per_file]
    dup = {r for r, n in Counter(file_rank).items() if n > 1}
    if dup:
        warnings.append(f"several files say rank {', '.join(map(str, sorted(dup)))}: "
                        "their tracks are labelled with the file name")
    tracks: list[dict[str, Any]] = []
    ranks: list[dict[str, Any]] = []
    streams: list[Any] = []
    offset = 0
    for (p, fmt_name, src, batches), rank in zip(per_file, file_rank, strict=True):
        n_tracks = _n_tracks(src, batches)
        if offset + n_tracks > MAX_TRACKS:
            raise LlmtopError(f"{len(files)} files have more than {MAX_TRACKS} streams/threads in all")
        for b in batches:
            if offset:
                if len(b.kernels):
                    b.kernels["track"] += offset
                if len(b.steps):
                    b.steps["track"] += offset
        listed = {int(t.get("track", -1)): t for t in src.extra.get("tracks") or [] if isinstance(t, dict)}
        tag = f"rank {rank} ({p.name})" if rank in dup else f"rank {rank}"
        mine = []
        for i in range(n_tracks):
            own = {k: v for k, v in listed.get(i, {}).items() if k not in ("track", "rank")}
            t = {"track": offset + i, "rank": rank, "file": p.name, **own}
            t["label"] = track_label(t, rank_tag=tag)
            mine.append(t)
        tracks += mine
        streams += [s for s in src.extra.get("streams") or [] if s not in streams]
        ranks.append({"rank": rank, "file": str(p), "format": fmt_name, "device": src.device,
                      "tracks": [t["track"] for t in mine]})
        offset += n_tracks

    # Interleave by start time; the first batch out carries the whole name table (every name is interned
    # by now), so batch order never leaves a gap in a consumer's table.
    merged = list(heapq.merge(*(b for _, _, _, b in per_file), key=_first_ns))
    for i, b in enumerate(merged):
        b.names_base, b.new_names = 0, (list(names.names) if i == 0 else [])
    srcs = [s for _, _, s, _ in per_file]
    devices = list(dict.fromkeys(s.device for s in srcs if s.device))
    backends = list(dict.fromkeys(s.backend for s in srcs if s.backend))
    timings = list(dict.fromkeys(s.timing for s in srcs if s.timing))
    source = SourceInfo(
        kind="import",
        backend="+".join(backends),
        device=", ".join(devices),
        model=", ".join(p.name for p in files),
        timing=", ".join(timings),
        n_layers=max((s.n_layers for s in srcs), default=0),
        extra={
            "ranks": ranks,
            "tracks": tracks,
            "streams": streams,
            "files": [str(p) for p in files],
            "skipped": skipped,
            "warnings": warnings,
        },
    )
    return ImportResult(source=source, batches=merged, skipped=skipped, warnings=warnings, names=names,
                        skipped_by=dict(skipped_by))


def _rank_of(src: SourceInfo) -> int:
    r = src.extra.get("ranks")
    if isinstance(r, list) and r and type(r[0]) is int:
        return r[0]
    return 0


def _n_tracks(src: SourceInfo, batches: list[EventBatch]) -> int:
    """Tracks this file uses: its listed tracks, or one past the highest track in its rows."""
    top = -1
    for b in batches:
        for a in (b.kernels, b.steps):
            if len(a):
                top = max(top, int(np.max(a["track"])))
    listed = src.extra.get("tracks")
    return max(top + 1, len(listed) if isinstance(listed, list) else 0, 1)


# -- timed records (replay, report, export) ----------------------------------------------------
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
    skipped_by: dict[str, int] = field(default_factory=dict)  # why (ImportResult.skipped_by)


TracePaths = str | Path | Sequence[str | Path]


def open_trace_file(path: TracePaths, *, kernel_names: str = KERNEL_NAME_STYLES[0],
                    max_bytes: int | None = None) -> TraceFile:
    """Open a llmtop recording, or any trace a registered format reads; LlmtopError otherwise.

    Several paths, or a directory, are foreign traces merged by `open_traces` (one track per rank,
    device and stream); `TraceFile.path` is then the directory or the first file. kernel_names: one of
    KERNEL_NAME_STYLES (`--names`). max_bytes: `--max-bytes`, the largest document a reader may build
    (None: registry.ReadLimits' defaults, or what an enclosing `using_limits` set).
    """
    with _limits(max_bytes):
        return _open_trace_file(path, kernel_names)


def _open_trace_file(path: TracePaths, kernel_names: str) -> TraceFile:
    if not isinstance(path, str | Path):
        paths = list(path)
        if len(paths) != 1:
            if not paths:
                raise LlmtopError("no trace files given")
            return _trace_file(Path(paths[0]), open_traces(paths, kernel_names=kernel_names))
        path = paths[0]
    p = Path(path)
    if p.is_dir():
        return _trace_file(p, open_traces([p], kernel_names=kernel_names))
    if not p.exists():
        raise LlmtopError(f"no such file: {p}")
    return _trace_file(p, open_trace(p, kernel_names=kernel_names))


def _trace_file(p: Path, res: ImportResult) -> TraceFile:
    # res.warnings is the reader's own list: lazy readers append to it while their records iterate
    records = res.records if res.records is not None else timed_batches(res.batches)
    return TraceFile(p, res.source, res.format or res.source.backend or "import", records, res.warnings,
                     res.skipped, res.names, res.skipped_by)


def timed_batches(batches: Iterable[EventBatch]) -> Iterator[tuple[int, Item]]:
    """Give untimed batches (importers) a record time: their last step/kernel end, else the previous."""
    last = 0
    for b in batches:
        t = batch_time_ns(b)
        last = t if t is not None else last
        yield last, b
