"""Headless rendering of a Snapshot report: `llmtop report FILE --format text|json|markdown`, `--once`.

`render(report, fmt)` takes the JSON-able dict of `Snapshot.report` (docs/REPORT.md) and returns the
whole report as one string. Text and markdown show the same tables, built once as `Section`s:
tokens, top kernels (the MLC / nsys "kernel execution statistics" columns), tracks (several ranks /
streams side by side), per-layer, attention growth, wall-time attribution, per-token trend, dropped
events and collector cost. `with_notes` adds what an importer skipped, repaired or guessed (top-level
`warnings` and `skipped`, always present in JSON); text and markdown print them above the tables.

Kernel names are whole in JSON and markdown; a text table cuts names longer than its Name column in
the middle (numfmt.shorten_names: the start, "…", the template tail) unless `wide`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmtop.errors import LlmtopError
from llmtop.numfmt import adapter_line, fmt_int, fmt_ms, fmt_pct, fmt_rate, num, printable, shorten_names
from llmtop.numfmt import fmt_bytes as fmt_bytes  # re-exported: llmtop.report.fmt_bytes as before

FORMATS = ("text", "json", "markdown")
DASH = "-"
KERNEL_SECTION = "Kernel Execution Statistics"  # title prefix of the top-kernels table
NAME_MIN = 40  # a text table's Name column is at least this wide (the line grows past `width` for it)
COLUMN_GAP = 3  # characters between two columns of a text table (padding, rule, padding)
UNMAPPED = "unmapped"  # `skipped` reason of records an importer counted without saying why


@dataclass
class Section:
    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # right-aligned (numeric) columns
    lines: list[str] = field(default_factory=list)  # free text under the table


# The report's spellings of the shared formats (llmtop.numfmt): an ASCII "-" for a missing value, and
# two decimals on percentages and rates (a document, not a cell on a refreshing screen).
def fms(x: Any) -> str:
    """Milliseconds (and other plain values: seconds, R2, t) to three significant digits."""
    return fmt_ms(x, missing=DASH)


def fpct(x: Any) -> str:
    return fmt_pct(x, 2, missing=DASH)


def frate(x: Any) -> str:
    return fmt_rate(x, 2, missing=DASH)


def fint(x: Any) -> str:
    return fmt_int(x, missing=DASH)


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, Mapping) else None


def skipped_counts(skipped: int = 0, skipped_by: Mapping[str, int] | None = None) -> dict[str, int]:
    """Reason -> count of the records an importer left out: its reasons, plus what its total has beyond
    them as `unmapped`."""
    out = {str(k): int(v) for k, v in (skipped_by or {}).items() if int(v) > 0}
    rest = int(skipped or 0) - sum(out.values())
    if rest > 0:
        out[UNMAPPED] = out.get(UNMAPPED, 0) + rest
    return dict(sorted(out.items()))


def with_notes(report: Mapping[str, Any], warnings: Any = (), skipped: int = 0,
               skipped_by: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The report with top-level `warnings` (one line each) and `skipped` (reason -> count) added to any
    it carries already; both are always present, empty when nothing was skipped or guessed."""
    out = dict(report)
    lines = [str(w) for w in out.get("warnings") or []]
    lines += [" ".join(str(w).split()) for w in warnings or ()]
    out["warnings"] = [w for w in dict.fromkeys(lines) if w]
    counts = {str(k): int(v) for k, v in (out.get("skipped") or {}).items()}
    for k, v in skipped_counts(skipped, skipped_by).items():
        counts[k] = counts.get(k, 0) + v
    out["skipped"] = dict(sorted(counts.items()))
    return out


def note_lines(r: Mapping[str, Any]) -> list[str]:
    """`warning: ...` lines and one `skipped: ...` line of a report (text and markdown, above the tables)."""
    warnings = r.get("warnings")
    out = [f"warning: {w}" for w in warnings] if isinstance(warnings, list) else []
    sk = r.get("skipped")
    counts = {str(k): v for k, v in sk.items() if num(v)} if isinstance(sk, Mapping) else {}
    if counts:
        detail = ", ".join(f"{k} {fint(v)}" for k, v in counts.items())
        out.append(f"skipped: {fint(sum(num(v) or 0 for v in counts.values()))} records ({detail})")
    return out


