"""Nsight Systems SQLite export (`nsys export --type sqlite`) -> EventBatches.

Opened read-only. Columns are looked up with PRAGMA table_info, so old (text in NVTX_EVENTS.text, names
in StringIds via shortName/demangledName) and new exports (NVTX textId, `name` columns, missing tables)
both work. Kernels, memcpys and memsets become rows; track = (device, stream). Kernel names are the
demangled names, as `nsys stats --report cuda_gpu_kern_sum` prints them, so template instances stay
apart (`kernel_names="short"`: shortName, which merges them). The runtime call with the same
correlationId gives the host thread and time of the launch, which place the kernel in NVTX ranges:
ranges named like steps (mapping.parse_step) are steps, else the outermost ranges that launch kernels;
ranges with layer tokens give layers, then layer tokens in kernel names. The innermost range around the
launch classes the kernel (mapping.op_class_for): a range named like a CPU op (`aten::addmm, seq = 3`,
from torch's emit_nvtx) is its launcher, any other its annotation; the demangled name does the rest.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, NS_LIMIT, EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import (
    Intervals,
    StepFacts,
    innermost,
    layer_of,
    merge_facts,
    op_class_column,
    parse_step,
)
from llmtop.traces.registry import ImportResult, TraceFormat, register

NVTX_RANGE_TYPES = (59, 60, 70, 71)  # push/pop, start/end (and their payload variants)
# kernel name columns by --names style, best first (old exports lack some)
NAME_COLUMNS = {"demangled": ("demangledName", "shortName", "mangledName"),
                "short": ("shortName", "demangledName", "mangledName")}
_CPU_OP = re.compile(r"^([A-Za-z_][\w.]*::[\w.]+)(?:,|$)")  # emit_nvtx: "aten::addmm, seq = 12, sizes = ..."


_ROW_REASONS = {
    "missing_time": "kernels/copies without start or end",
    "malformed_record": "kernels/copies with a field of the wrong type",
    "negative_duration": "kernels/copies that end before they start",
    "time_out_of_range": "kernels/copies with times beyond the int64 ns range",
    "malformed_launch": "runtime launch records with a field of the wrong type or an impossible time",
    "malformed_range": "NVTX ranges with a field of the wrong type, an impossible time or an end before "
                       "their start",
}


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def _strings(con: sqlite3.Connection) -> tuple[dict[int, str], int]:
    """StringIds as {id: text}, and how many values are not text (a BLOB or a number where nsys writes a
    string: they become `<string N: not text>`, so a name is never bytes)."""
    out: dict[int, str] = {}
    odd = 0
    for i, v in con.execute("SELECT id, value FROM StringIds"):
        if type(i) is not int:
            continue
        if type(v) is not str:
            odd += 1
            v = f"<string {i}: not text>"
        out[i] = v
    return out, odd


def _cols(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def import_nsys(
    path: Path, names: NameTable, kernel_names: str = "demangled"
) -> tuple[SourceInfo, list[EventBatch], Counter[str], list[str]]:
    """(source, batches, skipped records by reason, warnings)."""
    uri = "file:" + str(path.resolve()).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        con.text_factory = _text  # damaged UTF-8 in a string is replaced, not an error for the whole file
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise LlmtopError(f"{path}: unreadable SQLite file ({e})") from None
    try:
        return _read(con, tables, path, names, NAME_COLUMNS.get(kernel_names, NAME_COLUMNS["demangled"]))
    finally:
        con.close()


def _read(
    con: sqlite3.Connection, tables: set[str], path: Path, names: NameTable, name_cols: tuple[str, ...]
) -> tuple[SourceInfo, list[EventBatch], Counter[str], list[str]]:
    kernel_tables = [
        t
        for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET")
        if t in tables
    ]
    if "StringIds" not in tables or not kernel_tables:
        hint = "no StringIds table" if "StringIds" not in tables else "no CUPTI_ACTIVITY_KIND_* tables"
        raise LlmtopError(f"{path}: SQLite file is not an Nsight Systems export ({hint})")
    warnings: list[str] = []
    strings, odd = _strings(con)
    if odd:
        warnings.append(f"StringIds: {odd} values are not text (a BLOB or a number where nsys writes a "
                        "string): names that use them show as <string N: not text>")
    local_names: list[str] = []
    local_ids: dict[str, int] = {}

    def lid(s: str) -> int:
        i = local_ids.get(s)
        if i is None:
            i = local_ids[s] = len(local_names)
            local_names.append(s)
        return i

    keys = ("name", "cname", "start", "dur", "dev", "stream", "corr")
    cols_k: dict[str, list[np.ndarray]] = {c: [] for c in keys}
    skipped: Counter[str] = Counter()

    odd_names = Counter[str]()

    def kernel_name(v: object) -> str:
        if type(v) is int:
            return strings.get(v, f"kernel#{v}")
        if type(v) is str:
            return v
        odd_names["x"] += 1
        return "<kernel name: not text>"

    for t in kernel_tables:
        c = _cols(con, t)
        need = {"start", "end", "deviceId", "streamId", "correlationId"}
        if not need <= c:
            n_rows = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            warnings.append(f"{t} lacks {sorted(need - c)}: its {n_rows} records were skipped")
            skipped["table_without_times"] += n_rows
            continue
        if t.endswith("KERNEL"):
            have = [n for n in name_cols if n in c]
            if not have:
                n_rows = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                warnings.append(f"{t} has no name column: its {n_rows} kernels were skipped")
                skipped["kernel_without_name"] += n_rows
                continue
            if have[0] != name_cols[0]:
                warnings.append(f"{t} has no {name_cols[0]} column: kernel names are its {have[0]}")
            # shown name; the class comes from the demangled name, which says the most
            name_expr = have[0]
            class_expr = next((n for n in NAME_COLUMNS["demangled"] if n in c), have[0])
        elif t.endswith("MEMCPY"):
            name_expr = class_expr = "copyKind" if "copyKind" in c else "NULL"
        else:
            name_expr = class_expr = "NULL"
        q = (
            f"SELECT {name_expr}, start, end, deviceId, streamId, correlationId, {class_expr} FROM {t} "
            "WHERE start IS NOT NULL AND end IS NOT NULL"
        )
        n_null = con.execute(f"SELECT count(*) FROM {t} WHERE start IS NULL OR end IS NULL").fetchone()[0]
        if n_null:
            skipped["missing_time"] += n_null
        cur = con.execute(q)
        copy_kinds = {1: "Memcpy HtoD", 2: "Memcpy DtoH", 8: "Memcpy DtoD", 10: "Memcpy PtoP"}
        while True:
            rows = cur.fetchmany(65536)
            if not rows:
                break
            ok_rows = []
            for r in rows:
                if not all(type(v) is int for v in r[1:5]):
                    skipped["malformed_record"] += 1
                    continue
                if not (-NS_LIMIT < r[1] < NS_LIMIT and -NS_LIMIT < r[2] < NS_LIMIT):
                    skipped["time_out_of_range"] += 1  # checked before the int64 columns are built
                    continue
                if r[2] < r[1]:
                    skipped["negative_duration"] += 1
                    continue
                if t.endswith("KERNEL"):
                    nm = kernel_name(r[0])
                    cn = nm if r[6] == r[0] else kernel_name(r[6])
                elif t.endswith("MEMCPY"):
                    nm = cn = copy_kinds.get(r[0], "Memcpy") if isinstance(r[0], int) else "Memcpy"
                else:
                    nm = cn = "Memset"
                ok_rows.append(
                    (lid(nm), lid(cn), r[1], r[2] - r[1], r[3], r[4], r[5] if type(r[5]) is int else -1)
                )
            if ok_rows:
                a = np.array(ok_rows, dtype=np.int64)
                for j, key in enumerate(keys):
                    cols_k[key].append(a[:, j])
    if odd_names:
        warnings.append(f"{odd_names['x']} kernel names are neither text nor a StringIds id: they show as "
                        "<kernel name: not text>")
    if not cols_k["start"]:
        if sum(skipped.values()):
            why = ", ".join(f"{r} {n}" for r, n in sorted(skipped.items()))
            raise LlmtopError(f"{path}: none of its {sum(skipped.values())} kernel/memcpy/memset records can "
                              f"be read ({why})")
        raise LlmtopError(f"{path}: Nsight Systems export without kernel/memcpy/memset records")
    k = {key: np.concatenate(v) for key, v in cols_k.items()}

    # launches
    launch = np.full(len(k["start"]), -1, dtype=np.int64)
    host = np.full(len(k["start"]), -1, dtype=np.int64)
    if "CUPTI_ACTIVITY_KIND_RUNTIME" in tables and {"start", "globalTid", "correlationId"} <= _cols(
        con, "CUPTI_ACTIVITY_KIND_RUNTIME"
    ):
        # integers only (a damaged row of another type is left out and counted), within the ns range
        ok = ("typeof(correlationId) = 'integer' AND typeof(start) = 'integer' AND typeof(globalTid) = "
              f"'integer' AND start > {-NS_LIMIT} AND start < {NS_LIMIT}")
        bad_rt = con.execute(
            "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_RUNTIME WHERE correlationId IS NOT NULL AND start IS "
            f"NOT NULL AND globalTid IS NOT NULL AND NOT ({ok})"
        ).fetchone()[0]
        if bad_rt:
            skipped["malformed_launch"] += bad_rt
        rt = np.array(
            con.execute(f"SELECT correlationId, start, globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME WHERE {ok}")
            .fetchall(),
            dtype=np.int64,
        ).reshape(-1, 3)
        if len(rt):
            o = np.argsort(rt[:, 0], kind="stable")
            rc = rt[o, 0]
            pos = np.minimum(np.searchsorted(rc, k["corr"]), len(rc) - 1)
            hit = rc[pos] == k["corr"]
            launch[hit] = rt[o[pos[hit]], 1]
            host[hit] = rt[o[pos[hit]], 2]

    # NVTX ranges
    steps: list[StepRange] = []
    layer = np.full(len(k["start"]), NO_LAYER, dtype=np.int64)
    launcher = np.full(len(k["start"]), -1, dtype=np.int64)  # innermost CPU-op range: index into labels
    annotation = np.full(len(k["start"]), -1, dtype=np.int64)  # innermost other range
    labels: list[str] = []
    step_source = "none"
    if "NVTX_EVENTS" in tables:
        c = _cols(con, "NVTX_EVENTS")
        text = "text" if "text" in c else "NULL"
        text_id = "textId" if "textId" in c else "NULL"
        tid = "globalTid" if "globalTid" in c else "0"
        types = ",".join(str(t) for t in NVTX_RANGE_TYPES)
        rng = []
        for s, e, tx, tx_id, g in con.execute(
            f"SELECT start, end, {text}, {text_id}, {tid} FROM NVTX_EVENTS "
            f"WHERE end IS NOT NULL AND start IS NOT NULL AND eventType IN ({types})"
        ):
            label = tx if isinstance(tx, str) else strings.get(tx_id, "") if type(tx_id) is int else ""
            if type(s) is int and type(e) is int and -NS_LIMIT < s <= e < NS_LIMIT:
                rng.append((s, e, label, g if type(g) is int else 0))
            else:
                skipped["malformed_range"] += 1
        _innermost_ranges(rng, launch, host, launcher, annotation, labels)
        lay = [(s, e, layer_of(lb), g) for s, e, lb, g in rng if layer_of(lb) != NO_LAYER]
        for g in {r[3] for r in lay}:
            sel = [r for r in lay if r[3] == g]
            iv = Intervals(
                np.array([r[0] for r in sel]), np.array([r[1] for r in sel]), np.array([r[2] for r in sel])
            )
            m = (host == g) & (layer == NO_LAYER)
            layer[m] = iv.lookup(launch[m], NO_LAYER)
        named = [(s, e, parse_step(lb), g) for s, e, lb, g in rng]
        named = [r for r in named if r[2] is not None]
        if named:
            step_source = "NVTX step ranges"
            cand = named
        else:
            # outermost ranges (no layer token) that contain a kernel launch
            step_source = "outermost NVTX ranges with launches"
            cand = [(s, e, StepFacts("nvtx"), g) for s, e, lb, g in rng if layer_of(lb) == NO_LAYER]
        cand.sort(key=lambda r: (r[3], r[0], -r[1]))
        last_end: dict[int, int] = {}
        for s, e, f, g in cand:
            if s < last_end.get(g, -1):
                if steps and steps[-1].host == g and f is not None:
                    steps[-1].facts = merge_facts(steps[-1].facts, f)
                continue
            last_end[g] = e
            steps.append(StepRange(s, e, g, f))
        if not named:
            lt = launch[launch >= 0]
            lh = host[launch >= 0]
            steps = [st for st in steps if ((lt >= st.start_ns) & (lt < st.end_ns) & (lh == st.host)).any()]
    nl = layer == NO_LAYER
    if nl.any():
        name_layer = np.array([layer_of(n) for n in local_names], dtype=np.int64)
        layer[nl] = name_layer[k["name"][nl]]

    tk = np.stack([k["dev"], k["stream"]], axis=1)
    uniq, track = np.unique(tk, axis=0, return_inverse=True)
    if len(uniq) > 65535:
        raise LlmtopError(f"{path}: {len(uniq)} device streams; at most 65535 tracks are supported")
    op_class = op_class_column(local_names, k["cname"], labels, launcher, labels, annotation)
    kc = KernelColumns(
        local_names, k["name"], k["start"], k["dur"], track.reshape(-1).astype(np.int64), launch, host, layer,
        op_class,
    )
    batches, info = build_batches(kc, steps, names)
    skipped.update(info["skipped"])
    warnings.extend(info["warnings"])

    device = ""
    if "TARGET_INFO_GPU" in tables and "name" in _cols(con, "TARGET_INFO_GPU"):
        gpus = sorted({str(r[0]) for r in con.execute("SELECT name FROM TARGET_INFO_GPU") if r[0]})
        device = ", ".join(gpus)
    version = ""
    if "EXPORT_META_DATA" in tables:
        meta = dict(con.execute("SELECT name, value FROM EXPORT_META_DATA").fetchall())
        version = str(meta.get("EXPORT_SCHEMA_VERSION", ""))
    n_layers = info["inferred_layers"] or len(np.unique(layer[layer >= 0]))
    if info["inferred_layers"]:
        warnings.append(f"no layer ranges: {n_layers} layers inferred from the repeating kernel pattern")
    if not steps:
        warnings.append("no NVTX ranges around kernel launches: kernels have no step")
    if info["kernels_outside_steps"] and steps:
        warnings.append(f"{info['kernels_outside_steps']} of {info['kernels']} kernels and copies were "
                        "launched outside every step range: they count in the kernel table, not in per-step "
                        "figures")
    for reason, n in sorted(skipped.items()):
        if reason in _ROW_REASONS:
            warnings.append(f"{n} records skipped: {reason.replace('_', ' ')} ({_ROW_REASONS[reason]})")
    source = SourceInfo(
        kind="import",
        backend="nsys",
        device=device or "GPU",
        model=path.name,
        timing="nsys/CUPTI",
        n_layers=n_layers,
        extra={
            "ranks": [0],
            "streams": sorted({int(s) for s in uniq[:, 1]}),
            "tracks": [
                {"track": i, "device": int(d), "stream": int(s)} for i, (d, s) in enumerate(uniq.tolist())
            ],
            "skipped": sum(skipped.values()),
            "warnings": warnings,
            "kernel_names": name_cols[0],
            "schema_version": version,
            "step_source": step_source,
            "kernels_outside_steps": info["kernels_outside_steps"],
        },
    )
    return source, batches, skipped, warnings


# -- registration ----------------------------------------------------------------------------
SQLITE_MAGIC = b"SQLite format 3\x00"


def sniff(head: bytes) -> bool:
    return head.startswith(SQLITE_MAGIC)


def read(path: Path, names: NameTable, kernel_names: str = "demangled") -> ImportResult:
    source, batches, skipped, warnings = import_nsys(path, names, kernel_names)
    return ImportResult(source, batches, sum(skipped.values()), warnings, names, skipped_by=dict(skipped))


def _innermost_ranges(
    rng: list[tuple[int, int, str, int]], launch: np.ndarray, host: np.ndarray, launcher: np.ndarray,
    annotation: np.ndarray, labels: list[str],
) -> None:
    """Fill `launcher` / `annotation` (indices into `labels`) with the innermost NVTX range around each
    kernel's launch on its thread: CPU-op ranges (emit_nvtx) and other ranges separately."""
    label_id: dict[str, int] = {}
    per: dict[tuple[int, bool], list[tuple[int, int, int]]] = {}
    for s, e, lb, g in rng:
        m = _CPU_OP.match(lb)
        text = m.group(1) if m else lb
        i = label_id.get(text)
        if i is None:
            i = label_id[text] = len(labels)
            labels.append(text)
        per.setdefault((g, m is not None), []).append((s, e, i))
    for (g, is_op), rows in per.items():
        m = (host == g) & (launch >= 0)
        if not m.any():
            continue
        a = np.array(rows, dtype=np.int64)
        out = launcher if is_op else annotation
        out[m] = innermost(a[:, 0], a[:, 1], a[:, 2]).lookup(launch[m], -1)


FORMAT = register(TraceFormat("nsys", "nsys SQLite", sniff, read, priority=5, gzip=False,
                              errors=(sqlite3.DatabaseError,)))
