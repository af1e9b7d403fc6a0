"""The Servers pane: one row per attach target (vLLM, llama.cpp, TGI, SGLang /metrics, llmtop agents) and a
total row, with sparklines of tok/s and TTFT p50 over the percentile window.

Rows arrive as `provider.ServerRow` dicts (`Counters["servers"]`), built by the attach source from its
scrapes: percentiles are Prometheus histogram bucket deltas over the window (the title says which), rates
are counter deltas between two scrapes, and a target that is not connected shows its link with its
numbers blank. The pane is focusable: `s` cycles the sort column (▼ in the header and "sort …" in the
title), up/down move the cursor, `enter` posts `ServersPane.Drill` for the row under it (the app then
shows that target alone) and `escape` posts `Drill(None)` to go back. The total row stays last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip

from llmtop.tui import view
from llmtop.tui.panes.base import Line, _Pane
from llmtop.tui.provider import ServerRow

_BLOCKS = "▁▂▃▄▅▆▇█"


def fmt_s(x: Any) -> str:
    """A latency given in seconds, in at most seven cells with its unit: 0.45ms, 12.3ms, 443ms, 1.20s, 95s."""
    v = view.num(x)
    if v is None:
        return view.DASH
    ms = v * 1e3
    if ms < 1:
        return f"{ms:.2f}ms"
    if ms < 10:
        return f"{ms:.1f}ms"
    if ms < 1000:
        return f"{ms:.0f}ms"
    return f"{v:.2f}s" if v < 10 else f"{v:.0f}s"


def _pct01(x: Any) -> str:
    v = view.num(x)
    return view.DASH if v is None else f"{100 * v:.0f}%"


def _count(x: Any) -> str:
    return view.fmt_count(x)


def _rate(x: Any) -> str:
    return view.fmt_rate(x)


def sparkline(points: Sequence[tuple[float, float]], span_s: float, width: int, end: float = 0.0,
              lo: float = 0.0) -> str:
    """`width` cells covering the `span_s` seconds up to `end` (points are (time in s, value)): each cell
    the mean of its points as one of ▁..█ scaled from `lo` to the largest mean, " " where a cell has no
    point (the target was not scraped then, or the value was unknown)."""
    if width <= 0:
        return ""
    start = end - span_s
    sums = [0.0] * width
    counts = [0] * width
    for t, v in points:
        if not math.isfinite(v):
            continue
        i = int((t - start) / span_s * width) if span_s > 0 else width - 1
        if 0 <= i < width:
            sums[i] += v
            counts[i] += 1
        elif i == width:  # a point stamped exactly now
            sums[-1] += v
            counts[-1] += 1
    means = [s / c if c else math.nan for s, c in zip(sums, counts, strict=True)]
    finite = [m for m in means if not math.isnan(m)]
    if not finite:
        return " " * width
    hi = max(finite)
    top = len(_BLOCKS) - 1
    out = []
    for m in means:
        if math.isnan(m):
            out.append(" ")
        elif hi <= lo:
            out.append(_BLOCKS[0])
        else:
            out.append(_BLOCKS[max(0, min(top, round((m - lo) / (hi - lo) * top)))])
    return "".join(out)


# (row key, header label, width, formatter); sparkline columns have formatter None.
COLUMNS: tuple[tuple[str, str, int, Any], ...] = (
    # Each width leaves a cell for the sort arrow in front of the label.
    ("model", "model", 16, None),
    ("link", "link", 12, None),
    ("running", "run", 4, _count),
    ("waiting", "wait", 5, _count),
    ("kv_cache", "KV%", 4, _pct01),
    ("gen_tok_s", "gen t/s", 8, _rate),
    ("prompt_tok_s", "pmt t/s", 8, _rate),
    ("gen_tokens", "generated", 10, _count),
    ("ttft_p50_s", "TTFT p50", 9, fmt_s),
    ("ttft_p95_s", "p95", 7, fmt_s),
    ("itl_p50_s", "ITL p50", 8, fmt_s),
    ("itl_p95_s", "p95", 7, fmt_s),
    ("e2e_p50_s", "e2e p50", 8, fmt_s),
    ("req_s", "req/s", 6, _rate),
    ("prefix_hit", "hit%", 5, _pct01),
    ("preemptions", "preempt", 8, _count),
    ("aborted", "abort", 6, _count),
    ("failed", "err", 4, _count),
    ("tok_s_hist", "tok/s", 10, None),
    ("ttft_hist", "TTFT p50", 10, None),
)
_WIDTH = {k: w for k, _, w, _ in COLUMNS}
# What `s` cycles through, and how each sorts: the name A→Z, everything else largest first.
SORTS: tuple[tuple[str, str], ...] = (
    ("label", "target"),
    ("gen_tok_s", "gen tok/s"),
    ("prompt_tok_s", "prompt tok/s"),
    ("gen_tokens", "generated"),
    ("running", "running"),
    ("waiting", "waiting"),
    ("kv_cache", "KV cache"),
    ("ttft_p50_s", "TTFT p50"),
    ("ttft_p95_s", "TTFT p95"),
    ("itl_p50_s", "ITL p50"),
    ("itl_p95_s", "ITL p95"),
    ("e2e_p50_s", "e2e p50"),
    ("req_s", "req/s"),
    ("prefix_hit", "prefix hit"),
    ("preemptions", "preemptions"),
    ("failed", "errors"),
    ("link", "link"),
)
SORT_LABEL = dict(SORTS)
# On narrow terminals these go first (in this order); the sort column always stays.
DROP_ORDER = ("model", "aborted", "prefix_hit", "req_s", "e2e_p50_s", "itl_p95_s", "prompt_tok_s", "failed",
              "preemptions", "ttft_hist", "gen_tokens", "waiting", "itl_p50_s", "ttft_p95_s", "kv_cache")
MIN_LABEL, MAX_LABEL = 10, 30


_SIG_TEXT = ("label", "kind", "link", "status", "error", "model")
_SIG_NUM = ("gen_tok_s", "prompt_tok_s", "gen_tokens", "running", "waiting", "kv_cache", "ttft_p50_s",
            "ttft_p95_s", "itl_p50_s", "itl_p95_s", "e2e_p50_s", "req_s", "prefix_hit", "preemptions",
            "aborted", "failed", "spark_s")


def row_signature(r: ServerRow) -> tuple[Any, ...]:
    """What a row shows, comparable between refreshes: its texts, its numbers (NaN, which is not equal
    to itself, as None) and the length and newest point of each history (histories only grow at the end,
    and their old points age out only when a new one arrives)."""
    get = r.get
    nums = tuple(None if (v := get(k)) is None or v != v else v for k in _SIG_NUM)  # type: ignore[misc]
    hists = tuple((len(h), h[-1]) if (h := get(k)) else None for k in ("tok_s_hist", "ttft_hist"))  # type: ignore[misc]
    return (tuple(get(k) for k in _SIG_TEXT), nums, hists)  # type: ignore[misc]


def sort_rows(rows: Sequence[ServerRow], key: str) -> list[ServerRow]:
    """Targets in `key` order (unknown values last, ties by label), the total row(s) after them."""
    targets = [r for r in rows if r.get("kind") != "total"]
    totals = [r for r in rows if r.get("kind") == "total"]
    if key == "label" or key == "link":
        targets.sort(key=lambda r: (str(r.get(key) or ""), str(r.get("label") or "")))
    else:
        def k(r: ServerRow) -> tuple[int, float, str]:
            v = view.num(r.get(key))  # type: ignore[misc]
            return (1, 0.0, str(r.get("label"))) if v is None else (0, -v, str(r.get("label")))

        targets.sort(key=k)
    return targets + totals


class ServersPane(_Pane, can_focus=True):
    """The attach targets, one row each, plus the total; sortable, with a cursor and drill-in."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "cycle_sort", "sort servers"),
        Binding("enter", "drill", "drill in"),
        Binding("escape", "back", "all targets", show=False),
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("home", "edge(0)", "first", show=False),
        Binding("end", "edge(1)", "last", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = _Pane.COMPONENT_CLASSES | {
        "servers--header",
        "servers--sorted",
        "servers--cursor",
        "servers--total",
        "servers--down",
        "servers--spark",
    }

    class Drill(Message):
        """Enter on a row (label), or escape (None): the app shows that target alone, or all again."""

        def __init__(self, label: str | None) -> None:
            super().__init__()
            self.label = label

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sort_key = "label"
        self.focus_label: str | None = None  # set by the app while drilled into one target
        self.cursor_label: str | None = None
        self._rows: list[ServerRow] = []  # in display order
        self._top = 0  # first row shown when the rows outgrow the pane
        self._end = 0.0  # the sparklines' right edge: the newest sample of any row, rounded up to a cell (s)
        # Built row strips by what they show: a row whose numbers, sparklines and cursor are as before
        # (a target that was not scraped since, or is down) is not formatted again.
        self._row_cache: dict[tuple[Any, ...], Strip] = {}
        self._shown_sig: tuple[Any, ...] | None = None  # what the last show() drew, to skip an unchanged one

    # -- data -----------------------------------------------------------------------------
    @property
    def rows(self) -> list[ServerRow]:
        """The rows as shown, top to bottom (the total last)."""
        return list(self._rows)

    @property
    def span_s(self) -> float:
        spans = [view.num(r.get("spark_s")) for r in self._rows]
        return max((s for s in spans if s), default=30.0)

    def show(self, rows: Sequence[ServerRow], *, force: bool = False) -> None:
        """Show a new set of rows (the focused target's alone while drilled in). Rows change when a target
        is scraped (1 Hz), the app refreshes at 4 Hz: an unchanged set is not redrawn."""
        if self.focus_label is not None:
            rows = [r for r in rows if r.get("label") == self.focus_label]
        sig = (self.focus_label, self.sort_key, self.size, tuple(row_signature(r) for r in rows))
        if sig == self._shown_sig and not force:
            return
        self._shown_sig = sig
        grew = len(rows) != len(self._rows)
        self._rows = sort_rows(rows, self.sort_key)
        ends = [pts[-1][0] for r in rows for k in ("tok_s_hist", "ttft_hist") if (pts := r.get(k))]  # type: ignore[misc]
        # The edge moves a whole cell at a time, so a row's sparkline (and its cached strip) stays put
        # until the row itself changes or a cell's worth of time has passed.
        cell = self.span_s / _WIDTH["tok_s_hist"]
        self._end = math.ceil(max(ends, default=0.0) / cell) * cell
        if grew:
            self.refresh(layout=True)  # a target came or went: the pane's height follows its rows
        labels = [str(r.get("label")) for r in self._rows]
        if self.cursor_label not in labels:
            self.cursor_label = labels[0] if labels else None
        self._scroll_to_cursor()
        title = self.title()
        if self.border_title != title:
            self.border_title = title
        self.set_snapshot(self._rows)

    def title(self) -> str:
        parts = ["Servers"]
        if self.focus_label is not None:
            parts.append(self.focus_label)
        parts.append(f"percentiles over last {self.span_s:g} s (histogram deltas)")
        parts.append(f"sort {SORT_LABEL.get(self.sort_key, self.sort_key)}")
        if self.focus_label is not None:
            parts.append("esc: all targets")
        return " · ".join(parts)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(2, len(self._rows) + 1)  # the header line and one line per row

    # -- keys -----------------------------------------------------------------------------
    def action_cycle_sort(self) -> None:
        keys = [k for k, _ in SORTS]
        i = keys.index(self.sort_key) + 1 if self.sort_key in keys else 0
        self.sort_key = keys[i % len(keys)]
        self.show(self._rows, force=True)

    def _cursor_index(self) -> int:
        labels = [str(r.get("label")) for r in self._rows]
        return labels.index(self.cursor_label) if self.cursor_label in labels else 0

    def _move(self, i: int) -> None:
        if self._rows:
            i = max(0, min(len(self._rows) - 1, i))
            self.cursor_label = str(self._rows[i].get("label"))
            self._scroll_to_cursor()
            self.set_snapshot(self._rows)

    def action_cursor(self, delta: int) -> None:
        self._move(self._cursor_index() + delta)

    def action_edge(self, end: int) -> None:
        self._move(len(self._rows) - 1 if end else 0)

    def action_drill(self) -> None:
        if self.cursor_label is not None and self.focus_label is None:
            row = next((r for r in self._rows if r.get("label") == self.cursor_label), None)
            if row is not None and row.get("kind") != "total":
                self.post_message(self.Drill(self.cursor_label))

    def action_back(self) -> None:
        if self.focus_label is not None:
            self.post_message(self.Drill(None))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.__dict__.setdefault("_row_cache", {}).clear()  # colours are baked into the cached strips

    def on_focus(self) -> None:
        self.set_snapshot(self._rows)  # the cursor shows only while focused

    def on_blur(self) -> None:
        self.set_snapshot(self._rows)

    def _window(self) -> tuple[int, bool]:
        """(target lines that fit, whether the total row is pinned below them): when the rows outgrow the
        pane the targets scroll and the total stays in sight."""
        visible = max(1, self.size.height - 1)
        pinned = bool(self._rows) and self._rows[-1].get("kind") == "total" and len(self._rows) > visible
        return (max(1, visible - 1), True) if pinned else (visible, False)

    def _scroll_to_cursor(self) -> None:
        n, pinned = self._window()
        targets = len(self._rows) - (1 if pinned else 0)
        i = self._cursor_index()
        if i < targets:
            if i < self._top:
                self._top = i
            elif i >= self._top + n:
                self._top = i - n + 1
        self._top = max(0, min(self._top, max(0, targets - n)))

    # -- drawing --------------------------------------------------------------------------
    def fit_columns(self, width: int) -> tuple[int, tuple[str, ...]]:
        """(target column width, shown column keys) for a pane `width` cells wide: the target column as
        wide as its longest label (10 to 30 cells), the columns that do not fit dropped in DROP_ORDER
        (never the sort column), then any that fit the room left taken back."""
        want = max(MIN_LABEL, min(MAX_LABEL, max((cell_len(str(r.get("label") or "")) for r in self._rows),
                                                 default=MIN_LABEL)))
        shown = {k for k, _, _, _ in COLUMNS}

        def room() -> int:
            return width - sum(_WIDTH[k] + 1 for k in shown) - 1

        dropped: list[str] = []
        for k in DROP_ORDER:
            if room() >= want:
                break
            if k != self.sort_key:
                shown.discard(k)
                dropped.append(k)
        for k in reversed(dropped):  # the most useful of the dropped first
            if room() - _WIDTH[k] - 1 >= want:
                shown.add(k)
        label_w = want if room() >= want else max(MIN_LABEL, room())
        return label_w, tuple(k for k, _, _, _ in COLUMNS if k in shown)

    def lines(self) -> list[Line]:
        w = self.size.width
        if not self._rows:
            return [self.empty("no targets yet…")]
        label_w, shown = self.fit_columns(w)
        head, sorted_ = self.cs("servers--header"), self.cs("servers--sorted")
        header = [Segment(_cell(("▼" if self.sort_key == "label" else "") + "target", label_w, False),
                          sorted_ if self.sort_key == "label" else head)]
        for key, label, wd, fmt in COLUMNS:
            if key in shown:
                text = ("▼" if key == self.sort_key else "") + label
                header.append(Segment(" " + _cell(text, wd, fmt is not None), sorted_ if key == self.sort_key
                                      else head))
        out: list[Line] = [Strip(header)]
        n, pinned = self._window()
        cursor = self._cursor_index() if self.has_focus else -1
        cache, built = self._row_cache, {}
        layout = (label_w, shown, self._end, self.span_s)
        last = len(self._rows) - 1
        on_screen = list(enumerate(self._rows[self._top:self._top + n], self._top))
        if pinned:
            on_screen.append((last, self._rows[last]))
        for i, r in on_screen:
            key = (layout, cursor == i, row_signature(r))
            strip = cache.get(key)
            if strip is None:
                strip = self._row_strip(r, label_w, shown, cursor == i)
            built[key] = strip
        self._row_cache = built  # only what is on screen now: the cache never outgrows the pane
        return [*out, *built.values()]

    def _row_strip(self, r: ServerRow, label_w: int, shown: tuple[str, ...], at_cursor: bool) -> Strip:
        base = Style()
        if r.get("kind") == "total":
            base = self.cs("servers--total")
        if at_cursor:
            base = base + self.cs("servers--cursor")
        down = r.get("kind") != "total" and r.get("link") != "connected"
        warn = base + self.cs("servers--down")
        spark = base + self.cs("servers--spark")
        segs = [Segment(_cell(str(r.get("label") or ""), label_w, False), base)]
        span = view.num(r.get("spark_s")) or self.span_s
        for key, _, wd, fmt in COLUMNS:
            if key not in shown:
                continue
            style = base
            if key == "link":
                text = str(r.get("link") or "")
                if r.get("kind") == "total":
                    text = text.replace(" connected", " up")  # "15/16 up" fits the column
                style = warn if down else base
            elif key == "model":
                text = view.shorten(str(r.get("model") or ""), wd)
            elif fmt is None:  # a sparkline
                pts = r.get(key) or []  # type: ignore[misc]
                text, style = sparkline(pts, span, wd, self._end), spark
            else:
                text = fmt(r.get(key))  # type: ignore[misc]
            segs.append(Segment(" " + _cell(text, wd, fmt is not None), style))
        return Strip(segs)


def _cell(text: str, width: int, right: bool) -> str:
    if text.isascii():
        return text[:width].rjust(width) if right else text[:width].ljust(width)
    text = set_cell_size(text, min(cell_len(text), width))
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad


__all__ = ["COLUMNS", "SORTS", "ServersPane", "fmt_s", "sort_rows", "sparkline"]
