"""The per-layer pane: one stacked bar per decoder layer (ms per decode step by op class), and the
bar-cell helpers it draws them with (1/8-cell resolution, runs of equal style merged)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

from llmtop.events import OP_CLASSES
from llmtop.tui import view
from llmtop.tui.panes.base import OP_COMPONENTS, Line, _Pane, flow

_EIGHTHS = " ▁▂▃▄▅▆▇█"


class LayerPane(_Pane):
    """One stacked bar per decoder layer (ms per decode step split by op class); outliers marked."""

    COMPONENT_CLASSES: ClassVar[set[str]] = _Pane.COMPONENT_CLASSES | OP_COMPONENTS

    def lines(self) -> list[Line]:
        w, h = self.size.width, self.size.height
        layers = view.rows(self.snapshot, "layers")
        if not layers:
            return [self.empty("no layer timings yet…")]
        totals = [view.num(r.get("ms_per_step")) or 0.0 for r in layers]
        present = [c for c in OP_CLASSES if any((view.num(_by(r).get(c)) or 0) > 0 for r in layers)]
        legend = flow([Text("■ " + c, self.op(c)) for c in present], w, sep=" ")
        peak_i = max(range(len(layers)), key=lambda i: totals[i])
        outliers = [str(r.get("layer")) for r in layers if r.get("outlier")]
        peak = f"L{layers[peak_i].get('layer')} {view.fmt_duration_ms(totals[peak_i])}"
        median = view.fmt_duration_ms(statistics.median(totals))
        chunks = [self.lv("peak", peak), self.lv("median", median)]
        if sum(c.cell_len for c in chunks) + 2 > w:  # a narrow pane: the short label, not a cut number
            chunks[1] = self.lv("med", median)
        if outliers:
            chunks.append(Text(outlier_text(outliers, w), self.cs("pane--warn")))
        summary_lines = flow(chunks, w)
        # Priority when space is short: bars, then the summary line, then the legend.
        bar_h = h - len(summary_lines) - 1  # summary + layer-number axis
        if bar_h < 1:
            return list(summary_lines[:h])
        if bar_h - len(legend) < 3:
            legend = legend[: max(0, bar_h - 3)]
        bar_h -= len(legend)
        return [*summary_lines, *self._bars(layers, totals, w, bar_h), *legend]

    def _bars(self, layers: Sequence[Mapping[str, Any]], totals: list[float], w: int, h: int) -> list[Line]:
        n = len(layers)
        # Several layers share a column only when the pane is narrower than the layer count.
        per_col = max(1, math.ceil(n / max(1, w)))
        cols: list[tuple[str, dict[str, float], bool]] = []
        for start in range(0, n, per_col):
            grp = layers[start : start + per_col]
            split: dict[str, float] = {}
            for r in grp:
                for c, v in _by(r).items():
                    split[c] = split.get(c, 0.0) + (view.num(v) or 0.0) / len(grp)
            # a column of several layers is named by its flagged one, if any (the axis marks it "▲N")
            label = str(next((r for r in grp if r.get("outlier")), grp[0]).get("layer"))
            cols.append((label, split, any(r.get("outlier") for r in grp)))
        slot = max(1, w // len(cols))
        bar_w = 1 if slot < 3 else min(3, slot - 1)
        gap = 1 if slot >= 2 else 0
        peak = max(totals) or 1.0
        # Rows are built as segments (runs of equal style merged), not Rich Text: this runs every refresh.
        rows: list[list[tuple[str, Style]]] = [[] for _ in range(h)]
        styles: dict[tuple[str, str], Style] = {}
        blank = Style()
        gap_s = " " * gap
        for _label, split, _out in cols:
            stack = [(c, split.get(c, 0.0)) for c in OP_CLASSES if split.get(c, 0.0) > 0]
            cells = _stack_cells(stack, peak, h)
            for row in range(h):
                ch, fg, bg = cells[h - 1 - row]
                style = styles.get((fg, bg))
                if style is None:
                    style = self.op(fg) if fg else blank
                    if bg:
                        style += Style(bgcolor=self.op(bg).color)
                    styles[fg, bg] = style
                _put(rows[row], ch * bar_w, style)
                if gap:
                    _put(rows[row], gap_s, blank)
        grid: list[Line] = [Strip([Segment(t, st) for t, st in r]) for r in rows]
        grid.append(_axis(cols, bar_w + gap, w, self.cs("pane--warn"), self.cs("pane--dim")))
        return grid


def outlier_text(layers: Sequence[str], width: int) -> str:
    """"⚠ outlier L0,L12", or on a narrow pane as many as fit and how many there are in all
    ("⚠ 9 outliers L1,L4,L8,…"); never a list cut in the middle of a layer number."""
    whole = "⚠ outlier " + ",".join("L" + o for o in layers)
    if len(whole) <= width:
        return whole
    head = f"⚠ {len(layers)} outliers "
    shown: list[str] = []
    for o in layers:
        if len(head) + len(",".join([*shown, "L" + o])) + 2 > width:  # room for ",…"
            break
        shown.append("L" + o)
    return head + ",".join(shown) + (",…" if shown else "…")


def _axis(cols: Sequence[tuple[str, Any, bool]], width: int, w: int, warn: Style, dim: Style) -> Text:
    """The layer-number axis under the bars: every flagged layer as "▲N" first (they must show), then
    plain numbers every few columns where they fit; every label keeps a blank cell before the next, so
    neighbours never run together ("▲1215")."""
    taken = [False] * (w + 1)
    placed: list[tuple[int, str, Style]] = []

    def put(x: int, txt: str, style: Style) -> bool:
        end = x + len(txt)
        if end > w or any(taken[max(0, x - 1):end + 1]):
            return False
        for i in range(x, end):
            taken[i] = True
        placed.append((x, txt, style))
        return True

    for i, (label, _split, out) in enumerate(cols):
        if out:
            put(i * width, "▲" + label, warn)
    every = max(1, math.ceil(3 / width))
    for i, (label, _split, out) in enumerate(cols):
        if not out and i % every == 0:
            put(i * width, label if i == 0 or len(label) < 3 else label[-2:], dim)
    axis = Text(no_wrap=True, overflow="crop")
    pos = 0
    for x, txt, style in sorted(placed, key=lambda p: p[0]):
        axis.append(" " * (x - pos))
        axis.append(txt, style)
        pos = x + len(txt)
    return axis


def _put(runs: list[tuple[str, Style]], text: str, style: Style) -> None:
    """Append text to a row of (text, style) runs, extending the last run when the style is the same."""
    if runs and runs[-1][1] is style:
        runs[-1] = (runs[-1][0] + text, style)
    else:
        runs.append((text, style))


def _by(row: Mapping[str, Any]) -> Mapping[str, Any]:
    v = row.get("by_op_class")
    return v if isinstance(v, Mapping) else {}


def _stack_cells(stack: list[tuple[str, float]], peak: float, h: int) -> list[tuple[str, str, str]]:
    """Cells bottom-up for one stacked bar: (char, fg op class, bg op class) at 1/8-cell resolution.

    A cell shared by two segments shows the lower one as a partial block over the upper one's colour.
    Runs on every refresh for every layer column, so it works on run boundaries, not per eighth.
    """
    total = sum(v for _, v in stack)
    height = round(total / peak * h * 8) if peak > 0 else 0
    runs: list[tuple[int, str]] = []  # (end in eighths from the bottom, op class), non-empty runs only
    end = 0
    if height and total > 0:
        acc = 0.0
        for c, v in stack:
            acc += v
            e = round(acc / total * height)
            if e > end:
                runs.append((e, c))
                end = e
    cells: list[tuple[str, str, str]] = []
    j = 0
    for r in range(h):
        lo, hi = r * 8, min(r * 8 + 8, end)
        if hi <= lo:
            cells.append((" ", "", ""))
            continue
        while runs[j][0] <= lo:
            j += 1
        lower = runs[j][1]
        n_lower = min(runs[j][0], hi) - lo
        if n_lower == 8:
            cells.append(("█", lower, ""))
        elif hi - lo == n_lower:
            cells.append((_EIGHTHS[n_lower], lower, ""))
        else:
            cells.append((_EIGHTHS[n_lower], lower, runs[j + 1][1] if hi - lo == 8 else ""))
    return cells
