"""Modal screens: key help and the kernel detail view (shapes, duration distribution, per layer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from llmtop.tui import view
from llmtop.tui.panes import join_lines

HELP_KEYS: tuple[tuple[str, str], ...] = (
    ("space", "pause / resume (the display freezes; nothing collected is lost)"),
    ("s", "cycle sort: total → count → mean → p95 → max → name"),
    ("g", "cycle grouping: kernel → op class → layer"),
    ("w", "toggle sliding window / cumulative statistics"),
    ("r", "reset statistics"),
    ("/", "filter rows (substring; enter keeps it, esc clears it)"),
    ("enter", "details of the selected kernel: shapes, distribution, per layer"),
    ("+ / -", "replay speed ×2 / ÷2 (replay only)"),
    ("t", "toggle light / dark theme"),
    ("?", "this help"),
    ("q", "quit"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q,enter", "dismiss", "close"),
    ]

    def compose(self) -> ComposeResult:
        t = Text()
        t.append("llmtop keys\n\n", "bold")
        for key, what in HELP_KEYS:
            t.append(f"{key:>7}  ", "bold")
            t.append(what + "\n")
        t.append(
            "\nPanes: token rate (tok/s over time, TTFT, TPOT), per-layer ms per decode step split by op\n"
            "class (▲ = outlier layer), attention ms against context with its least-squares fit, and the\n"
            "top kernels. Every number comes from the same snapshot of the aggregated events.\n\n"
            "esc or ? closes this help."
        )
        with VerticalScroll(id="help-box"):
            yield Static(t, id="help-text")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


def _bar(value: float, peak: float, width: int) -> str:
    if peak <= 0 or width <= 0:
        return ""
    eighths = round(max(0.0, value) / peak * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")


class KernelDetailScreen(ModalScreen[None]):
    """Live detail of one row: re-read from each new snapshot while open."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "dismiss", "close")]

    def __init__(
        self, name: str, fetch: Callable[[str], tuple[Mapping[str, Any] | None, Mapping[str, Any]]]
    ) -> None:
        super().__init__()
        self.kernel = name
        self._fetch = fetch

    def compose(self) -> ComposeResult:
        with Vertical(id="detail-box"):
            yield Static(id="detail-title")
            with VerticalScroll(id="detail-scroll"):
                yield Static(id="detail-body")

    def on_mount(self) -> None:
        self.query_one("#detail-box", Vertical).border_title = self.kernel
        self.reload()

    def reload(self) -> None:
        if not self.is_mounted:
            return  # on_mount loads it once the widgets exist
        detail, row = self._fetch(self.kernel)
        # The detail carries the same statistics as the table row (and more); prefer it.
        self.query_one("#detail-title", Static).update(self._summary({**row, **(detail or {})}))
        self.query_one("#detail-body", Static).update(self._body(detail))

    def _summary(self, row: Mapping[str, Any]) -> Text:
        if not row:
            return Text("not in the current snapshot (filtered out, reset, or outside the window)")
        parts = [
            f"{row.get('op_class', '')}",
            f"count {view.fmt_count(row.get('count'))}",
            f"total {view.fmt_duration_ms(row.get('total_ms'))}",
            f"mean {view.fmt_duration_ms(row.get('mean_ms'))}",
            f"p50 {view.fmt_duration_ms(row.get('p50_ms'))}",
            f"p95 {view.fmt_duration_ms(row.get('p95_ms'))}",
            f"p99 {view.fmt_duration_ms(row.get('p99_ms'))}",
            f"max {view.fmt_duration_ms(row.get('max_ms'))}",
            f"{view.fmt_pct(row.get('pct'))} of kernel time",
        ]
        return Text(" · ".join(p for p in parts if p))

    def _body(self, detail: Mapping[str, Any] | None) -> Text:
        if not detail:
            return Text(
                "No events for this row in the current view (filtered out, reset, or aged out of the window)."
            )
        width = max(20, self.size.width - 40)
        lines: list[Text] = []
        shapes = view.detail_shapes(detail)
        lines.append(Text("Shapes (m × n × k)", "bold"))
        if shapes:
            for label, count, mean_ms in shapes:
                lines.append(
                    Text(
                        f"  {label:<24} {view.fmt_count(count):>9} calls  "
                        f"mean {view.fmt_duration_ms(mean_ms)}"
                    )
                )
        else:
            lines.append(Text("  none recorded (not a matmul, or the backend gives no shapes)"))
        lines.append(Text(""))
        hist = view.detail_histogram(detail)
        lines.append(Text("Duration distribution", "bold"))
        lines += _bars(
            [(f"{view.fmt_duration_ms(lo)}–{view.fmt_duration_ms(hi)}", c) for lo, hi, c in hist],
            width,
            view.fmt_count,
        )
        lines.append(Text(""))
        per_layer = view.detail_layers(detail)
        lines.append(Text("Per layer (ms per decode step)", "bold"))
        lines += _bars(per_layer, width, view.fmt_duration_ms)
        phases = [p for p in detail.get("phases") or [] if isinstance(p, Mapping)]
        if phases:
            lines.append(Text(""))
            lines.append(Text("By phase", "bold"))
            for p in phases:
                lines.append(
                    Text(
                        f"  {p.get('phase', ''):<8} {view.fmt_count(p.get('count')):>9} calls  "
                        f"total {view.fmt_duration_ms(p.get('total_ms'))}  "
                        f"mean {view.fmt_duration_ms(p.get('mean_ms'))}  "
                        f"per step {view.fmt_duration_ms(p.get('ms_per_step'))}"
                    )
                )
        return join_lines(lines)


def _bars(items: Sequence[tuple[str, float]], width: int, fmt: Callable[[Any], str]) -> list[Text]:
    if not items:
        return [Text("  none")]
    label_w = max(len(label) for label, _ in items)
    peak = max(v for _, v in items)
    return [
        Text(f"  {label:>{label_w}} {fmt(v):>9} {_bar(v, peak, width - label_w - 14)}") for label, v in items
    ]


class FilterInput(Input):
    """The `/` filter box: live as you type, enter keeps the filter, esc clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "clear filter", show=False)]

    def action_cancel(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, self.value))
