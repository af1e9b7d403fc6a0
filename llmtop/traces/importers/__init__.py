"""Importers: traces people already have (Kineto JSON, Nsight Systems SQLite, metallic JSONL, doppler logs)
-> the same EventBatches a live run produces. `open_trace(path)` picks the reader by content."""

from __future__ import annotations

import importlib
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmtop.errors import LlmtopError
from llmtop.events import EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.detect import detect_format

__all__ = ["ImportResult", "detect_format", "open_trace"]


@dataclass
class ImportResult:
    source: SourceInfo
    batches: Iterator[EventBatch] | list[EventBatch]
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    names: NameTable = field(default_factory=NameTable)  # the one table every batch's ids refer to


def open_trace(path: str | Path) -> ImportResult:
    """Read a trace file (format chosen by its content). Bad input -> LlmtopError with one line."""
    p = Path(path)
    fmt = detect_format(p)
    names = NameTable()
    try:
        if fmt == "kineto":
            from llmtop.traces.importers.kineto import import_kineto

            source, batches, skipped, warnings = import_kineto([p], names)
        elif fmt == "nsys":
            from llmtop.traces.importers.nsys import import_nsys

            source, batches, skipped, warnings = import_nsys(p, names)
        elif fmt == "metallic":
            from llmtop.traces.importers.metallic import import_metallic

            source, batches, skipped, warnings = import_metallic(p, names)
        elif fmt == "doppler":
            from llmtop.traces.importers.doppler import import_doppler

            source, batches, skipped, warnings = import_doppler(p, names)
        elif fmt == "recording":
            rec = importlib.import_module("llmtop.traces.recording")
            opener = getattr(rec, "open_recording", None) or getattr(rec, "read_recording", None)
            if opener is None:
                raise LlmtopError(f"{p}: llmtop recording, but llmtop.traces.recording has no reader")
            return opener(p)
        else:
            raise LlmtopError(f"{p}: unrecognised trace format")
    except LlmtopError:
        raise
    except (OSError, EOFError, zlib.error, sqlite3.DatabaseError, UnicodeError, MemoryError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise LlmtopError(f"{p}: cannot import {fmt} trace: {type(e).__name__}: {first}") from None
    return ImportResult(source=source, batches=batches, skipped=skipped, warnings=warnings, names=names)
