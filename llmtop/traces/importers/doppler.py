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
from pathlib import Path

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import DECODE, PREFILL, EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import StepFacts, layer_of
from llmtop.traces.registry import ImportResult, TraceFormat, head_text, register

_TS = re.compile(r"\[(\d+(?:\.\d+)?)ms\]")
_HEAD = re.compile(r"\[Profile\]\s+(Prefill|Batch decode|Decode)\b[^:]*?(?:\(N=(\d+)\))?:")
_ROW = re.compile(r"^(\S+)\s+(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)\s*$")
_TOTAL = re.compile(r"^TOTAL\s+(\d+(?:\.\d+)?)")


def _ms_to_ns(s: str) -> int:
    whole, _, frac = s.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def import_doppler(path: Path, names: NameTable) -> tuple[SourceInfo, list[EventBatch], int, list[str]]:
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
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = _TS.search(line)
            if "[Profile]" in line and m:
                h = _HEAD.search(line)
                t_ns = _ms_to_ns(m.group(1))
                if h:
                    phase = PREFILL if h.group(1) == "Prefill" else DECODE
                    pending_head = (phase, int(h.group(2) or 1), t_ns)
                elif "GPU Profile Report" in line:
                    phase, n, t0 = pending_head or (DECODE, 1, t_ns)
                    cur = {"phase": phase, "n": n, "t_ns": t0, "rows": [], "total": None}
                    reports.append(cur)
                    pending_head = None
                continue
            if cur is not None and cur["total"] is None:
                tm = _TOTAL.match(line)
                if tm:
                    cur["total"] = _ms_to_ns(tm.group(1))
                    continue
                r = _ROW.match(line)
                if r and r.group(1) != "Kernel":
                    cur["rows"].append((r.group(1), _ms_to_ns(r.group(2))))
                elif line.startswith("[") and "[Profile]" not in line:
                    pass  # an interleaved log line
                elif line.strip() and not line.startswith(("─", "-", "Kernel")):
                    skipped += 1
                continue
            if "[Perf]" in line:
                pm = re.search(r"Prefill:\s*(\d+(?:\.\d+)?)ms", line)
                if pm:
                    meta["prefill_ns"] = str(_ms_to_ns(pm.group(1)))
            mm = re.search(r"prefillTokens=(\d+)", line)
            if mm:
                meta["prefill_tokens"] = mm.group(1)
            mm = re.search(r"model=(\S+)", line) or re.search(r"\[Loader\] Loading: (\S+)", line)
            if mm and "model" not in meta:
                meta["model"] = mm.group(1)
            mm = re.search(r"\[GPU\] (.+)$", line)
            if mm:
                meta["device"] = mm.group(1).strip()
            mm = re.search(r"(\d+)L/(\d+)H", line)
            if mm:
                meta["n_layers"] = mm.group(1)
    if not reports:
        raise LlmtopError(f"{path}: no '[Profile] GPU Profile Report' blocks: not a doppler profile log")
    if cur is not None and cur["total"] is None:
        warnings.append("log ends inside a profile report (truncated?): its rows were kept")
    prompt = int(meta.get("prefill_tokens", "0"))
    steps: list[StepRange] = []
    starts: list[int] = []
    prev_t: int | None = None
    generated = 0
    for i, rep in enumerate(reports):
        end = rep["t_ns"]
        gpu_total = sum(d for _, d in rep["rows"])
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
        if rep["total"] is not None and abs(rep["total"] - gpu_total) > 10_000 * max(1, len(rep["rows"])):
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
    batches, _ = build_batches(kc, steps, names)
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
            "skipped": skipped,
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
    return ImportResult(source, batches, skipped, warnings, names)


FORMAT = register(TraceFormat("doppler", "doppler log", sniff, read, priority=30))
