"""The shared base of the panes: cached component styles, the line-API pane and the text bar.

`_Pane` (token rate, per layer, attention) draws a list of Rich Text lines or ready strips, built once
per snapshot and size; `_TextBar` (header, device strip) draws a few unwrapped lines. Both repaint only
the lines that changed. Colours come from component classes styled in llmtop.tcss (no styles in
Python), so both themes and the op-class palette are edited in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from llmtop.events import OP_CLASSES

OP_COMPONENTS = frozenset(f"op--{c}" for c in OP_CLASSES)
# A pane line: Rich Text for short labelled lines, or a ready Strip for the bulky parts redrawn every
# refresh (plots, bars), which skips Rich's Text -> segments pass.
Line = Text | Strip


def op_style(widget: Widget, op_class: str) -> Style:
    name = f"op--{op_class}" if op_class in OP_CLASSES else "op--other"
    return widget.get_component_rich_style(name, partial=True)


def flow(chunks: Sequence[Text], width: int, sep: str = "  ") -> list[Text]:
    """Greedy word-wrap of whole chunks (a label+value stays on one line when it fits the width; one
    wider than the pane is wrapped at its spaces rather than cropped, so no number loses its unit)."""
    lines: list[Text] = []
    cur = Text(no_wrap=True, overflow="crop")
    for ch in chunks:
        if cur.cell_len and cur.cell_len + len(sep) + ch.cell_len > width:
            lines.append(cur)
            cur = Text(no_wrap=True, overflow="crop")
        if ch.cell_len > width > 0:  # on lines of its own: its tail is not read as the next chunk's
            lines += wrap_words(ch, width)
            continue
        if cur.cell_len:
            cur.append(sep)
        cur.append_text(ch)
    if cur.cell_len:
        lines.append(cur)
    return lines


_UNITS = frozenset(["ms", "µs", "ns", "s", "%", "tok", "tok/s", "ms/1k", "MiB", "GiB", "KiB", "B", "GB/s",
                    "GFLOP/s", "x", "×"])


def _breakable(plain: str, i: int) -> bool:
    """May a line break at the space `plain[i]`? Not between a number and its unit ("12.0 ms"), nor inside
    a two-word unit ("ms/1k tok")."""
    if plain[:i].endswith("/1k"):
        return False
    if i <= 0 or not plain[i - 1].isdigit():
        return True
    word = plain[i + 1:].split(" ", 1)[0].rstrip("),;:")
    return word not in _UNITS


def wrap_words(t: Text, width: int) -> list[Text]:
    """`t` wrapped at its spaces into lines of at most `width` cells (styles kept), never between a number
    and its unit; a single word longer than the width stays whole on its own line (cropped there)."""
    plain = t.plain
    cuts: list[int] = []
    start = 0
    while len(plain) - start > width:
        cut = next((i for i in range(min(start + width, len(plain) - 1), start, -1)
                    if plain[i] == " " and _breakable(plain, i)), -1)
        if cut <= start:  # one word fills the line: break after it
            cut = next((i for i in range(start + width, len(plain))
                        if plain[i] == " " and _breakable(plain, i)), -1)
            if cut < 0:
                break
        cuts.append(cut)
        start = cut + 1
    if not cuts:
        return [t]
    out = []
    for piece in t.divide(cuts):
        piece = piece.copy()
        piece.no_wrap, piece.overflow = True, "crop"
        if piece.plain.startswith(" "):
            piece = piece[1:]
        out.append(piece)
    return out


def fit_title(variants: list[str], width: int) -> str:
    """The first (longest) wording of a pane title that fits a border `width` cells wide, so the unit
    and the scope survive a narrow terminal; the last one when none fits (Textual crops it)."""
    room = width - 6  # the corners, a rule and a space on each side of the title
    return next((v for v in variants if len(v) <= room), variants[-1]) if width > 0 else variants[0]


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
        self._title_variants: list[str] = []

    def set_title(self, variants: list[str]) -> None:
        """The border title, worded to fit (`fit_title`), longest wording first; reworded on resize."""
        self._title_variants = list(variants)
        self._fit_title()

    def _fit_title(self) -> None:
        if self._title_variants:
            want = fit_title(self._title_variants, self.outer_size.width)
            if self.border_title != want:
                self.border_title = want

    def on_resize(self) -> None:
        self._fit_title()

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
        # A pane that hands back the very same Strip object as last time (a cached table row or plot)
        # gets the strip built from it then: at equal width and style it would come out the same.
        prev = self.__dict__.get("_built")
        reuse = prev[1] if prev is not None and prev[0] == (w, base) else {}
        built: dict[int, tuple[Strip, Strip]] = {}
        for line in self.lines()[:h]:
            hit = reuse.get(id(line)) if isinstance(line, Strip) else None
            if hit is not None and hit[0] is line:
                built[id(line)] = hit
                strips.append(hit[1])
                continue
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
            if isinstance(line, Strip):
                built[id(line)] = (line, strips[-1])  # the source line is kept, so its id stays its own
        self.__dict__["_built"] = ((w, base), built)
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
        self.__dict__.pop("_built", None)
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
