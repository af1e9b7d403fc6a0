"""The attention-growth pane: attention ms per decode step against context, its fit and projection."""

from __future__ import annotations

import math
from collections.abc import Mapping

from rich.text import Text
from textual.strip import Strip

from llmtop.tui import view
from llmtop.tui.panes.base import Line, _Pane, flow
from llmtop.tui.plot import Series, plot_segments


class AttentionPane(_Pane):
    """Attention ms per decode step against context: points, least-squares line, projection."""

    def lines(self) -> list[Line]:
        w, h = self.size.width, self.size.height
        att = view.section(self.snapshot, "attention")
        xs, ys = view.attention_points(self.snapshot)
        if not att and not xs:
            return [self.empty("no decode steps yet…")]
        ok = bool(att.get("fit_ok"))
        # A slope and intercept are only stated (and the line drawn) when the fit passed its rule
        # (stats/snapshot.py FIT_RULE); otherwise the points stand alone with what the noise allows.
        slope = view.num(att.get("slope_ms_per_1k")) if ok else None
        intercept = view.num(att.get("intercept_ms")) if ok else None
        chunks: list[Text] = []
        if ok:
            ci = view.num(att.get("slope_ci95_ms_per_1k"))
            pm = "" if ci is None else " ±" + view.fmt_ms(ci)
            growth = [self.lv("growth", f"{view.fmt_ms(slope)}{pm} ms/1k tok")]
            if growth[0].cell_len > w and ci is not None:  # narrow: the interval on a line of its own
                growth = [self.lv("growth", f"{view.fmt_ms(slope)} ms/1k tok"),
                          self.lv("±", f"{view.fmt_ms(ci)} ms/1k tok (95 %)")]
            chunks += [
                *growth,
                self.lv("R²", "–" if view.num(att.get("r2")) is None else f"{float(att['r2']):.2f}"),
            ]
        share = view.num(att.get("share_pct_last"))
        if share is not None:
            first = view.num(att.get("share_pct_first"))
            value = (f"{view.fmt_pct(first)} → " if first is not None else "") + view.fmt_pct(share)
            # the short label on a narrow pane, so the two shares stay on one line
            chunks.append(self.lv("share of step" if len(value) + 14 <= w else "share", value))
        proj = att.get("projection")
        note = att.get("fit_note")
        if note and not ok:
            chunks.append(Text(str(note), self.cs("pane--dim")))
        elif isinstance(proj, Mapping) and view.num(proj.get("ctx")):
            label = f"at {view.fmt_count(proj.get('ctx'))} tok"
            pct, ms = view.fmt_pct(proj.get("pct_of_step")), view.fmt_duration_ms(proj.get("attention_ms"))
            value = f"{pct} of a step ({ms})"
            chunks.append(self.lv(label, value if len(label) + len(value) + 1 <= w else f"{pct} ({ms})"))
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
                fy = [intercept + slope * x / 1e3 for x in fx]  # ms per 1k tokens -> ms per token
                fit_style = self.cs("plot--fit")
                series.append(Series(fx, fy, fit_style, line=True))
            if room >= 4:  # the axis caption only when the plot keeps at least 3 rows
                y_all = [y for s in series for y in s.ys if math.isfinite(y)]
                dim = self.cs("pane--dim")
                ranges = [Text(f"ctx {view.fmt_count(x_lo)}–{view.fmt_count(x_hi)}", dim),
                          Text(f"ms {view.fmt_ms(min(y_all))}–{view.fmt_ms(max(y_all))}", dim)]
                caption = flow(ranges, w)
                key = Text("(· points, ─ fit)" if slope is not None else "(· points)", dim)
                legend = flow([*ranges, key], w)
                if len(legend) == len(caption):  # the legend only where it costs the plot no row
                    caption = legend
                if room - len(caption) < 3:  # a narrow pane: the ranges, not the legend
                    caption = caption[: max(1, room - 3)]
                lines += caption
                room -= len(caption)
            # Points first, then the fitted line on top: where they coincide the fit shows.
            lines += [Strip(r) for r in plot_segments(w, room, series)]
        return lines
