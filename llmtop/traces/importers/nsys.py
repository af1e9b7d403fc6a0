"""Nsight Systems SQLite export (`nsys export --type sqlite`) -> EventBatches.

Opened read-only. Columns are looked up with PRAGMA table_info, so old (text in NVTX_EVENTS.text, names
in StringIds via shortName/demangledName) and new exports (NVTX textId, `name` columns, missing tables)
both work. Kernels, memcpys and memsets become rows; track = (device, stream). The runtime call with the
same correlationId gives the host thread and time of the launch, which place the kernel in NVTX ranges:
ranges named like steps (mapping.parse_step) are steps, else the outermost ranges that launch kernels;
ranges with layer tokens give layers, then layer tokens in kernel names.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, EventBatch, NameTable, SourceInfo
from llmtop.traces.importers.common import KernelColumns, StepRange, build_batches
from llmtop.traces.importers.mapping import Intervals, StepFacts, layer_of, merge_facts, parse_step
from llmtop.traces.registry import ImportResult, TraceFormat, register

NVTX_RANGE_TYPES = (59, 60, 70, 71)  # push/pop, start/end (and their payload variants)


def _cols(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def import_nsys(path: Path, names: NameTable) -> tuple[SourceInfo, list[EventBatch], int, list[str]]:
    uri = "file:" + str(path.resolve()).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise LlmtopError(f"{path}: unreadable SQLite file ({e})") from None
    try:
        return _read(con, tables, path, names)
    finally:
        con.close()


def _read(
    con: sqlite3.Connection, tables: set[str], path: Path, names: NameTable
) -> tuple[SourceInfo, list[EventBatch], int, list[str]]:
    kernel_tables = [
        t
        for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET")
        if t in tables
    ]
    if "StringIds" not in tables or not kernel_tables:
        hint = "no StringIds table" if "StringIds" not in tables else "no CUPTI_ACTIVITY_KIND_* tables"
        raise LlmtopError(f"{path}: SQLite file is not an Nsight Systems export ({hint})")
    warnings: list[str] = []
    strings = dict(con.execute("SELECT id, value FROM StringIds"))
    local_names: list[str] = []
    local_ids: dict[str, int] = {}

    def lid(s: str) -> int:
        i = local_ids.get(s)
        if i is None:
            i = local_ids[s] = len(local_names)
            local_names.append(s)
        return i

    cols_k: dict[str, list[np.ndarray]] = {c: [] for c in ("name", "start", "dur", "dev", "stream", "corr")}
    skipped = 0
    for t in kernel_tables:
        c = _cols(con, t)
        need = {"start", "end", "deviceId", "streamId", "correlationId"}
        if not need <= c:
            warnings.append(f"{t} lacks {sorted(need - c)}; skipped")
            continue
        if t.endswith("KERNEL"):
            name_col = next((n for n in ("shortName", "demangledName", "mangledName") if n in c), None)
            if name_col is None:
                warnings.append(f"{t} has no name column; skipped")
                continue
            name_expr = name_col
        elif t.endswith("MEMCPY"):
            name_expr = "copyKind" if "copyKind" in c else "NULL"
        else:
            name_expr = "NULL"
        q = (
            f"SELECT {name_expr}, start, end, deviceId, streamId, correlationId FROM {t} "
            "WHERE start IS NOT NULL AND end IS NOT NULL"
        )
        cur = con.execute(q)
        copy_kinds = {1: "Memcpy HtoD", 2: "Memcpy DtoH", 8: "Memcpy DtoD", 10: "Memcpy PtoP"}
        while True:
            rows = cur.fetchmany(65536)
            if not rows:
                break
            ok_rows = []
            for r in rows:
                if not all(isinstance(v, int) for v in r[1:5]) or r[2] < r[1]:
                    skipped += 1
                    continue
                if t.endswith("KERNEL"):
                    nm = strings.get(r[0], f"kernel#{r[0]}") if isinstance(r[0], int) else str(r[0])
                elif t.endswith("MEMCPY"):
                    nm = copy_kinds.get(r[0], "Memcpy") if isinstance(r[0], int) else "Memcpy"
                else:
                    nm = "Memset"
                ok_rows.append(
                    (lid(nm), r[1], r[2] - r[1], r[3], r[4], r[5] if isinstance(r[5], int) else -1)
                )
            if ok_rows:
                a = np.array(ok_rows, dtype=np.int64)
                for j, key in enumerate(("name", "start", "dur", "dev", "stream", "corr")):
                    cols_k[key].append(a[:, j])
    if not cols_k["start"]:
        raise LlmtopError(f"{path}: Nsight Systems export without kernel/memcpy/memset records")
    k = {key: np.concatenate(v) for key, v in cols_k.items()}

    # launches
    launch = np.full(len(k["start"]), -1, dtype=np.int64)
    host = np.full(len(k["start"]), -1, dtype=np.int64)
    if "CUPTI_ACTIVITY_KIND_RUNTIME" in tables and {"start", "globalTid", "correlationId"} <= _cols(
        con, "CUPTI_ACTIVITY_KIND_RUNTIME"
    ):
        rt = np.array(
            con.execute(
                "SELECT correlationId, start, globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME "
                "WHERE correlationId IS NOT NULL AND start IS NOT NULL "
                "AND globalTid IS NOT NULL"
            ).fetchall(),
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
            label = tx if isinstance(tx, str) else strings.get(tx_id, "") if isinstance(tx_id, int) else ""
            if isinstance(s, int) and isinstance(e, int) and e >= s:
                rng.append((s, e, label, g if isinstance(g, int) else 0))
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
    kc = KernelColumns(
        local_names, k["name"], k["start"], k["dur"], track.reshape(-1).astype(np.int64), launch, host, layer
    )
    batches, info = build_batches(kc, steps, names)

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
    if skipped:
        warnings.append(f"{skipped} records with missing or malformed fields were skipped")
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
            "skipped": skipped,
            "warnings": warnings,
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


def read(path: Path, names: NameTable) -> ImportResult:
    source, batches, skipped, warnings = import_nsys(path, names)
    return ImportResult(source, batches, skipped, warnings, names)


FORMAT = register(TraceFormat("nsys", "nsys SQLite", sniff, read, priority=5, gzip=False,
                              errors=(sqlite3.DatabaseError,)))