def _adapter_lines(adapter: Any) -> list[str]:
    """A WebGPU source's adapter line: weight path, features, limits and the start-up self-check."""
    if not isinstance(adapter, Mapping):
        return []
    return ["adapter: " + adapter_line(adapter)]


def sections(r: Mapping[str, Any], limit: int | None) -> tuple[list[str], list[Section]]:
    src = _get(r, "source") or {}
    head = [
        "llmtop report - " + " | ".join(
            f"{k} {src.get(k)}" for k in ("kind", "backend", "device", "model", "dtype", "timing")
            if src.get(k)
        ),
        *_adapter_lines(_get(_get(src, "extra"), "adapter")),
        f"view: {r.get('mode', DASH)}"
        + (f" (last {r.get('window_s')} s)" if r.get("mode") == "window" else "")
        + f", group by {r.get('group', DASH)}, sort by {r.get('sort', DASH)}"
        + (f", filter '{r.get('filter')}'" if r.get("filter") else "")
        + f"; {fint(r.get('events'))} kernel events over {fms(r.get('span_s'))} s",
    ]
    out: list[Section] = []

    t = _get(r, "tokens") or {}
    out.append(Section(
        "Tokens", ["Metric", "Value"],
        [["TTFT (prefill step, median)", f"{fms(t.get('ttft_ms'))} ms"
          + {True: " (warm: after --warmup rounds)", False: " (cold start: the process's first prefill "
             "included)"}.get(t.get("ttft_warm"), "")],
         ["TTFT p95", f"{fms(t.get('ttft_ms_p95'))} ms"],
         ["TPOT p50 / p95 (decode step)", f"{fms(t.get('tpot_ms_p50'))} / {fms(t.get('tpot_ms_p95'))} ms"],
         ["Decode tok/s", frate(t.get("decode_tok_s"))],
         ["Prefill tok/s", frate(t.get("prefill_tok_s"))],
         ["tok/s now", frate(t.get("tok_s_now"))],
         ["Tokens generated", fint(t.get("generated"))],
         ["Prompt tokens / prefills", f"{fint(t.get('prompt_tokens'))} / {fint(t.get('prefills'))}"],
         ["Decode steps", fint(t.get("decode_steps"))],
         ["Context (now / max)", f"{fint(t.get('context'))} / {fint(t.get('context_max'))}"]],
        {1},
    ))

    kernels = list(_get(r, "kernels") or [])
    shown = kernels if limit is None else kernels[:limit]
    sort_title = {"total": "Total Time", "count": "Instances", "mean": "Avg Time", "p95": "p95",
                  "max": "Max Time", "name": "Name"}.get(str(r.get("sort")), str(r.get("sort")))
    ks = Section(
        f"{KERNEL_SECTION} (by {r.get('group', 'kernel')}, sorted by {sort_title})",
        ["Name", "Class", "Time %", "Cum %", "Total (ms)", "Instances", "Avg (ms)", "Med (ms)", "Min (ms)",
         "p95 (ms)", "p99 (ms)", "Max (ms)", "StdDev (ms)"],
        [[str(k.get("name")), str(k.get("op_class", "")), fpct(k.get("pct")), fpct(k.get("cum_pct")),
          fms(k.get("total_ms")), fint(k.get("count")), fms(k.get("mean_ms")), fms(k.get("p50_ms")),
          fms(k.get("min_ms")), fms(k.get("p95_ms")), fms(k.get("p99_ms")), fms(k.get("max_ms")),
          fms(k.get("std_ms"))] for k in shown if isinstance(k, Mapping)],
        set(range(2, 13)),
    )
    if len(shown) < len(kernels):
        ks.lines.append(f"({len(kernels) - len(shown)} more rows not shown)")
    if not kernels:
        ks.lines.append("no kernel events in this view")
    out.append(ks)
    roof = roofline_section(r, shown)
    if roof is not None:
        out.append(roof)

    tracks = [x for x in _get(r, "tracks") or [] if isinstance(x, Mapping)]
    if len(tracks) > 1:  # ranks / devices / streams side by side; one track says nothing new
        out.append(Section(
            "Tracks (rank / device / stream, since the start)",
            ["Track", "Kernels", "Kernel time (ms)", "Steps", "Decode tok/s"],
            [[str(x.get("label")), fint(x.get("kernels")), fms(x.get("kernel_ms")), fint(x.get("steps")),
              frate(x.get("decode_tok_s"))] for x in tracks],
            {1, 2, 3, 4},
        ))

    layers = [x for x in _get(r, "layers") or [] if isinstance(x, Mapping)]
    classes: list[str] = []
    for x in layers:
        for c in (x.get("by_op_class") or {}):
            if c not in classes:
                classes.append(c)
    phase = layers[0].get("phase", "decode") if layers else "decode"
    ls = Section(
        f"Per-layer time (ms per {phase} step)",
        ["Layer", "ms/step", "%", *classes, "Outlier"],
        [[str(x.get("layer")), fms(x.get("ms_per_step")), fpct(x.get("pct")),
          *[fms((x.get("by_op_class") or {}).get(c)) for c in classes], "OUTLIER" if x.get("outlier") else ""]
         for x in layers],
        set(range(1, 3 + len(classes))),
    )
    if not layers:
        ls.lines.append("no per-layer kernel events in this view")
    out.append(ls)

    a = _get(r, "attention") or {}
    at = Section("Attention growth (attention ms per decode step vs context)")
    if num(a.get("slope_us_per_1k")) is not None:
        at.lines.append(
            f"attention = {fms(a.get('intercept_ms'))} ms + {frate(a.get('slope_us_per_1k'))} us"
            " per 1k tokens "
            f"(R2 {fms(a.get('r2'))}, {fint(a.get('steps'))} decode steps, context "
            f"{fint(a.get('ctx_min'))}-{fint(a.get('ctx_max'))})")
        p = a.get("projection")
        if isinstance(p, Mapping):
            at.lines.append(f"at {fint(p.get('ctx'))} tokens attention = {fms(p.get('attention_ms'))} ms = "
                            f"{fpct(p.get('pct_of_step'))} of a {fms(p.get('step_ms'))} ms step")
        else:
            at.lines.append("projection: the source's maximum context is unknown")
        q = a.get("quadratic")
        sup = "YES - growth is superlinear" if a.get("superlinear") else "no"
        if isinstance(q, Mapping):
            sup += (f" (quadratic term {frate(q.get('c_us_per_1k2'))} us per (1k tokens)^2,"
                    f" t = {fms(q.get('t_stat'))})")
        at.lines.append(f"superlinear: {sup}")
    else:
        at.lines.append("not enough decode steps with distinct contexts to fit"
                        f" ({fint(a.get('steps'))} steps)")
    out.append(at)

    att = _get(r, "attribution") or {}
    rows = []
    for ph in ("prefill", "decode"):
        x = att.get(ph) if isinstance(att, Mapping) else None
        if isinstance(x, Mapping) and x.get("steps"):
            rows.append([ph, fint(x.get("steps")), fms(x.get("wall_ms")), fms(x.get("kernel_ms")),
                         fpct(x.get("kernel_pct")), fms(x.get("host_ms")), fpct(x.get("host_pct")),
                         fms(x.get("wall_ms_per_step")), fms(x.get("kernel_ms_per_step")),
                         fms(x.get("host_ms_per_step")),
                         f"yes ({fms(x.get('overlap_ms'))} ms)" if x.get("clamped") else ""])
    ats = Section("Wall-time attribution (step wall = timed kernels + host/other, e.g. python scheduling)",
                   ["Phase", "Steps", "Wall (ms)", "Kernels (ms)", "Kernels %", "Host/other (ms)", "Host %",
                    "Wall/step", "Kernels/step", "Host/step", "Overlap clamped"], rows, set(range(1, 10)))
    if not rows:
        ats.lines.append("no step records in this view")
    out.append(ats)

    gpu_rows = []
    for ph in ("prefill", "decode"):
        g = _get(att.get(ph) if isinstance(att, Mapping) else None, "gpu")
        if isinstance(g, Mapping):
            gpu_rows.append([ph, fint(g.get("sampled_steps")), fms(g.get("wall_ms_per_step")),
                             fms(g.get("busy_ms_per_step")), fpct(g.get("busy_pct")),
                             fms(g.get("idle_ms_per_step")), fpct(g.get("idle_pct")),
                             fms(g.get("host_ms_per_step")), fpct(g.get("host_pct")),
                             f"LAUNCH-BOUND ({fint(g.get('launch_bound_steps'))} steps)"
                             if g.get("launch_bound") else fint(g.get("launch_bound_steps"))])
    if gpu_rows:  # only a CUDA run sampled under CUPTI has these
        gs = Section("GPU busy vs idle (steps sampled under CUPTI; the kernel times above are event spans)",
                     ["Phase", "Sampled", "Wall/step", "Busy/step", "Busy %", "Idle/step", "Idle %",
                      "Host/step", "Host %", "Launch-bound"], gpu_rows, set(range(1, 10)))
        gs.lines.append("busy = union of kernel/copy intervals; idle = GPU waiting for launches inside its"
                        " span; host = wall - span")
        out.append(gs)

    tr = _get(r, "trend") or {}
    trs = Section(f"Per-token trend (decode steps of the {tr.get('generation') or 'current'} generation)")
    if tr.get("steps"):
        trs.headers = ["Steps", "First", "Middle", "Last", "Min", "Max", "Mean", "Drift", "Slope (us/token)"]
        trs.rows = [[fint(tr.get("steps")), fms(tr.get("first_ms")), fms(tr.get("middle_ms")),
                     fms(tr.get("last_ms")), fms(tr.get("min_ms")), fms(tr.get("max_ms")),
                     fms(tr.get("mean_ms")), fpct(tr.get("drift_pct")), frate(tr.get("slope_us_per_token"))]]
        trs.right = set(range(9))
        trs.lines.append("step times in ms; drift = (last - first) / first")
    else:
        trs.lines.append("no decode steps yet")
    out.append(trs)
    out.extend(npu_sections(_get(r, "npu")))

    dr = _get(r, "dropped") or {}
    col = _get(r, "collectors") or {}
    names = sorted(set(dr.get("by_collector") or {}) | set(col))
    by = dr.get("by_collector") or {}
    ds = Section(f"Dropped events: {fint(dr.get('total'))}; collectors",
                  ["Collector", "Dropped", "CPU cost (s)", "CPU % (last 5 s)", "Behind"],
                  [[n, fint(by.get(n, 0)), fms(_get(col.get(n), "cost_s")), fpct(_get(col.get(n), "cpu_pct")),
                    "BEHIND" if _get(col.get(n), "behind") else ""] for n in names], {1, 2, 3})
    out.append(ds)
    return head, out


