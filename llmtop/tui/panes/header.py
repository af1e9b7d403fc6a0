"""The two-line header bar: source, backend, device and model, then run state, step, view and costs."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text

from llmtop.tui import view
from llmtop.tui.panes.base import _TextBar, join_lines
from llmtop.tui.provider import ProviderStatus


def model_label(src: Any) -> str:
    """The model's own name (not the path it was read from: a venv path would fill the header)."""
    extra = src.get("extra") if hasattr(src, "get") else None
    name = extra.get("model_name") if isinstance(extra, dict) else None
    model = str(src.get("model") or "") if hasattr(src, "get") else ""
    if name:
        return str(name)
    return ", ".join(m.rsplit("/", 1)[-1] for m in model.split(", ")) if "/" in model else model


def attribution_text(att: Any, *, short: bool = False) -> str:
    """Per decode step: its wall = timed kernels + host/other (the report's `attribution.decode`), and
    on a CUDA run sampled under CUPTI the GPU's busy / idle split; "" without decode steps. `short`: the
    same numbers in fewer words (a narrow terminal), host share first among what is dropped last."""
    dec = att.get("decode") if hasattr(att, "get") else None
    if not isinstance(dec, dict) or not dec.get("steps"):
        return ""
    wall, kern, host = (view.num(dec.get(k)) for k in ("wall_ms_per_step", "kernel_ms_per_step",
                                                        "host_ms_per_step"))
    if wall is None or kern is None or host is None:
        return f"{view.fmt_ms(wall)} ms (untimed)" if wall is not None else ""
    if short:
        out = f"{view.fmt_ms(wall)} ms, host {view.fmt_pct(dec.get('host_pct'))}"
    else:
        out = (f"{view.fmt_ms(wall)} ms = kernels {view.fmt_ms(kern)} + host {view.fmt_ms(host)} "
               f"({view.fmt_pct(dec.get('host_pct'))})")
    gpu = dec.get("gpu")
    if isinstance(gpu, dict):
        out += (f", GPU busy {view.fmt_pct(gpu.get('busy_pct'))}" + ("" if short else
                f" idle {view.fmt_pct(gpu.get('idle_pct'))}")
                + (" LAUNCH-BOUND" if gpu.get("launch_bound") else ""))
    return out


class HeaderBar(_TextBar):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "header--title",
        "header--label",
        "header--warn",
        "header--paused",
    }

    _last: tuple[Any, ProviderStatus, str, bool] | None = None

    def on_resize(self) -> None:
        # What fits depends on the width (items are shortened or left out, not cut): a new width
        # rewords the last numbers even when no new snapshot is coming (a finished import).
        if self._last is not None:
            snapshot, status, mode, paused = self._last
            self.show(snapshot, status, mode=mode, paused=paused)

    def show(self, snapshot: Any, status: ProviderStatus, *, mode: str, paused: bool) -> None:
        self._last = (snapshot, status, mode, paused)
        src = view.section(snapshot, "source")
        tok = view.section(snapshot, "tokens")
        dropped = view.section(snapshot, "dropped")
        label = self.cs("header--label")
        warn = self.cs("header--warn")
        line1 = Text(no_wrap=True, overflow="ellipsis")
        line1.append("llmtop ", self.cs("header--title"))
        kind = src.get("kind") or status.get("kind") or ""
        parts = [kind, src.get("backend"), src.get("device"), model_label(src), src.get("dtype")]
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
        # (label, value, warn, a shorter value or None): an item that does not fit whole is said shorter
        # or left out, never cut through a number; only the prompt (words, last) may end in "…"
        items: list[tuple[str, str, bool, str | None]] = []
        # `step`: decode steps since the start (not the window's count, which shrinks as steps age out)
        step = view.num(tok.get("step_index"))
        if step is None:
            step = view.token_step(tok)
        if step is not None:
            items.append(("step", view.fmt_count(step), False, None))
        att = view.section(snapshot, "attribution")
        split = attribution_text(att)
        if split:
            items.append(("decode step", split, False, attribution_text(att, short=True)))
        window = view.report(snapshot).get("window_s")
        items.append(
            ("stats", f"last {view.fmt_rate(window)} s" if mode == "window" and window else mode, False, None)
        )
        total_dropped = view.num(dropped.get("total")) or 0
        items.append(("dropped", view.fmt_count(total_dropped), total_dropped > 0, None))
        if cost is None:
            cost = view.num(status.get("collector_cost_pct"))
        if cost is not None:
            items.append(("collectors", f"{cost:.1f}% CPU", False, None))
        if status.get("speed") is not None and status.get("kind") == "replay":
            items.append(("speed", f"{status['speed']:g}×", False, None))  # its position: in the footer
        room = self.size.width - 2 if self.size.width else 1 << 30  # the bar's padding
        for k, v, is_warn, short in items:
            for value in (v, short):
                if value is not None and line2.cell_len + len(k) + 1 + len(value) <= room:
                    line2.append(k + " ", label)
                    line2.append(value, warn if is_warn else "")
                    line2.append("  ")
                    break
        if status.get("prompt"):
            line2.append("prompt ", label)
            line2.append(str(status["prompt"]))
        self.show_text(join_lines([line1, line2]))
