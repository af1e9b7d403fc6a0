"""What a Snapshot is built from: the aggregator's state, copied out under its lock (`Frozen`), and the
small records it contains. The aggregator writes these, `snapshot.py` only reads them; keeping them here
lets both import this module instead of each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmtop.stats.store import Store

TREND_CAP = 8192  # per-token trend buffer; decimated by 2 beyond this
# per-track counter columns (cumulative since the start / last reset): the report's `tracks` section
TR_KERNELS, TR_KERNEL_NS, TR_STEPS, TR_DECODE_STEPS, TR_DECODE_TOKENS, TR_DECODE_WALL_NS = range(6)
N_TR_COLS = 6


class GenTrend:
    """Decode step walls of one generation (the steps after one prefill), bounded."""

    __slots__ = ("buf", "first", "last", "mn", "mx", "n", "si", "sii", "siy", "stride", "sum")

    def __init__(self) -> None:
        self.n = 0
        self.first = self.last = self.sum = self.si = self.sii = self.siy = 0.0
        self.mn, self.mx = math.inf, -math.inf
        self.buf: list[float] = []
        self.stride = 1

    def add(self, w: np.ndarray) -> None:
        if not len(w):
            return
        i = np.arange(self.n, self.n + len(w), dtype=np.float64)
        if self.n == 0:
            self.first = float(w[0])
        self.last = float(w[-1])
        self.mn, self.mx = min(self.mn, float(w.min())), max(self.mx, float(w.max()))
        self.sum += float(w.sum())
        self.si += float(i.sum())
        self.sii += float((i * i).sum())
        self.siy += float((i * w).sum())
        keep = (i.astype(np.int64) % self.stride) == 0
        self.buf.extend(w[keep].tolist())
        while len(self.buf) > TREND_CAP:
            self.buf = self.buf[::2]
            self.stride *= 2
        self.n += len(w)

    def middle(self) -> float:
        return self.buf[min(len(self.buf) - 1, (self.n // 2) // self.stride)]



def copy_gen(g: GenTrend) -> GenTrend:
    c = GenTrend()
    for s in GenTrend.__slots__:
        setattr(c, s, getattr(g, s))
    c.buf = list(g.buf)
    return c


@dataclass(slots=True)
class Frozen:
    """Everything a Snapshot needs, copied out of the aggregator under its lock."""

    store: Store
    names: list[str]
    key_name: np.ndarray
    key_layer: np.ndarray
    key_phase: np.ndarray
    key_opc: np.ndarray
    cell_key: np.ndarray
    cell_bucket: np.ndarray
    mode: str
    group: str
    sort: str
    filter: str
    window_s: float
    source: dict[str, Any]
    span_s: float
    events: int
    context: int
    decode_steps_total: int  # since the start of the run: not windowed, not reset
    tok_s_now: float | None
    tok_bins: np.ndarray  # (n, 2): second index relative to the first event second, tokens
    gen: GenTrend | None
    gen_kind: str
    shapes: tuple[list[tuple[int, int, int, int]], np.ndarray, np.ndarray]  # slot meta, counts, totals
    dropped: dict[str, int]
    collectors: dict[str, dict[str, Any]]
    # Shared with the aggregator: derived per-cell orderings that only change when cells are added
    # (see snapshot._cell_order). Safe to share: entries are replaced whole, never mutated.
    cell_cache: dict[str, Any] = field(default_factory=dict)
    # Cumulative per-track counters, one row per track (columns TR_*): the report's `tracks` section.
    tracks: np.ndarray = field(default_factory=lambda: np.zeros((0, N_TR_COLS)))

    def shape_rows(self) -> dict[int, list[tuple[int, int, int, int, float]]]:
        """name id -> [(m, n, k, count, total ns)], built on demand (only the kernel detail needs it)."""
        meta, cnt, tot = self.shapes
        out: dict[int, list[tuple[int, int, int, int, float]]] = {}
        for (nid, m, n, k), c, t in zip(meta, cnt.tolist(), tot.tolist(), strict=True):
            out.setdefault(nid, []).append((m, n, k, c, t))
        return out
