"""The panes. Each one keeps the latest data handed to it and redraws only when that changes.

Colours come from component classes styled in llmtop.tcss (no styles in Python), so both themes
and the op-class palette are edited in one place.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from llmtop.events import OP_CLASSES
from llmtop.tui import view
from llmtop.tui.plot import Series, decimate, plot_segments
from llmtop.tui.provider import Counters, ProviderStatus

OP_COMPONENTS = frozenset(f"op--{c}" for c in OP_CLASSES)
# A pane line: Rich Text for short labelled lines, or a ready Strip for the bulky parts redrawn every
# refresh (plots, bars), which skips Rich's Text -> segments pass.
Line = Text | Strip
_EIGHTHS = " ▁▂▃▄▅▆▇█"


def op_style(widget: Widget, op_class: str) -> Style:
    name = f"op--{op_class}" if op_class in OP_CLASSES else "op--other"
    return widget.get_component_rich_style(name, partial=True)


def flow(chunks: Sequence[Text], width: int, sep: str = "  ") -> list[Text]:
    """Greedy word-wrap of whole chunks (a label+value never splits across lines)."""
    lines: list[Text] = []
    cur = Text(no_wrap=True, overflow="crop")
    for ch in chunks:
        if cur.cell_len and cur.cell_len + len(sep) + ch.cell_len > width:
            lines.append(cur)
            cur = Text(no_wrap=True, overflow="crop")
        if cur.cell_len:
            cur.append(sep)
        cur.append_text(ch)
    if cur.cell_len:
        lines.append(cur)
    return lines


def join_lines(lines: Iterable[Text]) -> Text:
    out = Text(no_wrap=True, overflow="crop")
    for i, line in enumerate(lines):
        if i:
            out.append("\n")
        out.append_text(line)
    return out


class _CachedStyles:
    """Component styles resolved once per stylesheet/theme change, not per refresh: each
    get_component_rich_style walks the DOM (~0.1 ms), and panes ask for a dozen per frame."""

    _cstyles: dict[str, Style]

    def cs(self, name: str) -> Style:
        cache = self.__dict__.setdefault("_cstyles", {})
        st = cache.get(name)
        if st is None:
            st = cache[name] = self.get_component_rich_style(name, partial=True)  # type: ignore[attr-defined]
        return st

    def _rich_base(self) -> Style:
        """The widget's own rich_style (background etc.), cached like the component styles."""
        cache = self.__dict__.setdefault("_cstyles", {})
        st = cache.get("")
        if st is None:
            st = cache[""] = self.rich_style  # type: ignore[attr-defined]
        return st

    def notify_style_update(self) -> None:
        super().notify_style_update()  # type: ignore[misc]
        self.__dict__.pop("_cstyles", None)
        self.__dict__.pop("_shown", None)

    def show_text(self, text: Text) -> None:
        """Static.update, skipped when the text (with its styles) is what is already shown: an update
        makes Textual re-render every line of the widget, and most refreshes leave the header as it was."""
        if self.__dict__.get("_shown") != text:
            self.__dict__["_shown"] = text
            self.update(text, layout=False)  # type: ignore[attr-defined]


