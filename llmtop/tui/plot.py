"""Tiny braille plotting for terminal panes (pure Python, no Textual).

Each character cell holds a 2x4 grid of braille dots, so a 30x6 pane gives a 60x24 dot canvas:
enough to see a tok/s trend or attention growing with context without a plotting dependency.
Every series keeps its own style; where series overlap in one cell the later one wins the colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

# Dot bit for (column 0..1, row 0..3) inside one braille cell (Unicode braille pattern layout).
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_BRAILLE_BASE = 0x2800


@dataclass(slots=True)
class Series:
    xs: Sequence[float]
    ys: Sequence[float]
    style: Style | str = ""
    line: bool = False  # join consecutive points with segments (else scatter)


def decimate(xs: Sequence[float], ys: Sequence[float], n_cols: int) -> tuple[list[float], list[float]]:
    """At most ~2 points per dot column (each column's min and max, in x order) for a line plot.

    A 30-minute run has 1800 tok/s points for a pane ~80 dots wide; drawing every segment costs
    milliseconds per refresh and shows nothing more than each column's extremes. Non-finite points
    (gaps) are dropped by the decimation, which only happens above 4 points per column.
    """
    n = len(xs)
    if n <= 4 * max(1, n_cols):
        return list(xs), list(ys)
    x = np.asarray(xs, np.float64)
    y = np.asarray(ys, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not len(x):
        return [], []
    lo, hi = float(x.min()), float(x.max())
    col = np.zeros(len(x), np.int64) if hi <= lo else ((x - lo) / (hi - lo) * (n_cols - 1)).astype(np.int64)
    order = np.lexsort((y, col))  # by column, then value: each column's first is its min, last its max
    c = col[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    ends = np.r_[starts[1:], len(c)] - 1
    keep = np.unique(np.concatenate([order[starts], order[ends]]))
    keep = keep[np.argsort(x[keep], kind="stable")]
    return x[keep].tolist(), y[keep].tolist()


def nice_range(lo: float, hi: float) -> tuple[float, float]:
    """A non-empty range covering [lo, hi]; pads a flat series so it still draws mid-pane."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    return lo, hi


class BrailleCanvas:
    """A width x height character canvas addressed in dot coordinates (2*width x 4*height)."""

    def __init__(self, width: int, height: int) -> None:
        self.width = max(0, width)
        self.height = max(0, height)
        self._bits = [[0] * self.width for _ in range(self.height)]
        self._styles: list[list[Style | str]] = [[""] * self.width for _ in range(self.height)]

    @property
    def dot_width(self) -> int:
        return self.width * 2

    @property
    def dot_height(self) -> int:
        return self.height * 4

    def set(self, dx: int, dy: int, style: Style | str = "") -> None:
        """Light dot (dx, dy); dy=0 is the top row. Out-of-range dots are ignored."""
        if 0 <= dx < self.dot_width and 0 <= dy < self.dot_height:
            cx, cy = dx >> 1, dy >> 2
            self._bits[cy][cx] |= _DOT_BITS[dx & 1][dy & 3]
            self._styles[cy][cx] = style

    def line(self, x0: int, y0: int, x1: int, y1: int, style: Style | str = "") -> None:
        """Bresenham segment between two dots."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        # Bound the walk so a wild coordinate cannot stall the UI thread.
        for _ in range(dx - dy + 1):
            self.set(x0, y0, style)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def plot(
        self,
        series: Sequence[Series],
        x_range: tuple[float, float],
        y_range: tuple[float, float],
    ) -> None:
        if self.width == 0 or self.height == 0:
            return
        x0, x1 = nice_range(*x_range)
        y0, y1 = nice_range(*y_range)
        sx = (self.dot_width - 1) / (x1 - x0)
        sy = (self.dot_height - 1) / (y1 - y0)
        for s in series:
            prev: tuple[int, int] | None = None
            for x, y in zip(s.xs, s.ys, strict=False):
                if not (math.isfinite(x) and math.isfinite(y)):
                    prev = None  # a gap in the data breaks the line
                    continue
                px = round((x - x0) * sx)
                py = self.dot_height - 1 - round((y - y0) * sy)
                if s.line and prev is not None:
                    self.line(prev[0], prev[1], px, py, s.style)
                else:
                    self.set(px, py, s.style)
                prev = (px, py)

    def _runs(self) -> list[list[tuple[str, Style | str]]]:
        """Per character row: runs of (text, style) with one style each; empty cells are spaces."""
        out: list[list[tuple[str, Style | str]]] = []
        for bits, styles in zip(self._bits, self._styles, strict=True):
            row: list[tuple[str, Style | str]] = []
            run_style: Style | str = ""
            run: list[str] = []
            for b, st in zip(bits, styles, strict=True):
                ch = chr(_BRAILLE_BASE + b) if b else " "
                st = st if b else ""
                if st != run_style and run:
                    row.append(("".join(run), run_style))
                    run = []
                run_style = st
                run.append(ch)
            if run:
                row.append(("".join(run), run_style))
            out.append(row)
        return out

    def rows(self) -> list[Text]:
        """One Text per character row; empty cells are spaces (so the pane background shows)."""
        out: list[Text] = []
        for runs in self._runs():
            t = Text(no_wrap=True, overflow="crop")
            for txt, st in runs:
                t.append(txt, st)
            out.append(t)
        return out

    def segment_rows(self) -> list[list[Segment]]:
        """The rows as Rich segments (what a pane paints), skipping Text's span bookkeeping per frame.
        String styles are parsed by Rich; panes pass Style objects."""
        def style(st: Style | str) -> Style | None:
            return st if isinstance(st, Style) else (Style.parse(st) if st else None)

        return [[Segment(txt, style(st)) for txt, st in runs] for runs in self._runs()]


def plot_rows(
    width: int,
    height: int,
    series: Sequence[Series],
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
) -> list[Text]:
    """Plot series into `height` rows of `width` cells; ranges default to the data's extent."""
    return _plotted(width, height, series, x_range, y_range).rows()


def plot_segments(
    width: int,
    height: int,
    series: Sequence[Series],
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
) -> list[list[Segment]]:
    """As plot_rows, as Rich segments per row (the panes' fast path)."""
    return _plotted(width, height, series, x_range, y_range).segment_rows()


def _plotted(
    width: int,
    height: int,
    series: Sequence[Series],
    x_range: tuple[float, float] | None,
    y_range: tuple[float, float] | None,
) -> BrailleCanvas:
    canvas = BrailleCanvas(width, height)
    xs = [x for s in series for x in s.xs if math.isfinite(x)]
    ys = [y for s in series for y in s.ys if math.isfinite(y)]
    if xs and ys:
        canvas.plot(
            series,
            x_range or (min(xs), max(xs)),
            y_range or (min(ys), max(ys)),
        )
    return canvas
