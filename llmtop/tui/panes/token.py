"""The token-rate pane: decode tok/s over time plus TTFT, TPOT p50/p95 and prefill/decode rates.

Attached to servers' /metrics (no events, so no token statistics in the snapshot), it shows the same
kind of numbers from the Servers pane's rows instead: the total row's (or the drilled-into target's)
generation and prompt tok/s, TTFT and inter-token latency percentiles, tokens generated, and its tok/s
over the last minutes.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.strip import Strip

from llmtop.tui import view
from llmtop.tui.panes.base import Line, _Pane, flow
from llmtop.tui.panes.servers import row_signature
from llmtop.tui.plot import Series, decimate, plot_segments
from llmtop.tui.provider import ServerRow


def _scale(x: object, k: float) -> float | None:
    v = view.num(x)
    return None if v is None else v * k


class TokenPane(_Pane):
    """Token rate: decode tok/s over time plus TTFT, TPOT p50/p95, prefill/decode rates."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.server: ServerRow | None = None  # numbers from servers' /metrics instead of the snapshot
        self.server_rate: list[tuple[float, float]] = []
        self._server_sig: tuple[object, ...] | None = None
        self._plot_key: tuple[object, ...] | None = None
        self._plot_lines: list[Line] = []

    def set_server(self, row: ServerRow | None, rate: list[tuple[float, float]] | None = None) -> bool:
        """Fill the pane from a Servers row (None: from the snapshot), from the next set_snapshot on.
        False when the row and its rate history are what the pane already shows (nothing to redraw)."""
        sig = None if row is None else (row_signature(row), len(rate or ()), (rate or [None])[-1])
        if sig == self._server_sig and (row is None) == (self.server is None):
            return False
        self._server_sig = sig
        self.server, self.server_rate = row, list(rate or [])
        return True

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.__dict__["_plot_key"] = None  # the plot's colours are baked into its strips

    def lines(self) -> list[Line]:
        if self.server is not None:
            return self._server_lines(self.server)
        w, h = self.size.width, self.size.height
        tok = view.section(self.snapshot, "tokens")
        if not tok:
            return [self.empty("waiting for the first tokens…")]
        narrow = w < 34
        chunks = [
            self.lv("decode", f"{view.fmt_rate(tok.get('decode_tok_s'))} tok/s"),
            self.lv("prefill", f"{view.fmt_rate(tok.get('prefill_tok_s'))} tok/s"),
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
        return lines + self._plot(ts, vs, h - len(lines))

    def _server_lines(self, r: ServerRow) -> list[Line]:
        w, h = self.size.width, self.size.height
        ms = 1e3
        chunks = [
            self.lv("gen", f"{view.fmt_rate(r.get('gen_tok_s'))} tok/s"),
            self.lv("prompt", f"{view.fmt_rate(r.get('prompt_tok_s'))} tok/s"),
            self.lv("TTFT p50/p95", f"{view.fmt_ms(_scale(r.get('ttft_p50_s'), ms))}/"
                                    f"{view.fmt_ms(_scale(r.get('ttft_p95_s'), ms))} ms"),
            self.lv("ITL p50/p95", f"{view.fmt_ms(_scale(r.get('itl_p50_s'), ms))}/"
                                   f"{view.fmt_ms(_scale(r.get('itl_p95_s'), ms))} ms"),
            self.lv("generated", view.fmt_count(r.get("gen_tokens"))),
            self.lv("running", view.fmt_count(r.get("running"))),
            self.lv("waiting", view.fmt_count(r.get("waiting"))),
        ]
        lines: list[Line] = [*flow(chunks, w)]
        pts = self.server_rate
        room = h - len(lines)
        # The numbers above change with every target's scrape; the plot only when the rate history does.
        key = (len(pts), pts[0] if pts else None, pts[-1] if pts else None, w, room)
        if key != self._plot_key:
            self._plot_key = key
            self._plot_lines = self._plot([t for t, _ in pts], [v for _, v in pts], room)
        return lines + self._plot_lines

    def _plot(self, ts: list[float], vs: list[float], room: int) -> list[Line]:
        """tok/s over time under the numbers: a range caption, then a braille line anchored at 0."""
        w = self.size.width
        lines: list[Line] = []
        ts, vs = decimate(ts, vs, 2 * w)  # braille: 2 dot columns per cell
        finite = [v for v in vs if math.isfinite(v)]
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
