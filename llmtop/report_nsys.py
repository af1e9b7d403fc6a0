"""The nsys-style kernel table for GPU traces: `llmtop report trace.sqlite|trace.json.gz`.

People reading a GPU trace know the columns of `nsys stats --report cuda_gpu_kern_sum` (Time (%),
Total Time (ns), Instances, Avg, Med, Min, Max, StdDev, Name). `render_nsys` prints the whole
llmtop report (llmtop.report) with its kernel table swapped for one in those columns and units,
plus ours (p95, p99, op class, layer). It is fed from the same report dict as every other format,
so the numbers are the Aggregator's; only the layout and units differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llmtop.errors import LlmtopError
from llmtop.numfmt import num
from llmtop.report import KERNEL_SECTION, Section, render

COLUMN_SETS = ("auto", "nsys", "llmtop")
NSYS_HEADERS = [
    "Time (%)", "Total Time (ns)", "Instances", "Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)",
    "StdDev (ns)", "p95 (ns)", "p99 (ns)", "Op Class", "Layer", "Name",
]
GPU_FORMATS = ("kineto", "nsys")  # importer formats whose kernels may be GPU kernels


def is_gpu_trace(source: Any, fmt: str) -> bool:
    """An imported Kineto/nsys trace whose kernels ran on a GPU (not a CPU-only torch.profiler trace)."""
    device = str(getattr(source, "device", "") or "")
    timing = str(getattr(source, "timing", "") or "")
    return fmt in GPU_FORMATS and not device.upper().startswith("CPU") and "cpu_op" not in timing


def layer_span(layers: Iterable[int | None]) -> str:
    """Compact layer set: [0, 1, 2, 5, None] -> "0-2,5,-" ("-" = outside decoder layers)."""
    nums = sorted({int(x) for x in layers if x is not None})
    parts: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    if any(x is None for x in layers) or not nums:
        parts.append("-")
    return ",".join(parts)


def kernel_layers(snapshot: Any, limit: int | None = None) -> dict[str, str]:
    """Row name -> layer span, from the snapshot's per-row detail (the report rows carry no layers)."""
    out: dict[str, str] = {}
    rows = snapshot.report.get("kernels") or []
    for row in rows if limit is None else rows[:limit]:
        name = str(row.get("name"))
        try:
            detail = snapshot.kernel_detail(name)
        except LlmtopError:  # a row the detail cannot resolve keeps an empty cell
            continue
        out[name] = layer_span(x.get("layer") for x in detail.get("layers") or [])
    return out


def _ns(ms: Any, decimals: int = 0) -> str:
    v = num(ms)
    if v is None:
        return "-"
    return f"{v * 1e6:,.{decimals}f}"


def nsys_section(report: Mapping[str, Any], layers: Mapping[str, str] | None = None,
                 limit: int | None = None) -> Section:
    """The kernel table in cuda_gpu_kern_sum columns (ns, Name last) plus p95, p99, op class, layer."""
    kernels = [k for k in report.get("kernels") or [] if isinstance(k, Mapping)]
    shown = kernels if limit is None else kernels[:limit]
    layers = layers or {}
    rows = []
    for k in shown:
        pct = num(k.get("pct"))
        name = str(k.get("name"))
        rows.append([
            "-" if pct is None else f"{pct:.1f}", _ns(k.get("total_ms")), f"{int(k.get('count') or 0):,}",
            _ns(k.get("mean_ms"), 1), _ns(k.get("p50_ms"), 1), _ns(k.get("min_ms")), _ns(k.get("max_ms")),
            _ns(k.get("std_ms"), 1), _ns(k.get("p95_ms"), 1), _ns(k.get("p99_ms"), 1),
            str(k.get("op_class", "")), layers.get(name, ""), name,
        ])
    sec = Section(f"{KERNEL_SECTION} (nsys cuda_gpu_kern_sum columns; by {report.get('group', 'kernel')},"
                   f" sorted by {report.get('sort', 'total')})", list(NSYS_HEADERS), rows, set(range(10)))
    if len(shown) < len(kernels):
        sec.lines.append(f"({len(kernels) - len(shown)} more rows not shown)")
    if not kernels:
        sec.lines.append("no kernel events in this view")
    sec.lines.append("Med/p95/p99 within 1 % (log buckets); Total, Instances, Avg, Min, Max, StdDev exact")
    return sec


def render_nsys(report: Mapping[str, Any], fmt: str = "text", *, layers: Mapping[str, str] | None = None,
                width: int = 200, limit: int | None = None, wide: bool = False) -> str:
    """The full report (text or markdown) with the kernel table in nsys columns. json: use report.render."""
    if fmt not in ("text", "markdown"):
        raise LlmtopError(f"the nsys column layout is for text or markdown, not {fmt!r}")
    return render(report, fmt, width=width, limit=limit, kernel_section=nsys_section(report, layers, limit),
                  wide=wide)


__all__ = ["COLUMN_SETS", "NSYS_HEADERS", "is_gpu_trace", "kernel_layers", "layer_span", "nsys_section",
           "render_nsys"]
