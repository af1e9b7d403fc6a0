"""Headless rendering of `llmtop diff A B`: the dict of stats.compare.diff_reports as text, markdown or JSON.

Text and markdown show the token-rate and attribution deltas first, then one row per kernel (op class,
layer) sorted by |delta| with its significance; JSON is the dict itself (`rows` holds the rows), plus the
two inputs and their importers' warnings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmtop.errors import LlmtopError
from llmtop.report import FORMATS, Section, fint, fms, fpct, frate, render_sections

TOKEN_LABELS = {
    "decode_tok_s": ("decode tok/s", frate), "prefill_tok_s": ("prefill tok/s", frate),
    "ttft_ms": ("TTFT (ms)", fms), "tpot_ms_p50": ("TPOT p50 (ms)", fms),
    "tpot_ms_p95": ("TPOT p95 (ms)", fms),
    "generated": ("tokens generated", fint),
}
ATTRIBUTION_LABELS = {
    "wall_ms_per_step": ("wall / step (ms)", fms), "kernel_ms_per_step": ("kernels / step (ms)", fms),
    "host_ms_per_step": ("host / step (ms)", fms), "host_pct": ("host %", fpct),
}


def _signed(x: Any, f: Any, suffix: str = "") -> str:
    if x is None:
        return "-"
    s = f(abs(x)) + suffix
    return ("+" if x > 0 else "-" if x < 0 else "±") + s


def _delta_rows(d: Mapping[str, Any], labels: Mapping[str, tuple[str, Any]],
                prefix: str = "") -> list[list[str]]:
    rows = []
    for key, (label, f) in labels.items():
        x = d.get(key)
        if not isinstance(x, Mapping) or (x.get("a") is None and x.get("b") is None):
            continue
        rows.append([prefix + label, f(x.get("a")), f(x.get("b")), _signed(x.get("delta"), f),
                     _signed(x.get("delta_pct"), fpct)])
    return rows


def diff_sections(d: Mapping[str, Any], limit: int | None = None) -> list[Section]:
    out = []
    top = _delta_rows(d.get("tokens") or {}, TOKEN_LABELS)
    for ph, x in (d.get("attribution") or {}).items():
        top += _delta_rows(x, ATTRIBUTION_LABELS, f"{ph}: ")
    out.append(Section("Token rate and attribution", ["Metric", "A", "B", "Delta", "Delta %"], top,
                       {1, 2, 3, 4}))
    rows = list(d.get("rows") or [])
    shown = rows[:limit] if limit else rows
    group = d.get("group") or "kernel"
    sec = Section(
        f"{'Kernels' if group == 'kernel' else 'Rows by ' + group}: {d.get('significant_rows', 0)} of "
        f"{len(rows)} changed significantly",
        ["Name", "Class", "A total (ms)", "B total (ms)", "Delta (ms)", "Delta %", "A mean (ms)",
         "B mean (ms)", "Mean %", "A count", "B count", "Significant"],
        [[r["name"], str(r.get("op_class") or ""), fms(r["a_total_ms"]), fms(r["b_total_ms"]),
          _signed(r["delta_ms"], fms), _signed(r.get("delta_pct"), fpct), fms(r.get("a_mean_ms")),
          fms(r.get("b_mean_ms")), _signed(r.get("delta_mean_pct"), fpct), fint(r["a_count"]),
          fint(r["b_count"]), (f"YES ({r['change']})" if r["significant"] else "")] for r in shown],
        set(range(2, 11)),
    )
    if len(shown) < len(rows):
        sec.lines.append(f"{len(rows) - len(shown)} more rows (--limit)")
    sec.lines.append(
        f"significant: Mann-Whitney U on the duration buckets, p < {d.get('alpha')} / rows tested, and the "
        f"mean moved >= {d.get('min_effect_pct'):g} %; events are treated as independent (runs on a noisy "
        "machine can differ by more than chance)")
    out.append(sec)
    return out


def render_diff(d: Mapping[str, Any], fmt: str = "text", *, limit: int | None = None, wide: bool = False,
                width: int = 180) -> str:
    if fmt not in FORMATS:
        raise LlmtopError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "json":
        return json.dumps(d, indent=2, allow_nan=False) + "\n"
    head = [f"llmtop diff · A = {d.get('a', {}).get('path')} · B = {d.get('b', {}).get('path')}",
            f"A: {d.get('a', {}).get('label', '')}", f"B: {d.get('b', {}).get('label', '')}"]
    notes = [f"warning ({side}): {w}" for side in ("a", "b") for w in (d.get(side) or {}).get("warnings", [])]
    return render_sections(head, diff_sections(d, limit), fmt, notes=notes, width=width, wide=wide)


__all__ = ["diff_sections", "render_diff"]
