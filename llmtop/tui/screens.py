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
    ("enter", "details of the selected kernel: shapes, roofline, distribution, per layer"),
    ("b", "kernel table: roofline columns (bytes, GB/s, GFLOP/s, % of peak, bound) / durations"),
    ("+ / -", "replay speed ×2 / ÷2 (replay only)"),
    ("s ↵ esc", "Servers pane (attach): sort column / that target alone / all targets again"),
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
        self, name: str, fetch: Callable[[str], tuple[Mapping[str, Any] | None, Mapping[str, Any]]],
        scope: Callable[[], str] | None = None, since: Callable[[], str] | None = None,
    ) -> None:
        super().__init__()
        self.kernel = name
        self._fetch = fetch
        # What the view's numbers cover ("last 10 s", "since reset"): said beside them, since the shapes
        # below are counted over the whole run and the two counts must not be read as one scope.
        self._scope = scope or (lambda: "")
        self._since = since or (lambda: "since start")  # what the shapes cover: the whole run (or reset)

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
        scope = self._scope()
        parts = [
            f"{row.get('op_class', '')}",
            *([scope] if scope else []),
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
        lines.append(Text(f"Shapes (m × n × k; counted {self._since()}, whatever the view)", "bold"))
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
        lines += roofline_lines(detail, width)
        hist = view.detail_histogram(detail)
        scope = self._scope()
        over = f" · {scope}" if scope else ""
        lines.append(Text(f"Duration distribution{over}", "bold"))
        lines += _bars(
            [(f"{view.fmt_duration_ms(lo)}–{view.fmt_duration_ms(hi)}", c) for lo, hi, c in hist],
            width,
            view.fmt_count,
        )
        lines.append(Text(""))
        per_layer = view.detail_layers(detail)
        lines.append(Text(f"Per layer (ms per decode step){over}", "bold"))
        lines += _bars(per_layer, width, view.fmt_duration_ms)
        phases = [p for p in detail.get("phases") or [] if isinstance(p, Mapping)]
        if phases:
            lines.append(Text(""))
            lines.append(Text("By phase", "bold"))
            # the body's width once laid out, else the box's (95 %, at most 120) less border and padding;
            # less the scrollbar either way (the body is laid out before its scrollbar appears)
            laid_out = self.query_one("#detail-body").size.width
            room = (laid_out or min(int(self.size.width * 0.95), 120) - 4) - 2
            for p in phases:
                total = view.fmt_duration_ms(p.get("total_ms"))
                mean = view.fmt_duration_ms(p.get("mean_ms"))
                step = view.fmt_duration_ms(p.get("ms_per_step"))
                count = view.fmt_count(p.get("count"))
                phase = p.get("phase", "")
                line = f"  {phase:<8} {count:>9} calls  total {total}  mean {mean}  per step {step}"
                if len(line) > room:  # a narrow terminal: the same numbers in fewer cells, not wrapped
                    line = f"  {phase} {count} calls · {total} · mean {mean} · {step}/step"
                lines.append(Text(line))
        return join_lines(lines)


def roofline_plot(intensity: float, gflops: float, bw_gbps: float, peak_gflops: float, width: int,
                  height: int = 7) -> list[str]:
    """A log-log roofline in text: the roof min(bw × I, peak) over intensities 1/100..1000 flop/byte, the
    ridge, and the kernel's point (●) at its intensity and achieved GFLOP/s."""
    import math

    lo_x, hi_x = -2.0, 3.0  # log10 flop/byte
    top = math.log10(peak_gflops * 1.5)
    bottom = top - 4.0  # four decades of GFLOP/s
    grid = [[" "] * width for _ in range(height)]

    def row_of(gf: float) -> int:
        y = (math.log10(max(gf, 1e-12)) - bottom) / (top - bottom)
        return min(height - 1, max(0, height - 1 - round(y * (height - 1))))

    for c in range(width):
        x = 10 ** (lo_x + (hi_x - lo_x) * c / max(1, width - 1))
        roof = min(bw_gbps * x, peak_gflops)
        if math.log10(roof) >= bottom:
            grid[row_of(roof)][c] = "─" if roof >= peak_gflops else "╱"
    if intensity > 0 and gflops > 0:
        c = round((math.log10(intensity) - lo_x) / (hi_x - lo_x) * (width - 1))
        if 0 <= c < width:
            grid[row_of(gflops)][c] = "●"
    return ["".join(r) for r in grid]


def roofline_lines(detail: Mapping[str, Any], width: int) -> list[Text]:
    """The kernel on the device's roofline (stats/roofline.py), or one line saying why not."""
    out = [Text("Roofline", "bold")]
    gf, byts, flops = detail.get("gflops"), detail.get("bytes"), detail.get("flops")
    pk = detail.get("device_peak")
    if gf is None or not flops:
        out.append(Text("  no shape recorded for this row: no bytes or flops to place it"))
        return [*out, Text("")]
    parts = [f"{view.fmt_bytes(byts)} and {view.fmt_count(flops)} flops per call",
             f"{view.fmt_rate(detail.get('gbps'))} GB/s", f"{view.fmt_rate(gf)} GFLOP/s"]
    if isinstance(pk, Mapping) and byts:
        bw, fl = view.fmt_rate(pk.get("bw_gbps")), view.fmt_rate(pk.get("flops_gflops"))
        parts.append(f"{view.fmt_pct(detail.get('pct_peak_bw'))} of {bw} GB/s, "
                     f"{view.fmt_pct(detail.get('pct_peak_flops'))} of {fl} GFLOP/s ({pk.get('source')}): "
                     f"{detail.get('bound')}-bound")
    out.append(Text("  " + " · ".join(parts)))
    if isinstance(pk, Mapping) and byts:
        plot = roofline_plot(flops / byts, gf, float(pk["bw_gbps"]), float(pk["flops_gflops"]),
                             min(width, 64))
        out += [Text("  " + line) for line in plot]
        out.append(Text("  intensity 0.01 … 1000 flop/byte (log) → ; GFLOP/s (log) ↑ ; ● this kernel", "dim"))
    else:
        out.append(Text("  no device peak: start with --peak BW,FLOPS to see it against the roofs", "dim"))
    return [*out, Text("")]


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
