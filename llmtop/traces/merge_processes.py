"""Several processes' recordings of one `llmtop run` as one stream (vLLM's tensor-parallel workers, a
script that runs two models in two processes).

Each process wrote its own recording (`<pid>.llmtop`) with its own kernel-name table and its own track
numbers. Here every batch is re-interned into one shared name table, each (process, track) gets a track
of its own (labelled with the pid), and batches of all processes are interleaved by time: the agents'
clocks are all perf_counter_ns, CLOCK_MONOTONIC, one clock for every process on the machine. The merged
source is the busiest process's (the first path), with `extra["processes"]` listing them all.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmtop.events import EventBatch, Item, NameTable, SourceInfo
from llmtop.traces.open import TraceFile, open_trace_file
from llmtop.traces.recording import item_time_ns


class _Remap:
    """One process's local name ids and tracks → the merged ones."""

    def __init__(self, pid: str, names: NameTable, tracks: list[dict[str, Any]]) -> None:
        self.pid = pid
        self.names = names
        self.tracks = tracks  # the merged track list, shared by every process
        self.local_names: list[int] = []
        self.track_of: dict[int, int] = {}

    def batch(self, b: EventBatch) -> EventBatch:
        for i, n in enumerate(b.new_names):
            if b.names_base + i == len(self.local_names):
                self.local_names.append(self.names.intern(n))
        lut = np.asarray(self.local_names, dtype=np.int64)
        k, st = b.kernels.copy(), b.steps.copy()
        if len(k):
            k["name"] = lut[k["name"]]
        for arr in (k, st):
            if len(arr):
                arr["track"] = self._tracks(arr["track"])
        return dataclasses.replace(b, kernels=k, steps=st, names_base=0, new_names=[])

    def _tracks(self, local: np.ndarray) -> np.ndarray:
        u, inv = np.unique(local, return_inverse=True)
        for t in u.tolist():
            if t not in self.track_of:
                self.track_of[t] = len(self.tracks)
                label = f"pid {self.pid}" + (f" track {t}" if t else "")
                self.tracks.append({"track": len(self.tracks), "pid": self.pid, "label": label})
        return np.asarray([self.track_of[t] for t in u.tolist()], dtype=local.dtype)[inv]


def merge_recordings(paths: Sequence[Path]) -> TraceFile:
    """One TraceFile over the recordings of several processes (each named `<pid>.llmtop`)."""
    files = [open_trace_file(p) for p in paths]
    names = NameTable()
    tracks: list[dict[str, Any]] = []
    remaps = [_Remap(Path(p).stem, names, tracks) for p in paths]
    warnings: list[str] = []

    def stream(i: int) -> Iterator[tuple[int, int, Item]]:
        for t_ns, item in files[i].records:
            if isinstance(item, EventBatch):
                item = remaps[i].batch(item)
            t = item_time_ns(item)
            yield (t if t is not None else t_ns), i, item

    def records() -> Iterator[tuple[int, Item]]:
        sent = 0
        for t, _, item in heapq.merge(*(stream(i) for i in range(len(files))), key=lambda r: (r[0], r[1])):
            if isinstance(item, EventBatch):
                new = names.since(sent)
                item = dataclasses.replace(item, names_base=sent, new_names=list(new))
                sent += len(new)
            yield t, item
        for f in files:  # readers fill these while their records iterate
            warnings.extend(f.warnings)
            merged.skipped += f.skipped
            for k, v in f.skipped_by.items():
                merged.skipped_by[k] = merged.skipped_by.get(k, 0) + v

    first = files[0].source
    extra = {**first.extra, "tracks": tracks,
             "processes": [{"pid": r.pid, "model": f.source.model, "device": f.source.device,
                            "instrumented": f.source.extra.get("instrumented", "")}
                           for r, f in zip(remaps, files, strict=True)]}
    source = SourceInfo(**{**dataclasses.asdict(first), "extra": extra})
    merged = TraceFile(Path(paths[0]).parent, source, "llmtop", records(), warnings)
    return merged


__all__ = ["merge_recordings"]
