"""Importers: traces people already have (Kineto JSON, Nsight Systems SQLite, metallic JSONL, doppler logs)
-> the same EventBatches a live run produces. `open_trace(path)` picks the reader by content;
`open_traces(paths)` merges several files (one per rank of a distributed run, or a directory of them)."""

from __future__ import annotations

import heapq
import importlib
import sqlite3
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import EventBatch, NameTable, SourceInfo, track_label
from llmtop.traces.importers.detect import detect_format

__all__ = ["ImportResult", "detect_format", "expand_trace_paths", "open_trace", "open_traces", "track_label"]

MAX_TRACKS = 65536  # KERNEL_DTYPE.track is uint16


@dataclass
class ImportResult:
    source: SourceInfo
    batches: Iterator[EventBatch] | list[EventBatch]
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    names: NameTable = field(default_factory=NameTable)  # the one table every batch's ids refer to


def _import(p: Path, fmt: str, names: NameTable) -> Any:
    """One trace file: (source, batches, skipped, warnings) read into `names`, or for a recording its
    reader's result. Bad input -> LlmtopError with one line."""
    try:
        if fmt == "recording":
            rec = importlib.import_module("llmtop.traces.recording")
            opener = getattr(rec, "open_recording", None) or getattr(rec, "read_recording", None)
            if opener is None:
                raise LlmtopError(f"{p}: llmtop recording, but llmtop.traces.recording has no reader")
            return opener(p)
        if fmt == "kineto":
            from llmtop.traces.importers.kineto import import_kineto

            return import_kineto([p], names)
        if fmt == "nsys":
            from llmtop.traces.importers.nsys import import_nsys

            return import_nsys(p, names)
        if fmt == "metallic":
            from llmtop.traces.importers.metallic import import_metallic

            return import_metallic(p, names)
        if fmt == "doppler":
            from llmtop.traces.importers.doppler import import_doppler

            return import_doppler(p, names)
        raise LlmtopError(f"{p}: unrecognised trace format")
    except LlmtopError:
        raise
    except (OSError, EOFError, zlib.error, sqlite3.DatabaseError, UnicodeError, MemoryError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise LlmtopError(f"{p}: cannot import {fmt} trace: {type(e).__name__}: {first}") from None


def open_trace(path: str | Path) -> ImportResult:
    """Read a trace file (format chosen by its content). Bad input -> LlmtopError with one line."""
    p = Path(path)
    fmt = detect_format(p)
    names = NameTable()
    if fmt == "recording":
        return _import(p, fmt, names)
    source, batches, skipped, warnings = _import(p, fmt, names)
    return ImportResult(source=source, batches=batches, skipped=skipped, warnings=warnings, names=names)


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
        for f in sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")):
            try:
                detect_format(f)
            except LlmtopError:
                warnings.append(f"{f}: not a trace file, left out")
                continue
            files.append(f)
            found += 1
        if not found:
            raise LlmtopError(f"{p}: directory holds no trace files")
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


def open_traces(paths: Sequence[str | Path]) -> ImportResult:
    """Several foreign traces (files and/or directories of them) as one ImportResult.

    Each file is imported on its own (its launches, steps and layers are matched within the file), into
    one shared NameTable; its tracks are then renumbered after the previous files' tracks, so every
    rank's devices and streams stay on their own `track`, and its steps keep that track. Batches of all
    files are interleaved by start time (a replay plays the ranks side by side). SourceInfo.extra:
    `ranks` = [{rank, file, format, device, tracks}], `tracks` = [{track, rank, file, device/stream or
    pid/tid, label}], `files`. Recordings cannot be merged (they carry their own live source).
    """
    files, warnings = expand_trace_paths(paths)
    names = NameTable()
    per_file: list[tuple[Path, str, SourceInfo, list[EventBatch]]] = []
    skipped = 0
    for p in files:
        fmt = detect_format(p)
        if fmt == "recording":
            raise LlmtopError(f"{p}: llmtop recordings cannot be merged with other files; give it alone")
        source, batches, sk, w = _import(p, fmt, names)
        per_file.append((p, fmt, source, list(batches)))
        skipped += sk
        warnings.extend(f"{p.name}: {x}" for x in w)

    file_rank = [_rank_of(src) for _, _, src, _ in per_file]
    dup = {r for r, n in Counter(file_rank).items() if n > 1}
    if dup:
        warnings.append(f"several files say rank {', '.join(map(str, sorted(dup)))}: "
                        "their tracks are labelled with the file name")
    tracks: list[dict[str, Any]] = []
    ranks: list[dict[str, Any]] = []
    streams: list[Any] = []
    offset = 0
    for (p, fmt, src, batches), rank in zip(per_file, file_rank, strict=True):
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
        ranks.append({"rank": rank, "file": str(p), "format": fmt, "device": src.device,
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
    return ImportResult(source=source, batches=merged, skipped=skipped, warnings=warnings, names=names)


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
