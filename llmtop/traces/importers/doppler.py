"""doppler (WebGPU in the browser) console logs -> EventBatches.

doppler prints a "[Profile] GPU Profile Report" table after the prefill and after every decode batch
("Batch decode (N=4)"): per-label GPU time sums (0.01 ms resolution). Each report becomes one step whose
kernels are its table rows (one row per label; the log has no per-dispatch times, so rows are laid
end to end from the step start). The step's wall span runs from the previous report's log timestamp to
this one's (the prefill's from the `[Perf] Prefill:` time when given). Context grows by N tokens per
decode batch, so attention growth over decode shows up per step.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, NS_LIMIT, PREFILL, EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import StepFacts, layer_of
from llmtop.traces.registry import ImportResult, TextLines, TraceFormat, head_text, register

_TS = re.compile(r"\[(\d+(?:\.\d+)?)ms\]")
_HEAD = re.compile(r"\[Profile\]\s+(Prefill|Batch decode|Decode)\b[^:]*?(?:\(N=(\d+)\))?:")
_ROW = re.compile(r"^(\S+)\s+(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)\s*$")
_TOTAL = re.compile(r"^TOTAL\s+(\d+(?:\.\d+)?)")
_RULE = re.compile(r"^[─\-=_\s]+$")  # the table's horizontal rule
_HEADER = re.compile(r"^Kernel\s+Time")  # its column header
_REASONS = {
    "row_outside_report": "table rows outside any profile report (a damaged '[Profile]' line?)",
    "time_out_of_range": "profile rows (or reports) with times beyond the int64 ns range",
    "negative_duration": "profile rows of reports logged before the previous report",
    "malformed_record": "lines inside profile reports that are not table rows",
}


def _ms_to_ns(s: str) -> int:
    """'12.345' ms -> ns, exactly; ValueError beyond the int64 ns columns (a corrupt digit run)."""
    whole, _, frac = s.partition(".")
    if len(whole) > 16:
        raise ValueError(f"time out of range: {s[:40]}")
    r = int(whole) * 1_000_000 + int((frac + "000000")[:6])
    if r >= NS_LIMIT:
        raise ValueError(f"time out of range: {s[:40]}")
    return r


def import_doppler(
    path: Path, names: NameTable
) -> tuple[SourceInfo, list[EventBatch], Counter[str], list[str]]:
    warnings: list[str] = []
    local: list[str] = []
    lids: dict[str, int] = {}
    k_name: list[int] = []
    k_dur: list[int] = []
    k_step: list[int] = []
    reports: list[dict] = []  # phase, n, t_ns, rows, total
    cur: dict | None = None
    pending_head: tuple[int, int, int] | None = None
    meta: dict[str, str] = {}
    skipped: Counter[str] = Counter()
    lines = TextLines(path)
    for line in lines:
        line = line.rstrip("\n")
        m = _TS.search(line)
        if "[Profile]" in line and m:
            h = _HEAD.search(line)
            try:
                t_ns = _ms_to_ns(m.group(1))
            except ValueError:
                t_ns = -1  # its report's rows are counted and left out below
            if h:
                phase = PREFILL if h.group(1) == "Prefill" else DECODE
                pending_head = (phase, int(h.group(2) or 1), t_ns)
            elif "GPU Profile Report" in line:
                phase, n, t0 = pending_head or (DECODE, 1, t_ns)
                cur = {"phase": phase, "n": n, "t_ns": t0 if t0 >= 0 else t_ns, "rows": [], "total": None}
                reports.append(cur)
                pending_head = None
            continue
        if cur is not None and cur["total"] is None:
            tm = _TOTAL.match(line)
            if tm:
                try:
                    cur["total"] = _ms_to_ns(tm.group(1))
                except ValueError:
                    cur["total"] = -1  # unknown: no check against the rows
                continue
            r = _ROW.match(line)
            if r and r.group(1) != "Kernel":
                try:
                    cur["rows"].append((r.group(1), _ms_to_ns(r.group(2))))
                except ValueError:
                    skipped["time_out_of_range"] += 1
            elif line.startswith("[") and "[Profile]" not in line:
                pass  # an interleaved log line
            elif line.strip() and not _RULE.match(line) and not _HEADER.match(line):
                skipped["malformed_record"] += 1
            continue
        if _ROW.match(line) and not line.startswith("TOTAL"):
            skipped["row_outside_report"] += 1  # a table row whose report header is damaged or missing
            continue
        if "[Perf]" in line:
            pm = re.search(r"Prefill:\s*(\d+(?:\.\d+)?)ms", line)
            if pm:
                try:
                    meta["prefill_ns"] = str(_ms_to_ns(pm.group(1)))
                except ValueError:
                    warnings.append(f"prefill time {pm.group(1)[:40]} ms is out of range: ignored")
            dm = re.search(r"Decode:\s*\d+(?:\.\d+)?ms \((\d{1,9}) tokens", line)
            if dm:
                meta["summary_decode_tokens"] = dm.group(1)
                meta["summary_after"] = str(len(reports))
        mm = re.search(r"prefillTokens=(\d+)", line)
        if mm:
            meta["prefill_tokens"] = mm.group(1)
        mm = re.search(r"model=(\S+)", line) or re.search(r"\[Loader\] Loading: (\S+)", line)
        if mm and "model" not in meta:
            meta["model"] = mm.group(1)
        mm = re.search(r"\[GPU\] (.+)$", line)
        if mm:
            meta["device"] = mm.group(1).strip()
        mm = re.search(r"(\d{1,5})L/(\d+)H", line)
        if mm:
            meta["n_layers"] = mm.group(1)
    if lines.error:
        warnings.append(f"{path.name}: {lines.error}")
    if not reports:
        raise LlmtopError(f"{path}: no '[Profile] GPU Profile Report' blocks: not a doppler profile log"
                          + (f" ({lines.error})" if lines.error else ""))
    if cur is not None and cur["total"] is None:
        warnings.append("log ends inside a profile report (truncated?): its rows were kept")
    elif int(meta.get("summary_after", "-1")) < len(reports):
        # doppler closes a run with "[Perf] TTFT: ... | Decode: Nms (T tokens ...)" after its last report
        warnings.append("log ends without doppler's closing '[Perf] ... Decode:' summary after its last "
                        "profile report: cut short? (reports after the cut are missing)")
    prompt = int(meta.get("prefill_tokens", "0")) if len(meta.get("prefill_tokens", "")) <= 9 else 0
    steps: list[StepRange] = []
    starts: list[int] = []
    prev_t: int | None = None
    generated = 0
    for i, rep in enumerate(reports):
        end = rep["t_ns"]
        gpu_total = sum(d for _, d in rep["rows"])
        if end < 0 or (prev_t is not None and end < prev_t):
            # no usable log time (out of range), or one before the previous report's: its step would end
            # before it starts. Its rows are left out and counted; the next report starts where it would.
            skipped["time_out_of_range" if end < 0 else "negative_duration"] += len(rep["rows"]) or 1
            continue
        if prev_t is None:
            span = int(meta.get("prefill_ns", "0")) if rep["phase"] == PREFILL else 0
            span = max(span, gpu_total)
            start = end - span
        else:
            start = prev_t
        prev_t = end
        if rep["phase"] == PREFILL:
            tokens, generated = (prompt or 0), 1
            ctx = prompt
        else:
            tokens = rep["n"]
            generated += rep["n"]
            ctx = prompt + generated if prompt else 0
        steps.append(
            StepRange(
                start,
                end,
                0,
                StepFacts("doppler", index=i, phase=rep["phase"], tokens=tokens, batch=1, ctx=ctx),
            )
        )
        t = start
        for nm, d in rep["rows"]:
            j = lids.get(nm)
            if j is None:
                j = lids[nm] = len(local)
                local.append(nm)
            k_name.append(j)
            k_dur.append(d)
            k_step.append(i)
            starts.append(t)
            t += d
        if rep["total"] is not None and rep["total"] >= 0 and (
            abs(rep["total"] - gpu_total) > 10_000 * max(1, len(rep["rows"]))
        ):
            warnings.append(
                f"report {i}: rows sum to {gpu_total / 1e6:.2f} ms but TOTAL says {rep['total'] / 1e6:.2f} ms"
            )
    n = len(k_name)
    st = np.array(starts, dtype=np.int64)
    kc = KernelColumns(
        local,
        np.array(k_name, dtype=np.int64),
        st,
        np.array(k_dur, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        st.copy(),
        np.zeros(n, dtype=np.int64),
        np.array([layer_of(local[j]) for j in k_name], dtype=np.int64),
    )
    for reason, what in _REASONS.items():
        if skipped.get(reason):
            warnings.append(f"left out {skipped[reason]} {what} ({reason})")
    expect = int(meta.get("summary_decode_tokens", "-1"))
    decoded = sum(st.facts.tokens or 0 for st in steps if st.facts.phase == DECODE)
    if expect >= 0 and decoded != expect:
        warnings.append(f"the profile reports cover {decoded} decode tokens, the closing summary says "
                        f"{expect}: reports are missing or damaged")
    batches, info = build_batches(kc, steps, names)
    skipped.update(info["skipped"])
    warnings.extend(info["warnings"])
    warnings.append(
        "doppler reports per-label sums per step, not single dispatches: a row's start is "
        "synthetic (rows laid end to end) and its duration is the label's total in that step"
    )
    source = SourceInfo(
        kind="import",
        backend="doppler",
        device=meta.get("device", "WebGPU"),
        model=meta.get("model", path.name),
        timing="WebGPU timestamp queries (per-label sums)",
        n_layers=int(meta.get("n_layers", "0")),
        extra={
            "ranks": [0],
            "streams": [0],
            "skipped": sum(skipped.values()),
            "warnings": warnings,
            "reports": len(reports),
        },
    )
    return source, batches, skipped, warnings


# -- registration ----------------------------------------------------------------------------
def sniff(head: bytes) -> bool:
    """doppler's profile and perf lines (a text log: JSON was claimed by the JSON formats before)."""
    text = head_text(head)
    return "GPU Profile Report" in text or "[Profile]" in text or "][Perf]" in text or "[browser:" in text


def read(path: Path, names: NameTable) -> ImportResult:
    source, batches, skipped, warnings = import_doppler(path, names)
    return ImportResult(source, batches, sum(skipped.values()), warnings, names, skipped_by=dict(skipped))


FORMAT = register(TraceFormat("doppler", "doppler log", sniff, read, priority=30))