def npu_sections(n: Any) -> list[Section]:
    """The `npu` section (XRT calls on an NPU): per kernel BO write / NPU run / BO read and MB moved, the
    wall-time attribution NPU XRT / CPU host / python scheduling, the CPU host ops; [] without XRT calls."""
    if not isinstance(n, Mapping):
        return []
    rows = [k for k in n.get("kernels") or [] if isinstance(k, Mapping)]
    tot = _get(n, "totals") or {}
    ks = Section("NPU XRT calls (per kernel: BO write / NPU run / BO read, as mlir-air's fine-grained table)",
                 ["Kernel", "Calls", "BO write (ms)", "NPU run (ms)", "BO read (ms)", "Total (ms)",
                  "Avg (ms)", "Written (MB)", "Read (MB)"],
                 [[str(k.get("name")), fint(k.get("count")), fms(k.get("bo_write_ms")),
                   fms(k.get("npu_run_ms")), fms(k.get("bo_read_ms")), fms(k.get("total_ms")),
                   fms(k.get("mean_ms")), fms(k.get("mb_written")), fms(k.get("mb_read"))] for k in rows],
                 set(range(1, 9)))
    if rows:
        ks.rows.append(["TOTAL", fint(tot.get("count")), fms(tot.get("bo_write_ms")),
                        fms(tot.get("npu_run_ms")), fms(tot.get("bo_read_ms")), fms(tot.get("total_ms")), "",
                        fms(tot.get("mb_written")), fms(tot.get("mb_read"))])
        ks.rows.append(["%", "", fpct(tot.get("bo_write_pct")), fpct(tot.get("npu_run_pct")),
                        fpct(tot.get("bo_read_pct")), "", "", "", ""])
    else:
        ks.lines.append("no XRT invocation inside a step")
    st = _get(n, "setup") or {}
    if st.get("count"):
        ks.lines.append(f"set-up outside every step (weight preloads, ...): {fint(st.get('count'))} XRT "
                        f"calls, {fms(st.get('total_ms'))} ms, {fms(st.get('mb_written'))} MB written")
    ld = _get(n, "load") or {}
    if ld.get("calls"):
        ks.lines.append(f"load (hw_context, register_xclbin, kernel, ...): {fint(ld.get('calls'))} calls, "
                        f"{fms(ld.get('ms'))} ms")
    ks.lines.extend(f"note: {x}" for x in n.get("notes") or [])
    out = [ks]
    att = _get(n, "attribution") or {}
    arows = []
    for ph in ("prefill", "decode"):
        x = att.get(ph) if isinstance(att, Mapping) else None
        if isinstance(x, Mapping) and x.get("timed_steps"):
            arows.append([ph, fint(x.get("steps")), fms(x.get("wall_ms_per_step")),
                          f"{fms(x.get('npu_ms_per_step'))} ({fpct(x.get('npu_pct'))})",
                          f"{fms(x.get('host_ms_per_step'))} ({fpct(x.get('host_pct'))})",
                          f"{fms(x.get('python_ms_per_step'))} ({fpct(x.get('python_pct'))})"])
    if arows:
        at = Section("NPU wall-time attribution (ms per step)",
                     ["Phase", "Steps", "Wall", "NPU XRT", "CPU host", "Python scheduling"], arows,
                     {1, 2, 3, 4, 5})
        at.lines.append("wall = NPU XRT calls + CPU host ops + python scheduling (the remainder)")
        out.append(at)
    hosts = [h for h in n.get("host_ops") or [] if isinstance(h, Mapping)]
    if hosts:
        out.append(Section("CPU host ops", ["Op", "Class", "Calls", "Total (ms)", "Avg (ms)"],
                           [[str(h.get("name")), str(h.get("op_class")), fint(h.get("count")),
                             fms(h.get("total_ms")), fms(h.get("mean_ms"))] for h in hosts], {2, 3, 4}))
    return out