class _Pane(_CachedStyles, Widget):
    """A bordered pane drawn with the line API from the snapshot it was last given.

    Subclasses build their content as a list of Rich Text lines (`lines()`); they are turned into
    strips once per new snapshot or size, so repaints in between cost nothing.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "pane--label",
        "pane--value",
        "pane--warn",
        "pane--dim",
        "plot--main",
        "plot--fit",
    }

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.snapshot: Any = None
        self._strips: list[Strip] | None = None
        self._strips_key: tuple[int, int] | None = None
        self._base = Style()
        self._op_styles: dict[str, Style] = {}

    def set_snapshot(self, snapshot: Any) -> None:
        """Show a new snapshot, repainting only the lines whose content changed.

        Textual re-renders every line of a widget that calls refresh() (border, padding and filters
        included); most refreshes change a few numbers and leave plots and bars as they were, so the
        new strips are built now, compared with the shown ones, and only changed lines are marked dirty.
        """
        self.snapshot = snapshot
        old = self._strips
        w, h = self.size
        if old is None or self._strips_key != (w, h) or not self.is_attached or not w or not h:
            self._strips = None
            self.refresh()
            return
        new = self._build_strips(w, h)
        self._strips = new
        blank = Strip.blank(w, self._base)
        dirty: list[Region] = []
        y0 = -1
        for y in range(h + 1):
            same = y == h or (old[y] if y < len(old) else blank) == (new[y] if y < len(new) else blank)
            if not same and y0 < 0:
                y0 = y
            elif same and y0 >= 0:
                dirty.append(Region(0, y0, w, y - y0))
                y0 = -1
        if dirty:
            self.refresh(*dirty)

    def _build_strips(self, w: int, h: int) -> list[Strip]:
        base = self._base = self._rich_base()
        console = self.app.console
        strips = []
        for line in self.lines()[:h]:
            if isinstance(line, Strip):
                n = line.cell_length
                segs = list(line if n <= w else line.crop(0, w))
            else:
                segs = list(line.render(console, end=""))
                n = sum(seg.cell_length for seg in segs)
                if n > w:
                    segs = list(Strip(segs, n).crop(0, w))
            # One Strip per line, built directly: every Strip carries seven caches, and the chained
            # crop/adjust/apply_style calls made up to four of them per line and frame (GC pressure).
            n = min(n, w)
            if n < w:
                segs = [*segs, Segment(" " * (w - n))]
            strips.append(Strip(Segment.apply_style(segs, base), w))
        self._strips_key = (w, h)
        return strips

    def lines(self) -> list[Line]:
        raise NotImplementedError

    def text(self) -> str:
        """The pane's content as plain text (what a terminal shows, without colours)."""
        return "\n".join(t.plain if isinstance(t, Text) else t.text for t in self.lines())

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None  # theme or CSS changed: styles baked into the strips are stale
        self._op_styles.clear()

    def op(self, op_class: str) -> Style:
        """Op-class colour, resolved once per stylesheet (it is asked for per bar cell)."""
        st = self._op_styles.get(op_class)
        if st is None:
            st = self._op_styles[op_class] = op_style(self, op_class)
        return st

    def render_line(self, y: int) -> Strip:
        w, h = self.size
        if self._strips is None or self._strips_key != (w, h):
            self._strips = self._build_strips(w, h)
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(w, self._base)

    def lv(self, label: str, value: str, warn: bool = False) -> Text:
        t = Text(no_wrap=True)
        t.append(label + " ", self.cs("pane--label"))
        t.append(value, self.cs("pane--warn" if warn else "pane--value"))
        return t

    def empty(self, message: str) -> Text:
        return Text(message, self.cs("pane--dim"))


class TokenPane(_Pane):
    """Token rate: decode tok/s over time plus TTFT, TPOT p50/p95, prefill/decode rates."""

    def lines(self) -> list[Line]:
        w, h = self.size.width, self.size.height
        tok = view.section(self.snapshot, "tokens")
        if not tok:
            return [self.empty("waiting for the first tokens…")]
        narrow = w < 34
        chunks = [
            self.lv("decode", f"{view.fmt_rate(tok.get('decode_tok_s'))} tok/s"),
            self.lv("prefill", f"{view.fmt_rate(tok.get('prefill_tok_s'))}" + ("" if narrow else " tok/s")),
            self.lv("TTFT", view.fmt_duration_ms(tok.get("ttft_ms"))),
            self.lv(
                "TPOT" if narrow else "TPOT p50/p95",
                f"{view.fmt_ms(tok.get('tpot_ms_p50'))}/{view.fmt_ms(tok.get('tpot_ms_p95'))} ms",
            ),
            self.lv("gen", view.fmt_count(tok.get("generated"))),
            self.lv("ctx", view.fmt_count(view.token_context(tok))),
        ]
        lines: list[Line] = [*flow(chunks, w)]
        ts, vs = view.token_rate_series(self.snapshot)
        ts, vs = decimate(ts, vs, 2 * w)  # braille: 2 dot columns per cell
        finite = [v for v in vs if math.isfinite(v)]
        room = h - len(lines)
        if room >= 2 and len(finite) >= 2:
            lo, hi = min(finite), max(finite)
            if room >= 4:  # the range caption only when the plot keeps at least 3 rows
                span = ts[-1] - ts[0] if ts else 0.0
                lines.append(
                    Text(
                        f"tok/s {view.fmt_rate(lo)}–{view.fmt_rate(hi)} over {span:.0f} s",
                        self.cs("pane--dim"),
                        no_wrap=True,
                    )
                )
                room -= 1
            # Anchor the y axis at 0 so a small wobble does not look like a collapse.
            style = self.cs("plot--main")
            lines += [Strip(r) for r in plot_segments(w, room, [Series(ts, vs, style, line=True)],
                                                      y_range=(0.0, hi * 1.05))]
        return lines


