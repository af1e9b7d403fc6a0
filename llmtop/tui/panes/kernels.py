"""The top-kernels table (a keyed, line-API ScrollView) and its column layout and cell helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from llmtop.events import OP_CLASSES
from llmtop.tui import messages, view
from llmtop.tui.panes.base import OP_COMPONENTS, op_style

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
# `b`: the roofline columns (stats/roofline.py) instead of the duration statistics.
ROOFLINE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("op_class", "op class", 11),
    ("total_ms", "total ms", 9),
    ("bytes", "bytes", 9),
    ("gbps", "GB/s", 7),
    ("gflops", "GFLOP/s", 8),
    ("pct_peak_bw", "%BW", 6),
    ("pct_peak_flops", "%FLOP", 6),
    ("bound", "bound", 7),
)
ROOFLINE_DROP_ORDER = ("pct_peak_flops", "gflops", "bytes", "op_class")
# `replay A --against B`: the change of the row's mean against B (* = significant), coloured by direction.
VS_COLUMN = ("vs_b", "vs B", 9)
SORT_COLUMN = {
    "total": "total_ms",
    "count": "count",
    "mean": "mean_ms",
    "p95": "p95_ms",
    "max": "max_ms",
    "name": "name",
}
_FORMAT = {"count": view.fmt_count, "pct": view.fmt_pct, "cum_pct": view.fmt_pct, "bytes": view.fmt_bytes,
           "gbps": view.fmt_rate, "gflops": view.fmt_rate, "pct_peak_bw": view.fmt_pct,
           "pct_peak_flops": view.fmt_pct, "bound": lambda v: str(v) if v else view.DASH}
MIN_NAME_WIDTH = 14
# On narrow terminals these columns go first (in this order) so the kernel name stays readable;
# the sort column is always kept. All columns show from about 120 columns up.
DROP_ORDER = ("p99_ms", "p50_ms", "max_ms", "cum_pct", "count")
WANT_NAME_WIDTH = 20


def _vs_text(d: Mapping[str, Any] | None) -> str:
    """A row's change of mean against the baseline: "+12%*" (* significant), "new", or "" (no baseline)."""
    if not d:
        return ""
    if d.get("change") == "new":
        return "new"
    pct = d.get("delta_mean_pct")
    if pct is None:
        return view.DASH
    return f"{pct:+.0f}%" + ("*" if d.get("significant") else "")


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
        Binding("b", "toggle_roofline", "roofline", show=False),  # listed in the help screen (?)
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "kernel-table--header",
        "kernel-table--sorted",
        "kernel-table--zebra",
        "kernel-table--cursor",
        "kernel-table--faster",
        "kernel-table--slower",
    } | OP_COMPONENTS

    # The table's message, defined in llmtop.tui.messages; `KernelTable.RowSelected` as before.
    RowSelected = messages.RowSelected

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
        self.roofline = False  # `b`: bytes, GB/s, GFLOP/s, % of the device's peaks, bound
        self.compare: dict[str, Mapping[str, Any]] = {}  # `replay --against B`: row name -> its diff vs B

    def set_compare(self, rows: dict[str, Mapping[str, Any]]) -> None:
        """Each row's change against a baseline (stats/compare.py rows), shown as a coloured `vs B` column."""
        changed = bool(rows) != bool(self.compare)
        self.compare = rows
        self._generation += 1  # the cells show these numbers: format them again
        if changed:
            self._layout = None

    def action_toggle_roofline(self) -> None:
        self.roofline = not self.roofline
        self._layout = None  # refit the columns at the next show()
        if self._rows:
            self.show([self._rows[k] for k in self._order], self.sort_key)

    @property
    def column_spec(self) -> tuple[tuple[str, str, int], ...]:
        spec = ROOFLINE_COLUMNS if self.roofline else KERNEL_COLUMNS
        return (*spec, VS_COLUMN) if self.compare else spec

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
        spec = self.column_spec
        shown = [k for k, _, _ in spec]
        widths = {k: wd for k, _, wd in spec}
        sort_col = SORT_COLUMN.get(self.sort_key)

        def name_width() -> int:
            # 2 per column = one space either side, also around the name; then the vertical scrollbar.
            fixed = sum(widths[k] + 2 for k in shown) + 2 + self.styles.scrollbar_size_vertical
            return self.size.width - fixed

        for k in ROOFLINE_DROP_ORDER if self.roofline else DROP_ORDER:
            if name_width() >= WANT_NAME_WIDTH:
                break
            if k != sort_col and k in shown:
                shown.remove(k)
        return max(MIN_NAME_WIDTH, name_width()), tuple(shown)

    def _build_columns(self, width: int, shown: tuple[str, ...]) -> None:
        sort_col = SORT_COLUMN.get(self.sort_key, "")
        self._columns = [("name", "name ▲" if sort_col == "name" else "name", width, False)]
        for key, label, wd in self.column_spec:
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
            if key == "vs_b":
                out.append(_vs_text(self.compare.get(row_key(row))))
                continue
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
        for kind in ("base", "cursor", "zebra"):
            for change in ("faster", "slower"):
                self._paint[f"{kind}+{change}"] = self._paint[kind] + self.get_component_rich_style(
                    f"kernel-table--{change}")
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
            if col == "op_class" or (col == "vs_b" and self.compare):
                if run:
                    segs.append(Segment("".join(run), style))
                    run = []
                if col == "vs_b":
                    ch = (self.compare.get(key) or {}).get("change")
                    segs.append(Segment(cell, paint.get(f"{kind}+{ch}", style)))
                    continue
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