def roofline_section(r: Mapping[str, Any], kernels: list[Any]) -> Section | None:
    """The roofline columns of the rows that have them (matmuls with a recorded shape), or None."""
    rows = [k for k in kernels if isinstance(k, Mapping) and k.get("flops") is not None]
    if not rows:
        return None
    pk = _get(r, "device_peak")
    title = "Roofline (rows with a matmul shape; bytes and flops per call, rates from the mean time)"
    if isinstance(pk, Mapping):
        title += (f"; device peak {frate(pk.get('bw_gbps'))} GB/s, {frate(pk.get('flops_gflops'))} GFLOP/s "
                  f"{pk.get('dtype') or ''} ({pk.get('source') or '?'})")
    sec = Section(title, ["Name", "Bytes", "FLOPs", "GB/s", "GFLOP/s", "% peak BW", "% peak FLOPS", "Bound"],
                  [[str(k.get("name")), fmt_bytes(k.get("bytes")), fint(k.get("flops")), frate(k.get("gbps")),
                    frate(k.get("gflops")), fpct(k.get("pct_peak_bw")), fpct(k.get("pct_peak_flops")),
                    str(k.get("bound") or DASH)] for k in rows], set(range(1, 7)))
    if not isinstance(pk, Mapping):
        sec.lines.append("no device peak known: pass --peak BW,FLOPS (GB/s, GFLOP/s) for the % and bound "
                         "columns")
    return sec