class AttentionPane(_Pane):
    """Attention ms per decode step against context: points, least-squares line, projection."""

    def lines(self) -> list[Line]:
        w, h = self.size.width, self.size.height
        att = view.section(self.snapshot, "attention")
        xs, ys = view.attention_points(self.snapshot)
        if not att and not xs:
            return [self.empty("no decode steps yet…")]
        slope = view.num(att.get("slope_us_per_1k"))
        intercept = view.num(att.get("intercept_ms"))
        chunks = [
            self.lv("slope", f"{view.fmt_rate(slope)} µs/1k tok"),
            self.lv("R²", "–" if view.num(att.get("r2")) is None else f"{float(att['r2']):.3f}"),
            self.lv("at 0 ctx", view.fmt_duration_ms(intercept)),
        ]
        proj = att.get("projection")
        note = att.get("fit_note")
        if note and not att.get("fit_ok"):
            chunks.append(Text(f"no projection: {note}", self.cs("pane--dim")))
        elif isinstance(proj, Mapping) and view.num(proj.get("ctx")):
            chunks.append(
                self.lv(
                    f"at {view.fmt_count(proj.get('ctx'))} tok",
                    f"{view.fmt_pct(proj.get('pct_of_step'))} of a step "
                    f"({view.fmt_duration_ms(proj.get('attention_ms'))})",
                )
            )
        if att.get("superlinear"):
            warn = self.cs("pane--warn")
            chunks.append(Text("⚠ superlinear growth", warn))
        lines: list[Line] = [*flow(chunks, w)]
        room = h - len(lines)
        if room >= 2 and xs:
            x_lo, x_hi = min(xs), max(xs)
            series = [Series(xs, ys, self.cs("plot--main"))]
            if slope is not None and intercept is not None:
                fx = [x_lo + (x_hi - x_lo) * i / 32 for i in range(33)]
                fy = [intercept + slope * x / 1e6 for x in fx]  # µs per 1k tokens -> ms per token
                fit_style = self.cs("plot--fit")
                series.append(Series(fx, fy, fit_style, line=True))
            if room >= 4:  # the axis caption only when the plot keeps at least 3 rows
                y_all = [y for s in series for y in s.ys if math.isfinite(y)]
                lines.append(
                    Text(
                        f"ctx {view.fmt_count(x_lo)}–{view.fmt_count(x_hi)}  "
                        f"ms {view.fmt_ms(min(y_all))}–{view.fmt_ms(max(y_all))}  (· points, ─ fit)",
                        self.cs("pane--dim"),
                        no_wrap=True,
                    )
                )
                room -= 1
            # Points first, then the fitted line on top: where they coincide the fit shows.
            lines += [Strip(r) for r in plot_segments(w, room, series)]
        return lines


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
        summary = Text(no_wrap=True, overflow="crop")
        summary.append_text(
            self.lv("peak", f"L{layers[peak_i].get('layer')} {view.fmt_duration_ms(totals[peak_i])}")
        )
        summary.append("  ")
        summary.append_text(self.lv("median", view.fmt_duration_ms(statistics.median(totals))))
        if outliers:
            summary.append("  ")
            summary.append(
                "⚠ outlier " + ",".join("L" + o for o in outliers),
                self.cs("pane--warn"),
            )
        # Priority when space is short: bars, then the summary line, then the legend.
        bar_h = h - 2  # summary + layer-number axis
        if bar_h < 1:
            return [summary]
        if bar_h - len(legend) < 3:
            legend = legend[: max(0, bar_h - 3)]
        bar_h -= len(legend)
        return [summary, *self._bars(layers, totals, w, bar_h), *legend]

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
            label = str(grp[0].get("layer"))
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
        axis = Text(no_wrap=True, overflow="crop")
        warn = self.cs("pane--warn")
        dim = self.cs("pane--dim")
        pos = 0
        width = bar_w + gap
        for i, (label, _split, out) in enumerate(cols):
            x = i * width
            if out:
                if x >= pos:
                    axis.append(" " * (x - pos))
                    axis.append("▲" + label, warn)
                    pos = x + 1 + len(label)
            elif i % max(1, math.ceil(3 / width)) == 0 and x >= pos:
                txt = label if i == 0 or len(label) < 3 else label[-2:]
                if x + len(txt) <= w:
                    axis.append(" " * (x - pos))
                    axis.append(txt, dim)
                    pos = x + len(txt) + 1
                    axis.append(" ")
        grid.append(axis)
        return grid


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


