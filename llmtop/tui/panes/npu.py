"""The NPU pane: mlir-air's profile tables, live, from the report's `npu` section (stats/npu.py).

Shown by the app only when the source has XRT (pyxrt) calls. Lines, most important first so a short pane
keeps them: the XRT totals with a BO write / NPU run / BO read split bar (like the per-layer op-class bars)
and MB moved; the wall-time attribution per phase (NPU XRT / CPU host / python scheduling) with TTFT and
TPOT; the per-token trend with its first -> last drift; then one row per XRT kernel (calls, ms per call,
its split bar, MB written per call) and the CPU host ops; last, what was inferred.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rich.text import Text

from llmtop.tui import view
from llmtop.tui.panes.base import Line, _Pane, flow

PARTS = (("bo_write", "write"), ("npu_run", "run"), ("bo_read", "read"))


def npu_section(snapshot: Any) -> Mapping[str, Any] | None:
    """The report's `npu` section, or None when the source has no XRT calls (the pane is then hidden)."""
    v = view.report(snapshot).get("npu")
    return v if isinstance(v, Mapping) and v.get("kernels") is not None else None


def split_cells(parts: list[float], width: int) -> list[int]:
    """Cells per part for a bar of `width` cells (largest remainders; a part > 0 gets at least one cell when
    there is room)."""
    total = sum(max(0.0, p) for p in parts)
    if width <= 0 or total <= 0:
        return [0] * len(parts)
    exact = [max(0.0, p) / total * width for p in parts]
    cells = [int(x) for x in exact]
    for i in sorted(range(len(parts)), key=lambda i: exact[i] - cells[i], reverse=True)[: width - sum(cells)]:
        cells[i] += 1
    for i, p in enumerate(parts):  # a visible sliver for a part that rounded to nothing
        if p > 0 and cells[i] == 0:
            j = max(range(len(cells)), key=lambda j: cells[j])
            if cells[j] > 1:
                cells[j] -= 1
                cells[i] = 1
    return cells


class NpuPane(_Pane):
    """BO write / NPU run / BO read per XRT kernel, attribution, TTFT / TPOT and the per-token trend."""

    COMPONENT_CLASSES: ClassVar[set[str]] = _Pane.COMPONENT_CLASSES | {"npu--write", "npu--run", "npu--read"}
    # Styled here, not in llmtop.tcss: the pane is one file (the app shows it only for NPU sources).
    DEFAULT_CSS = """
    NpuPane {
        display: none;
        height: auto;
        max-height: 16;
        padding: 0 1;
        border: round $primary 60%;
        border-title-color: $text;
        border-title-style: bold;
    }
    NpuPane.-shown { display: block; }
    NpuPane > .pane--label { color: $text-muted; }
    NpuPane > .pane--value { color: $text; text-style: bold; }
    NpuPane > .pane--warn { color: $warning; text-style: bold; }
    NpuPane > .pane--dim { color: $text-muted; }
    NpuPane > .npu--write { color: #edc948; }
    NpuPane > .npu--run { color: #17becf; }
    NpuPane > .npu--read { color: #b07aa1; }
    """

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return max(1, len(self.lines()))

    def lines(self) -> list[Line]:
        n = npu_section(self.snapshot)
        w = max(1, self.size.width)
        if n is None:
            return [self.empty("no XRT calls yet…")]
        out: list[Line] = []
        tot = n.get("totals") if isinstance(n.get("totals"), Mapping) else {}
        head = Text(no_wrap=True, overflow="crop")
        head.append_text(self.lv("XRT", f"{view.fmt_count(tot.get('count'))} calls "
                                        f"{view.fmt_duration_ms(view.num(tot.get('total_ms')))}"))
        for key, label in PARTS:
            head.append("  ")
            head.append(f"■ {label} ", self.cs(f"npu--{label}"))
            head.append(view.fmt_pct(tot.get(f"{key}_pct")), self.cs("pane--value"))
        head.append("  ")
        head.append_text(self.lv("MB w/r", f"{_mb(tot.get('mb_written'))}/{_mb(tot.get('mb_read'))}"))
        out.append(head)
        out.append(self._bar([view.num(tot.get(f"{k}_ms")) or 0.0 for k, _ in PARTS], w))
        out.extend(self._attribution(n, w))
        trend = self._trend()
        if trend is not None:
            out.append(trend)
        rows = [r for r in n.get("kernels") or [] if isinstance(r, Mapping)]
        name_w = min(24, max((len(str(r.get("name"))) for r in rows), default=6))
        bar_w = max(4, min(30, w - name_w - 34))
        for r in rows:
            line = Text(no_wrap=True, overflow="crop")
            line.append(view.shorten(str(r.get("name")), name_w).ljust(name_w + 1), self.cs("pane--value"))
            line.append(f"×{view.fmt_count(r.get('count')):<6}", self.cs("pane--dim"))
            per_call = view.fmt_duration_ms(view.num(r.get("mean_ms")))
            line.append(f"{per_call:>8}/call ", self.cs("pane--value"))
            line.append_text(self._bar([view.num(r.get(f"{k}_ms")) or 0.0 for k, _ in PARTS], bar_w))
            count = view.num(r.get("count")) or 0
            mb = (view.num(r.get("mb_written")) or 0.0) / count if count else None
            line.append(f" {_mb(mb)} MB/call", self.cs("pane--dim"))
            out.append(line)
        hosts = [h for h in n.get("host_ops") or [] if isinstance(h, Mapping)]
        if hosts:
            chunks = [self.lv("CPU host", "")]
            chunks += [Text.assemble((f"{h.get('name')} ", self.cs("pane--label")),
                                     (f"{view.fmt_duration_ms(view.num(h.get('mean_ms')))}"
                                      f"×{view.fmt_count(h.get('count'))}", self.cs("pane--value")))
                       for h in hosts[:8]]
            out.extend(flow(chunks, w))
        for note in n.get("notes") or []:
            out.append(Text("ⓘ " + str(note), self.cs("pane--dim"), no_wrap=True, overflow="ellipsis"))
        return out

    def _bar(self, parts: list[float], width: int) -> Text:
        t = Text(no_wrap=True, overflow="crop")
        for (_, label), cells in zip(PARTS, split_cells(parts, width), strict=True):
            if cells:
                t.append("█" * cells, self.cs(f"npu--{label}"))
        return t

    def _attribution(self, n: Mapping[str, Any], w: int) -> list[Line]:
        att = n.get("attribution") if isinstance(n.get("attribution"), Mapping) else {}
        tok = view.section(self.snapshot, "tokens")
        out: list[Line] = []
        latencies = {"prefill": ("TTFT", tok.get("ttft_ms")), "decode": ("TPOT", tok.get("tpot_ms_mean"))}
        for ph, latency in latencies.items():
            a = att.get(ph)
            if not isinstance(a, Mapping) or not a.get("timed_steps"):
                continue
            chunks = [
                self.lv(ph, f"{view.fmt_count(a.get('steps'))} steps"),
                self.lv(latency[0], view.fmt_duration_ms(view.num(latency[1]))),
                self.lv("NPU XRT", _share(a, "npu")),
                self.lv("CPU host", _share(a, "host")),
                self.lv("python", _share(a, "python")),
            ]
            out.extend(flow(chunks, w))
        return out

    def _trend(self) -> Line | None:
        tr = view.section(self.snapshot, "trend")
        if not tr.get("steps"):
            return None
        drift = view.num(tr.get("drift_pct"))
        t = Text(no_wrap=True, overflow="crop")
        t.append_text(self.lv("per token", f"{view.fmt_duration_ms(view.num(tr.get('first_ms')))} → "
                                           f"{view.fmt_duration_ms(view.num(tr.get('middle_ms')))} → "
                                           f"{view.fmt_duration_ms(view.num(tr.get('last_ms')))}"))
        t.append("  ")
        t.append_text(self.lv("drift", "—" if drift is None else f"{drift:+.1f}%",
                              warn=drift is not None and abs(drift) >= 5.0))
        return t


def _share(a: Mapping[str, Any], key: str) -> str:
    return (f"{view.fmt_duration_ms(view.num(a.get(f'{key}_ms_per_step')))} "
            f"({view.fmt_pct(a.get(f'{key}_pct'))})")


def _mb(x: Any) -> str:
    v = view.num(x)
    if v is None:
        return view.DASH
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


__all__ = ["NpuPane", "npu_section", "split_cells"]