def _fit_names(s: Section, width: int, wide: bool) -> tuple[Section, int]:
    """A kernel table (a "Name" column) with its names cut to the room `width` leaves them (at least
    NAME_MIN), or whole when `wide`; and the line width the table then needs."""
    ni = s.headers.index("Name")
    cols = list(zip(s.headers, *s.rows, strict=True))
    others = sum(max(cell_len(c) for c in col) for i, col in enumerate(cols) if i != ni)
    gaps = COLUMN_GAP * (len(s.headers) - 1)
    longest = max(cell_len(c) for c in cols[ni])
    name_w = longest if wide else min(longest, max(NAME_MIN, width - others - gaps))
    if name_w < longest:
        names = shorten_names([row[ni] for row in s.rows], name_w)
        rows = [[*row[:ni], n, *row[ni + 1 :]] for row, n in zip(s.rows, names, strict=True)]
        s = Section(s.title, s.headers, rows, s.right, s.lines)
    return s, others + gaps + name_w


def _text(head: list[str], secs: list[Section], width: int, wide: bool = False) -> str:
    fitted = []
    line_w = width
    for s in secs:
        if s.headers and "Name" in s.headers and s.rows:
            s, need = _fit_names(s, width, wide)
            line_w = max(line_w, need)
        fitted.append(s)
    console = Console(file=io.StringIO(), width=line_w, record=True, color_system=None, force_terminal=False,
                      soft_wrap=False)
    for line in head:
        console.print(line, highlight=False, markup=False)
    for s in fitted:
        console.print()
        if s.headers:
            tab = Table(title=s.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                        show_edge=False)
            # kernel names were cut to their column above; the first column of other tables (labels)
            # keeps its width up to 60 and folds what is longer rather than dropping it
            ni = s.headers.index("Name") if "Name" in s.headers else 0
            fold = "Name" not in s.headers
            name_w = max([cell_len(s.headers[ni])] + [cell_len(row[ni]) for row in s.rows])
            for i, h in enumerate(s.headers):
                tab.add_column(h, justify="right" if i in s.right else "left",
                               overflow="ellipsis" if i == ni and not fold else "fold",
                               min_width=(min(60, name_w) if fold else name_w) if i == ni else None,
                               no_wrap=i != ni or not fold)
            for row in s.rows:
                tab.add_row(*(Text(c) for c in row))  # cells are text, never rich markup
            console.print(tab)
        else:
            console.print(s.title, highlight=False, markup=False)
        for line in s.lines:
            console.print("  " + line, highlight=False, markup=False)
    return "\n".join(x.rstrip() for x in console.export_text().splitlines()) + "\n"


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _markdown(head: list[str], secs: list[Section], notes: list[str]) -> str:
    out = ["# " + head[0], "", *head[1:]]
    if notes:
        out += ["", *(f"- {_md_cell(n)}" for n in notes)]
    for s in secs:
        out += ["", f"## {s.title}", ""]
        if s.headers:
            out.append("| " + " | ".join(_md_cell(h) for h in s.headers) + " |")
            out.append("|" + "|".join("---:" if i in s.right else "---" for i in range(len(s.headers))) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
            if s.lines:
                out.append("")
        out += s.lines
    return "\n".join(out) + "\n"


def render(report: Mapping[str, Any], fmt: str = "text", *, width: int = 160,
           limit: int | None = None, kernel_section: Section | None = None, wide: bool = False) -> str:
    """The report as text (rich tables), json (the dict with `warnings` and `skipped` always present) or
    markdown. `limit` caps kernel rows; `wide`: whole kernel names in text (else cut in the middle to
    their column).

    `kernel_section` replaces the top-kernels table (report_nsys's nsys column layout).
    """
    if fmt not in FORMATS:
        raise LlmtopError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not isinstance(report, Mapping):
        raise LlmtopError("a report must be a JSON object")
    if fmt == "json":
        return json.dumps(with_notes(report), indent=2, allow_nan=False) + "\n"
    head, secs = sections(report, limit)
    if kernel_section is not None:
        secs = [kernel_section if x.title.startswith(KERNEL_SECTION) else x for x in secs]
    return render_sections(head, secs, fmt, notes=note_lines(report), width=width, wide=wide)


def render_sections(head: list[str], secs: list[Section], fmt: str, *, notes: list[str] | None = None,
                    width: int = 160, wide: bool = False) -> str:
    """Title lines, notes and tables as text or markdown (the layout every headless report shares)."""
    # text and markdown go to a terminal: names from a trace or a server never carry raw control codes
    head = printable(head)
    notes = printable(notes or [])
    secs = [Section(printable(s.title), printable(s.headers), printable(s.rows), s.right, printable(s.lines))
            for s in secs]
    if fmt == "markdown":
        return _markdown(head, secs, notes)
    return _text(head + notes, secs, width, wide)


__all__ = ["FORMATS", "KERNEL_SECTION", "Section", "note_lines", "num", "render", "sections",
           "skipped_counts", "with_notes"]