# -- header, strip, errors --------------------------------------------------------------------


class _TextBar(_CachedStyles, Widget):
    """A fixed-height bar of unwrapped text lines (cropped with an ellipsis), drawn with the line API.

    The header changes a number or two every refresh; as a Static, each update re-rendered the whole
    widget through Textual's content pipeline. Here only the lines whose strips changed are repainted.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text()
        self._bar: list[Strip] | None = None
        self._bar_key: tuple[int, int] | None = None

    @property
    def content(self) -> Text:
        """The text shown (with its styles); `.plain` is what a terminal shows, without colours."""
        return self._text

    def show_text(self, text: Text) -> None:
        if text == self._text and self._bar is not None:
            return
        self._text = text
        old = self._bar
        w, h = self.size
        if old is None or self._bar_key != (w, h) or not self.is_attached or not w or not h:
            self._bar = None
            self.refresh()
            return
        new = self._bar = self._build_bar(w, h)
        for y in range(h):
            if old[y] != new[y]:
                self.refresh(Region(0, y, w, 1))

    def _build_bar(self, w: int, h: int) -> list[Strip]:
        base = self._rich_base()
        console = self.app.console
        strips = []
        for line in self._text.split("\n", allow_blank=True)[:h]:
            line.truncate(w, overflow="ellipsis")
            segs = list(line.render(console, end=""))
            n = sum(seg.cell_length for seg in segs)
            if n < w:
                segs.append(Segment(" " * (w - n)))
            strips.append(Strip(Segment.apply_style(segs, base), w))
        while len(strips) < h:
            strips.append(Strip.blank(w, base))
        self._bar_key = (w, h)
        return strips

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._bar = None  # colours baked into the strips are stale
        self.refresh()

    def render_line(self, y: int) -> Strip:
        w, h = self.size
        if self._bar is None or self._bar_key != (w, h):
            self._bar = self._build_bar(w, h)
        return self._bar[y] if y < len(self._bar) else Strip.blank(w, self._rich_base())


class HeaderBar(_TextBar):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "header--title",
        "header--label",
        "header--warn",
        "header--paused",
    }

    def show(self, snapshot: Any, status: ProviderStatus, *, mode: str, paused: bool) -> None:
        src = view.section(snapshot, "source")
        tok = view.section(snapshot, "tokens")
        dropped = view.section(snapshot, "dropped")
        label = self.cs("header--label")
        warn = self.cs("header--warn")
        line1 = Text(no_wrap=True, overflow="ellipsis")
        line1.append("llmtop ", self.cs("header--title"))
        kind = src.get("kind") or status.get("kind") or ""
        parts = [kind, src.get("backend"), src.get("device"), src.get("model"), src.get("dtype")]
        line1.append(" · ".join(str(p) for p in parts if p))
        if src.get("timing"):
            line1.append("  timing ", label)
            line1.append(str(src["timing"]))
        line2 = Text(no_wrap=True, overflow="ellipsis")
        if paused or status.get("state") == "paused":
            line2.append(" PAUSED ", self.cs("header--paused"))
            line2.append(" ")
        elif status.get("state") in ("finished", "error"):
            line2.append(
                f" {str(status['state']).upper()} ",
                self.cs("header--paused"),
            )
            line2.append(" ")
        # Most important first: a narrow terminal crops the end of the line.
        cost, behind_names = view.collector_cost(snapshot)
        behind = str(status.get("behind") or "") or (f"{behind_names} cannot keep up" if behind_names else "")
        if behind:
            line2.append("⚠ " + (behind if "behind" in behind else f"falling behind: {behind}") + "  ", warn)
        items: list[tuple[str, str, bool]] = []
        step = view.token_step(tok)
        if step is not None:
            items.append(("step", view.fmt_count(step), False))
        window = view.report(snapshot).get("window_s")
        items.append(
            ("stats", f"last {view.fmt_rate(window)} s" if mode == "window" and window else mode, False)
        )
        total_dropped = view.num(dropped.get("total")) or 0
        items.append(("dropped", view.fmt_count(total_dropped), total_dropped > 0))
        if cost is None:
            cost = view.num(status.get("collector_cost_pct"))
        if cost is not None:
            items.append(("collectors", f"{cost:.1f}% CPU", False))
        if status.get("speed") is not None and status.get("kind") == "replay":
            items.append(("speed", f"{status['speed']:g}×", False))
            if status.get("progress") is not None:
                items.append(("at", view.fmt_pct(100 * float(status["progress"])), False))
        if status.get("prompt"):
            items.append(("prompt", str(status["prompt"]), False))
        for k, v, is_warn in items:
            line2.append(k + " ", label)
            line2.append(v, warn if is_warn else "")
            line2.append("  ")
        self.show_text(join_lines([line1, line2]))


class DeviceStrip(_TextBar):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"strip--label", "strip--warn"}

    def show(self, counters: Counters, status: ProviderStatus) -> None:
        label = self.cs("strip--label")
        warn = self.cs("strip--warn")
        errors = status.get("errors") or {}
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("proc ", label)
        proc = counters.get("process") or {}
        perr = counters.get("process_error") or errors.get("process")
        if perr:
            t.append(f"✖ {perr}", warn)
        elif proc:
            t.append(
                f"CPU {view.fmt_rate(proc.get('cpu_pct'))}%  RSS {view.fmt_bytes(proc.get('rss_bytes'))}  "
            )
            t.append(f"{view.fmt_count(proc.get('threads'))} thr")
        else:
            t.append("–")
        t.append("  │  GPU ", label)
        gpu = counters.get("gpu") or {}
        gerr = errors.get("gpu")
        if gerr:
            t.append(f"✖ {gerr}", warn)
        elif gpu:
            used, total = gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes")
            t.append(
                f"{view.fmt_rate(gpu.get('util_pct'))}%  mem {view.fmt_bytes(used)}/{view.fmt_bytes(total)}  "
            )
            t.append(
                f"{view.fmt_rate(gpu.get('power_w'))} W  {view.fmt_count(gpu.get('sm_clock_mhz'))} MHz  "
            )
            t.append(f"{view.fmt_rate(gpu.get('temp_c'))}°C")
        elif counters.get("adapter"):
            t.append(view.adapter_line(counters["adapter"]))
        else:
            t.append(f"absent: {counters.get('gpu_absent') or 'no GPU collector'}", label)
        self.show_text(t)


class ErrorBar(Static):
    """Collector errors; hidden (CSS class) while there are none."""

    def show(self, errors: Mapping[str, str]) -> None:
        if self.has_class("-active") != bool(errors):
            self.set_class(bool(errors), "-active")
        if errors:
            self.update(
                join_lines(Text(f"✖ {k}: {v}", no_wrap=True, overflow="ellipsis") for k, v in errors.items())
            )


# -- top kernels ------------------------------------------------------------------------------

# (key in the report row, header label, width, formatter); the name column takes the remaining width.
KERNEL_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("op_class", "op class", 11),
    ("count", "count", 7),
    ("total_ms", "total ms", 9),
    ("mean_ms", "mean", 7),
    ("p50_ms", "p50", 7),
    ("p95_ms", "p95", 7),
    ("p99_ms", "p99", 7),
    ("max_ms", "max", 7),
    ("pct", "%", 6),
    ("cum_pct", "cum %", 6),
)
SORT_COLUMN = {
    "total": "total_ms",
    "count": "count",
    "mean": "mean_ms",
    "p95": "p95_ms",
    "max": "max_ms",
    "name": "name",
}
_FORMAT = {"count": view.fmt_count, "pct": view.fmt_pct, "cum_pct": view.fmt_pct}
MIN_NAME_WIDTH = 14
# On narrow terminals these columns go first (in this order) so the kernel name stays readable;
# the sort column is always kept. All columns show from about 120 columns up.
DROP_ORDER = ("p99_ms", "p50_ms", "max_ms", "cum_pct", "count")
WANT_NAME_WIDTH = 20


def row_key(row: Mapping[str, Any]) -> str:
    name = row.get("name")
    return str(name) if name is not None else f"layer {row.get('layer')}"


class KernelTable(ScrollView, can_focus=True):
    """Top kernels: a keyed table drawn with Textual's line API.

    Rows are keyed by name; `show` updates the formatted cells of each key in place and reorders only
    when the snapshot's order changed, and the selection follows its kernel. Only the visible lines
    are drawn each frame, so a refresh with 300 kernels costs about as much as one with 20 (Textual's
    DataTable re-renders every visible cell through Rich after any cell update: measured far over
    the 25 ms frame budget here, see benchmarks/bench_tui.py).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "edge(0)", "first", show=False),
        Binding("end", "edge(1)", "last", show=False),
        Binding("enter", "select", "detail", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "kernel-table--header",
        "kernel-table--sorted",
        "kernel-table--zebra",
        "kernel-table--cursor",
    } | OP_COMPONENTS

    class RowSelected(Message):
        """Enter (or a click on the selected row) on a row."""

        def __init__(self, table: KernelTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> KernelTable:
            return self.table

    cursor_row: reactive[int] = reactive(0, always_update=True)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._rows: dict[str, Mapping[str, Any]] = {}  # row key -> its report row in the last snapshot
        self._cells: dict[str, tuple[int, tuple[str, ...]]] = {}  # row key -> (generation, formatted cells)
        self._generation = 0
        self._order: list[str] = []
        self._layout: tuple[int, tuple[str, ...], str] | None = None  # what the columns were fitted to
        self._columns: list[tuple[str, str, int, bool]] = []  # key, label, width, right-justified
        self._paint: dict[str, Style] = {}
        self._row_width = 0
        # What each visible line showed at the last show(): (frame key, per-line signatures).
        self._shown_lines: tuple[Any, list[Any]] | None = None
        self.sort_key = "total"

    # -- read side (tests, app) -----------------------------------------------------------
    @property
    def order(self) -> list[str]:
        """Row keys top to bottom (what the user sees)."""
        return list(self._order)

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def shown_columns(self) -> tuple[str, ...]:
        return self._layout[1] if self._layout else ()

    def header_labels(self) -> dict[str, str]:
        return {key: label for key, label, _, _ in self._columns}

    def cursor_key(self) -> str | None:
        if not self._order or not (0 <= self.cursor_row < len(self._order)):
            return None
        return self._order[self.cursor_row]

    # -- updates --------------------------------------------------------------------------
    def restyle(self) -> None:
        """Colours are read from component styles at draw time: a redraw picks up a new theme."""
        self.refresh()

    def clear_rows(self) -> None:
        self._cells.clear()
        self._rows = {}
        self._order = []
        self.cursor_row = 0
        self._resize_virtual()

    def _fit_columns(self) -> tuple[int, tuple[str, ...]]:
        """(name width, shown column keys) for the current width and sort."""
        shown = [k for k, _, _ in KERNEL_COLUMNS]
        widths = {k: wd for k, _, wd in KERNEL_COLUMNS}
        sort_col = SORT_COLUMN.get(self.sort_key)

        def name_width() -> int:
            # 2 per column = one space either side, also around the name; then the vertical scrollbar.
            fixed = sum(widths[k] + 2 for k in shown) + 2 + self.styles.scrollbar_size_vertical
            return self.size.width - fixed

        for k in DROP_ORDER:
            if name_width() >= WANT_NAME_WIDTH:
                break
            if k != sort_col:
                shown.remove(k)
        return max(MIN_NAME_WIDTH, name_width()), tuple(shown)

    def _build_columns(self, width: int, shown: tuple[str, ...]) -> None:
        sort_col = SORT_COLUMN.get(self.sort_key, "")
        self._columns = [("name", "name ▲" if sort_col == "name" else "name", width, False)]
        for key, label, wd in KERNEL_COLUMNS:
            if key in shown:
                # Arrow in front: a trailing one would be cropped by the fixed column width.
                self._columns.append((key, ("▼" if key == sort_col else "") + label, wd, key != "op_class"))
        self._layout = (width, shown, self.sort_key)
        self._row_width = sum(wd + 2 for _, _, wd, _ in self._columns)  # every cell is " text "
        self._cells.clear()  # every row is re-formatted for the new columns
        self.refresh()

    def _format(self, row: Mapping[str, Any], width: int, shown: tuple[str, ...]) -> tuple[str, ...]:
        out = [view.shorten(row_key(row), width)]
        for key in shown:
            v = row.get(key)
            if key == "op_class":
                out.append(str(v) if v is not None else "")
            else:
                out.append(_FORMAT.get(key, view.fmt_ms)(v))
        return tuple(out)

    def show(self, rows: Sequence[Mapping[str, Any]], sort_key: str) -> None:
        """Make the table show `rows` in this order.

        Cells are formatted lazily, only for the lines being painted, so a refresh costs the same
        with 300 kernels as with 20; rows keep their keys, so nothing is rebuilt between refreshes.
        """
        self.sort_key = sort_key
        cursor = self.cursor_key()
        on_top = self.cursor_row <= 0
        width, shown = self._fit_columns()
        if self._layout != (width, shown, sort_key):
            self._build_columns(width, shown)
        keys: list[str] = []
        by_key: dict[str, Mapping[str, Any]] = {}
        for row in rows:
            key = row_key(row)
            if key not in by_key:  # defensive: a duplicate name would break keyed rows
                by_key[key] = row
                keys.append(key)
        self._rows = by_key
        self._generation += 1
        # Rows only move when the snapshot's order (ties already broken by name) really changed.
        if keys != self._order:
            self._order = keys
        self._cells = {k: v for k, v in self._cells.items() if k in by_key}
        self._resize_virtual()
        # The cursor follows its kernel once the user has moved it; on the top row it stays on top.
        if cursor is not None and cursor in by_key and not on_top:
            idx = keys.index(cursor)
            if idx != self.cursor_row:
                self.cursor_row = idx
        elif self.cursor_row >= len(keys):
            self.cursor_row = max(0, len(keys) - 1)
        self._refresh_changed_lines()

    def _refresh_changed_lines(self) -> None:
        """Mark dirty only the visible lines whose content changed since the last show.

        A refresh() without regions makes Textual re-render, composite and encode every visible line
        of the table; between two snapshots most rows keep their formatted cells (numbers are shown to
        3 significant digits), so comparing what each line would show is far cheaper than repainting.
        """
        region = self.scrollable_content_region
        top = round(self.scroll_offset.y)
        frame = (top, region.width, region.height, self._layout, self.has_focus, self.cursor_row)
        sigs: list[Any] = []
        order, rows = self._order, self._rows
        for index in range(top, min(len(order), top + max(0, region.height - 1))):
            key = order[index]
            sigs.append((key, self.row_cells(key), rows[key].get("op_class")))
        prev = self._shown_lines
        self._shown_lines = (frame, sigs)
        if prev is None or prev[0] != frame:
            self.refresh()
            return
        old = prev[1]
        width = max(self.virtual_size.width, region.width)
        y0 = -1
        n = max(len(old), len(sigs))
        for i in range(n + 1):
            same = i == n or (old[i] if i < len(old) else None) == (sigs[i] if i < len(sigs) else None)
            if not same and y0 < 0:
                y0 = i
            elif same and y0 >= 0:
                # +1: line 0 of the widget is the pinned header.
                self.refresh(Region(0, y0 + 1, width, i - y0))
                y0 = -1

    def row_cells(self, key: str) -> tuple[str, ...]:
        """The formatted cells of a row (name first, then the shown columns), as painted."""
        hit = self._cells.get(key)
        if hit is not None and hit[0] == self._generation:
            return hit[1]
        assert self._layout is not None
        cells = self._format(self._rows[key], self._layout[0], self._layout[1])
        self._cells[key] = (self._generation, cells)
        return cells

    def _resize_virtual(self) -> None:
        # +1: the header is line 0 of the virtual space and is pinned on screen by render_line.
        self.virtual_size = Size(self.size.width, len(self._order) + 1)

    def on_resize(self) -> None:
        self._resize_virtual()

    # -- cursor ---------------------------------------------------------------------------
    def watch_cursor_row(self, row: int) -> None:
        visible = max(1, self.scrollable_content_region.height - 1)
        top = round(self.scroll_offset.y)
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + visible:
            self.scroll_to(y=row - visible + 1, animate=False)
        self.refresh()

    def _move(self, row: int) -> None:
        if self._order:
            self.cursor_row = min(max(0, row), len(self._order) - 1)

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor_row + direction * max(1, self.scrollable_content_region.height - 2))

    def action_edge(self, end: int) -> None:
        self._move(len(self._order) - 1 if end else 0)

    def action_select(self) -> None:
        key = self.cursor_key()
        if key is not None:
            self.post_message(self.RowSelected(self, key))

    def on_click(self, event: events.Click) -> None:
        row = round(self.scroll_offset.y) + event.y - 1
        if 0 <= row < len(self._order):
            if row == self.cursor_row and event.chain >= 2:
                self.action_select()
            self.cursor_row = row

    # -- drawing --------------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._paint = {}

    def on_focus(self) -> None:
        self._paint = {}

    def on_blur(self) -> None:
        self._paint = {}

    def render_lines(self, crop: Region) -> list[Strip]:
        if not self._paint:
            self._resolve_paint()
        return super().render_lines(crop)

    def _resolve_paint(self) -> None:
        # Resolved once per stylesheet/focus change, not per line: rich_style walks the DOM.
        base = self.rich_style
        self._paint = {
            "base": base,
            "cursor": base + self.get_component_rich_style("kernel-table--cursor"),
            "zebra": base + self.get_component_rich_style("kernel-table--zebra"),
            "header": base + self.get_component_rich_style("kernel-table--header"),
        }
        self._paint["sorted"] = self._paint["header"] + self.get_component_rich_style("kernel-table--sorted")
        # Row style + op-class colour for the op class cell, combined once here instead of per cell.
        for c in OP_CLASSES:
            oc = op_style(self, c)
            self._paint["op--" + c] = oc
            for kind in ("base", "cursor", "zebra"):
                self._paint[f"{kind}+op--{c}"] = self._paint[kind] + oc

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        paint = self._paint
        base = paint["base"]
        if y == 0:
            return self._header_strip(width)
        index = round(self.scroll_offset.y) + y - 1
        if index >= len(self._order):
            return Strip.blank(width, base)
        key = self._order[index]
        cells = self.row_cells(key)
        op = str(self._rows[key].get("op_class") or "")
        kind = "base"
        if index == self.cursor_row and (self.has_focus or self.cursor_row > 0):
            kind = "cursor"
        elif index % 2:
            kind = "zebra"
        style = paint[kind]
        op_style_ = paint.get(kind + "+op--" + op) or paint[kind + "+op--other"]
        # Columns sharing a style are joined into one segment (3 instead of 11 per row): Textual's own
        # per-line work (filters, cropping, compositing) scales with the number of segments.
        segs: list[Segment] = []
        run: list[str] = []
        for (col, _, wd, right), text in zip(self._columns, cells, strict=True):
            cell = " " + _fit(text, wd, right) + " "
            if col == "op_class":
                if run:
                    segs.append(Segment("".join(run), style))
                    run = []
                segs.append(Segment(cell, op_style_))
            else:
                run.append(cell)
        if self._row_width < width:
            run.append(" " * (width - self._row_width))
        if run:
            segs.append(Segment("".join(run), style))
        if self._row_width <= width:
            return Strip(segs, width)  # one Strip, already the line's width: no adjust copy
        return Strip(segs, self._row_width).crop(0, width)

    def _header_strip(self, width: int) -> Strip:
        head, sort_style = self._paint["header"], self._paint["sorted"]
        sort_col = SORT_COLUMN.get(self.sort_key, "")
        segs = [
            Segment(" " + _fit(label, wd, right) + " ", sort_style if key == sort_col else head)
            for key, label, wd, right in self._columns
        ]
        return Strip(segs).adjust_cell_length(width, head)


def _fit(text: str, width: int, right: bool) -> str:
    if text.isascii():  # the common case (numbers, most names): one cell per character
        return text[:width].rjust(width) if right else text[:width].ljust(width)
    text = set_cell_size(text, min(cell_len(text), width))
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad
