"""The token-rate pane: decode tok/s over time plus TTFT, TPOT p50/p95 and prefill/decode rates."""

from __future__ import annotations

import math

from rich.text import Text
from textual.strip import Strip

from llmtop.tui import view
from llmtop.tui.panes.base import Line, _Pane, flow
from llmtop.tui.plot import Series, decimate, plot_segments


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
