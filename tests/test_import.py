"""Importers on real fixtures and seeds, checked against an independent pass over the same file."""

from __future__ import annotations

import gzip
import io
import json
import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import redirect_stdout
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from fixture_paths import DOPPLER_LOG as DOPPLER
from fixture_paths import HTA_A100 as HTA
from fixture_paths import MI300X_SGLANG as MI300X
from fixture_paths import NSYS_A100 as NSYS
from fixture_paths import VLLM_CPU

from llmtop.cli import main
from llmtop.errors import LlmtopError
from llmtop.events import (
    DECODE,
    KERNEL_DTYPE,
    OP_CLASS_ID,
    PREFILL,
    STEP_DTYPE,
    EventBatch,
    NameTable,
    SourceInfo,
)
from llmtop.traces.open import (
    ImportResult,
    detect_format,
    formats,
    open_trace,
    open_trace_file,
    open_traces,
)
from llmtop.traces.recording import MAGIC
from llmtop.traces.registry import TraceFormat, register, unregister

DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def collect(r: ImportResult) -> tuple[np.ndarray, np.ndarray, NameTable]:
    """Apply the batches the way a consumer does: names through NameTable.extend, in order."""
    names = NameTable()
    ks, ss = [], []
    for b in r.batches:
        names.extend(b.names_base, b.new_names)
        ks.append(b.kernels)
        ss.append(b.steps)
    return np.concatenate(ks), np.concatenate(ss), names


def us_ns(v: object) -> int:
    return int(Decimal(str(v)) * 1000)


def walk(path: Path) -> list[dict]:
    with gzip.open(path) as f:
        d = json.load(f, parse_float=Decimal)
    return d["traceEvents"] if isinstance(d, dict) else d


def top_name(ks: np.ndarray, names: NameTable) -> str:
    return names[int(np.bincount(ks["name"], weights=ks["dur_ns"]).argmax())]


def check_steps(ks: np.ndarray, st: np.ndarray) -> None:
    for s in st:
        mine = ks[ks["step"] == s["step"]]
        assert int(mine["dur_ns"].sum()) == int(s["kernel_ns"])
        if len(mine):
            assert mine["start_ns"].min() >= s["start_ns"]
            assert (mine["start_ns"] + mine["dur_ns"]).max() <= s["start_ns"] + s["dur_ns"]


def test_detect_by_content_not_extension(tmp_path: Path) -> None:
    assert detect_format(HTA) == "kineto"
    assert detect_format(NSYS) == "nsys"
    assert detect_format(DOPPLER) == "doppler"
    odd = tmp_path / "trace.sqlite"  # Kineto JSON under a misleading name
    odd.write_bytes(gzip.decompress(HTA.read_bytes()))
    assert detect_format(odd) == "kineto"
    fake = tmp_path / "run.json"
    fake.write_bytes(MAGIC + b"\x00" * 32)
    assert detect_format(fake) == "recording"


def test_hta_a100_kineto() -> None:
    events = walk(HTA)
    dev = [e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    r = open_trace(HTA)
    ks, st, names = collect(r)
    assert len(ks) == len(dev)
    assert int(ks["dur_ns"].sum()) == sum(us_ns(e["dur"]) for e in dev)
    per_name: Counter[str] = Counter()
    for e in dev:
        per_name[e["name"]] += us_ns(e["dur"])
    assert top_name(ks, names) == per_name.most_common(1)[0][0]
    assert sum(1 for k in ks if names[k["name"]].startswith("ampere_sgemm")) == sum(
        1 for e in dev if e["name"].startswith("ampere_sgemm")
    )
    # steps: the outermost user annotations that name a forward pass
    fwd = sorted(
        (us_ns(e["ts"]), us_ns(e["ts"]) + us_ns(e["dur"]))
        for e in events
        if e.get("cat") == "user_annotation" and "forward" in e["name"]
    )
    outer = [f for f in fwd if not any(o[0] <= f[0] and f[1] <= o[1] and o != f for o in fwd)]
    assert len(st) == len(outer)
    check_steps(ks, st)
    assert r.source.device == "NVIDIA A100-PG509-200"
    assert r.source.extra["ranks"] == [0]
    assert r.skipped == 0
    streams = {(e["args"]["device"], e["args"]["stream"]) for e in dev}
    assert len(np.unique(ks["track"])) == len(streams)


def test_mi300x_sglang_graph_replay() -> None:
    events = walk(MI300X)
    dev = [e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    corr = Counter(e["args"]["correlation"] for e in dev if e["cat"] == "kernel")
    assert corr.most_common(1)[0][1] > 100  # one graph launch, hundreds of kernels
    r = open_trace(MI300X)
    ks, st, names = collect(r)
    assert len(ks) == len(dev)
    assert int(ks["dur_ns"].sum()) == sum(us_ns(e["dur"]) for e in dev)
    per_name: Counter[str] = Counter()
    for e in dev:
        per_name[e["name"]] += us_ns(e["dur"])
    assert top_name(ks, names) == per_name.most_common(1)[0][0]
    # one decoder layer runs one paged-attention kernel: their count is the layer count
    n_attn = sum(1 for e in dev if e["name"].startswith("void paged_attention_ll4mi_QKV"))
    assert r.source.n_layers == n_attn == len(np.unique(ks["layer"][ks["layer"] >= 0]))
    paged = np.array([names[int(i)].startswith("void paged_attention") for i in ks["name"]])
    assert (ks["op_class"][paged] == OP_CLASS_ID["attention"]).all()
    assert sorted(ks["layer"][paged].tolist()) == sorted(list(range(n_attn)) * 2)  # QKV + reduce per layer
    steps = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("execute_")]
    assert len(st) == len(steps) == 1
    m = re.search(r"_generation_(\d+)\(sq(\d+)", steps[0]["name"])
    assert st[0]["phase"] == DECODE and st[0]["tokens"] == int(m.group(2)) and st[0]["batch"] == 32
    check_steps(ks, st)
    assert r.source.device == "AMD Instinct MI300X"


def test_vllm_cpu_trace_outermost_ops() -> None:
    events = walk(VLLM_CPU)
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    by_thread: dict[tuple, list] = defaultdict(list)
    for e in ops:
        by_thread[(e["pid"], e["tid"])].append((us_ns(e["ts"]), us_ns(e["ts"]) + us_ns(e["dur"]), e["name"]))
    outer = []
    for evs in by_thread.values():
        evs.sort(key=lambda x: (x[0], -x[1]))
        end = -1
        for t0, t1, n in evs:
            if t0 >= end:
                outer.append((t0, t1, n))
            end = max(end, t1)
    r = open_trace(VLLM_CPU)
    ks, st, names = collect(r)
    assert len(ks) == len(outer)
    assert int(ks["dur_ns"].sum()) == sum(t1 - t0 for t0, t1, _ in outer)
    ann = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("execute_context")]
    assert len(st) == len(ann) == 20
    prefill = [e for e in ann if not e["name"].startswith("execute_context_0(")]
    assert int((st["phase"] == PREFILL).sum()) == len(prefill)
    first = st[np.argmin(st["start_ns"])]
    assert first["tokens"] == int(re.match(r"execute_context_\d+\((\d+)\)", prefill[0]["name"]).group(1))
    assert (st["kernel_ns"] <= st["dur_ns"]).all()  # no double counting of nested ops
    check_steps(ks, st)
    mm = ks[ks["op_class"] == OP_CLASS_ID["matmul"]]
    assert len(mm) > 0 and names[int(mm["name"][0])] == "_C::onednn_mm"


def test_nsys_sqlite_against_sql() -> None:
    con = sqlite3.connect(f"file:{NSYS}?mode=ro", uri=True)
    q = "SELECT COUNT(*), SUM(end - start) FROM {}"
    n = tot = 0
    for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"):
        c, s = con.execute(q.format(t)).fetchone()
        n, tot = n + c, tot + (s or 0)
    top_kernel = con.execute(
        "SELECT s.value, SUM(k.end - k.start) AS t FROM CUPTI_ACTIVITY_KIND_KERNEL k "
        "JOIN StringIds s ON s.id = k.demangledName GROUP BY s.value ORDER BY t DESC LIMIT 1"
    ).fetchone()[0]
    n_kernels = con.execute("SELECT COUNT(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    saxpy_ranges = con.execute(
        "SELECT COUNT(*) FROM NVTX_EVENTS WHERE text = 'saxpy' AND end IS NOT NULL"
    ).fetchone()[0]
    gpu = con.execute("SELECT name FROM TARGET_INFO_GPU").fetchone()[0]
    con.close()
    r = open_trace(NSYS)
    ks, st, names = collect(r)
    assert len(ks) == n and int(ks["dur_ns"].sum()) == tot
    kern = ks[ks["op_class"] != OP_CLASS_ID["memcpy"]]
    assert len(kern) == n_kernels
    assert names[int(np.bincount(kern["name"], weights=kern["dur_ns"]).argmax())] == top_kernel
    assert len(st) == saxpy_ranges  # each NVTX 'saxpy' range launches one kernel
    assert all(int(s["kernel_ns"]) > 0 for s in st)
    check_steps(ks, st)
    assert r.source.device == gpu and r.source.backend == "nsys"
    assert r.source.extra["schema_version"] == "2.9.1"


def test_doppler_seed_attention_grows() -> None:
    text = DOPPLER.read_text()
    blocks = text.split("GPU Profile Report")[1:]
    sums = []
    for b in blocks:
        body = b.split("TOTAL")[0]
        rows = re.findall(r"^(\S+)\s+(\d+\.\d+)\s+\d+\.\d+$", body, re.M)
        sums.append((sum(round(float(t) * 100) for _, t in rows), dict(rows)))
    r = open_trace(DOPPLER)
    ks, st, names = collect(r)
    st = st[np.argsort(st["start_ns"])]
    assert len(st) == len(blocks) == text.count("Batch decode") + 1
    assert st[0]["phase"] == PREFILL and (st[1:]["phase"] == DECODE).all()
    assert [int(s["kernel_ns"]) // 10_000 for s in st] == [s for s, _ in sums]
    assert int(st[1:]["tokens"].sum()) == int(re.search(r"Decode: \d+ms \((\d+) tokens", text).group(1))
    attn = [float(rows["attention"]) for _, rows in sums[1:]]
    aid = names.names.index("attention")
    mine = [int(ks["dur_ns"][(ks["step"] == s["step"]) & (ks["name"] == aid)].sum()) / 1e6 for s in st[1:]]
    assert mine == pytest.approx(attn)
    assert mine[-2] > 10 * mine[0]  # attention cost grows with context over the decode
    assert (np.diff(st["ctx"][1:]) > 0).all()
    assert r.source.n_layers == 26 and len(np.unique(ks["layer"][ks["layer"] >= 0])) == 26
    check_steps(ks, st)


def _metallic_line(ts: str, typ: str, data: dict) -> str:
    return json.dumps({"timestamp": ts, "span_id": 1, "parent_span_id": None, "span_name": "gen",
                       "event": {"type": typ, "data": data}})


def test_metallic_jsonl(tmp_path: Path) -> None:
    # metallic's serde layout (tag="type", content="data"); a small synthetic run: 2 prompt ops, 3 decode
    # iterations of 2 blocks x (rope, sdpa) + cb bookkeeping that must not become kernels.
    lines = [_metallic_line("2025-10-01T10:00:00.000100000Z", "KernelBackendSelected",
                            {"op_name": "sdpa", "backend": "Metal", "reason": "OnlyAvailable"})]
    lines.append(_metallic_line("2025-10-01T10:00:00.002000000Z", "GpuOpCompleted",
                                {"op_name": "Prompt Processing/generation_step_output/gemv (C)",
                                 "backend": "Metal", "duration_us": 1500}))
    expect_total, expect_n = 1500_000, 1
    t = 10_000  # µs after 10:00:00
    for it in range(3):
        t0 = t
        for b in range(2):
            for op, d in (("metallic::kernels::rope::RoPEOp", 100 + it), ("sdpa", 200 + 10 * it)):
                t += d
                lines.append(_metallic_line(f"2025-10-01T10:00:00.{t:06d}123Z", "GpuOpCompleted",
                                            {"op_name": f"Generation Loop/block_{b}/{op}", "backend": "Metal",
                                             "duration_us": d}))
                expect_total += d * 1000
                expect_n += 1
        lines.append(_metallic_line(f"2025-10-01T10:00:00.{t:06d}500Z", "GpuOpCompleted",
                                    {"op_name": "Generation Loop/cb_wait", "backend": "Metal",
                                     "duration_us": 50}))
        t += 5
        lines.append(_metallic_line(f"2025-10-01T10:00:00.{t:06d}000Z", "InternalKernelCompleted",
                                    {"parent_op_name": "generation_loop", "internal_kernel_name":
                                     "iteration_total", "duration_us": t - t0 + 1}))
        t += 100
    lines.append("{not json")
    p = tmp_path / "prof.jsonl"
    p.write_text("\n".join(lines) + "\n")
    assert detect_format(p) == "metallic"
    r = open_trace(p)
    ks, st, names = collect(r)
    assert len(ks) == expect_n and int(ks["dur_ns"].sum()) == expect_total
    assert "cb_wait" not in names.names and r.source.extra["cb_wait_ns"] == 3 * 50_000
    assert r.skipped == 1 and any("command buffer" in w for w in r.warnings)
    assert int((st["phase"] == DECODE).sum()) == 3 and int((st["phase"] == PREFILL).sum()) == 1
    assert r.source.n_layers == 2
    check_steps(ks, st)
    sd = names.names.index("sdpa")
    assert (ks["op_class"][ks["name"] == sd] == OP_CLASS_ID["attention"]).all()


def test_exact_ns_timestamps_and_array_form(tmp_path: Path) -> None:
    p = tmp_path / "a.json"  # Array form; floats written as text: json.dumps would round them
    p.write_text('[\n' + ",\n".join(
        f'{{"ph": "X", "cat": "kernel", "name": "{n}", "pid": 0, "tid": {s}, "ts": {ts}, "dur": {d}, '
        f'"args": {{"correlation": {c}, "device": 0, "stream": {s}}}}}'
        for n, s, ts, d, c in (("gemm_L3", 7, "1694039959000054.484", "12.345", 9),
                               ("flash_fwd", 8, "1694039959000070.001", "1.5", 10))) + "\n]")
    r = open_trace(p)
    ks, _, names = collect(r)
    assert ks["start_ns"].tolist() == [1694039959000054484, 1694039959000070001]
    assert ks["dur_ns"].tolist() == [12345, 1500]
    assert ks["layer"].tolist() == [3, -1]
    assert [names[i] for i in ks["name"]] == ["gemm_L3", "flash_fwd"]
    assert len(np.unique(ks["track"])) == 2


# -- the registry of formats ------------------------------------------------------------------
def _fake_reader(path: Path, names: NameTable) -> ImportResult:
    """`FAKETRACE` then one `name dur_ns` line per kernel, laid end to end in one decode step."""
    rows = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
    k = np.zeros(len(rows), KERNEL_DTYPE)
    k["name"] = [names.intern(n) for n, _ in rows]
    k["dur_ns"] = [int(d) for _, d in rows]
    k["start_ns"] = np.concatenate([[0], np.cumsum(k["dur_ns"])[:-1]]) + 1000
    k["phase"], k["layer"] = DECODE, -1
    s = np.zeros(1, STEP_DTYPE)
    s["phase"], s["tokens"], s["batch"], s["start_ns"] = DECODE, 1, 1, 1000
    s["dur_ns"] = s["kernel_ns"] = int(k["dur_ns"].sum())
    source = SourceInfo(kind="import", backend="fakefmt", device="fake device", timing="fake")
    return ImportResult(source, [EventBatch(k, s, 0, list(names.names))], 0, ["a fake warning"], names)


FAKE = TraceFormat("fakefmt", "fake text trace", lambda head: head.startswith(b"FAKETRACE\n"), _fake_reader,
                   priority=1)


@pytest.fixture
def fake_format() -> Iterator[TraceFormat]:
    register(FAKE)
    try:
        yield FAKE
    finally:
        unregister(FAKE.name)


def test_a_registered_format_is_detected_read_and_reported(tmp_path: Path, fake_format: TraceFormat) -> None:
    p = tmp_path / "looks_like.json"  # the content decides, never the extension
    p.write_text("FAKETRACE\nmatmul 700\nnorm 300\n")
    assert fake_format in formats()
    assert detect_format(p) == "fakefmt"
    ks, st, names = collect(open_trace(p))
    assert [names[i] for i in ks["name"]] == ["matmul", "norm"] and len(st) == 1
    tf = open_trace_file(p)
    assert tf.format == "fakefmt" and tf.warnings == ["a fake warning"]
    assert [t for t, _ in tf.records] == [2000]  # the batch's last step end
    # the CLI opens files through the same registry
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["report", str(p), "--format", "json"]) == 0
    rep = json.loads(buf.getvalue())
    assert {k["name"] for k in rep["kernels"]} == {"matmul", "norm"}
    # a directory picks it up too, and several files of it merge like any foreign format
    q = tmp_path / "second.txt"
    q.write_text("FAKETRACE\nmatmul 100\n")
    r = open_traces([tmp_path])
    assert [x["format"] for x in r.source.extra["ranks"]] == ["fakefmt", "fakefmt"]
    with pytest.raises(ValueError, match="already registered"):
        register(TraceFormat("fakefmt", "other", lambda head: False, _fake_reader))


def test_unknown_bytes_give_one_line_listing_the_formats(tmp_path: Path, fake_format: TraceFormat) -> None:
    p = tmp_path / "mystery.json"
    p.write_bytes(b"\x00\x01\x02 not a trace \xff" * 20)
    with pytest.raises(LlmtopError, match="unrecognised trace format") as e:
        detect_format(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    for label in ("llmtop recording", "Kineto JSON", "nsys SQLite", "metallic JSONL", "doppler log",
                  "fake text trace"):
        assert label in msg
    unregister(fake_format.name)
    with pytest.raises(LlmtopError) as e:
        open_trace_file(p)
    assert "fake text trace" not in str(e.value) and "Kineto JSON" in str(e.value)
    assert {f.name for f in formats()} == {"recording", "kineto", "nsys", "metallic", "doppler", "mlir-air"}


def test_gzip_files_are_sniffed_inside_where_the_format_says_so(tmp_path: Path) -> None:
    q = tmp_path / "k.gz"
    q.write_bytes(gzip.compress(b'{"traceEvents": []}'))
    assert detect_format(q) == "kineto"
    p = tmp_path / "n.sqlite.gz"
    p.write_bytes(gzip.compress(b"SQLite format 3\x00" + b"\x00" * 64))  # SQLite cannot be read compressed
    with pytest.raises(LlmtopError, match="unrecognised"):
        detect_format(p)
    r = tmp_path / "rec.llmtop.gz"
    r.write_bytes(gzip.compress(MAGIC + b"\x00" * 32))  # recognised; the reader refuses it in one line
    assert detect_format(r) == "recording"
    with pytest.raises(LlmtopError, match="not an llmtop recording") as e:
        open_trace_file(r)
    assert "\n" not in str(e.value)


# -- what launched a kernel decides its op class (issue 13) -------------------------------------------
def _x(cat: str, name: str, ts: float, dur: float, pid: int = 1, tid: int = 1, **args: object) -> dict:
    e: dict = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}
    if args:
        e["args"] = args
    return e


def test_launching_cpu_op_and_enclosing_annotation_decide_the_op_class(tmp_path: Path) -> None:
    k = {"device": 0, "stream": 7}
    events = [
        _x("cpu_op", "aten::linear", 100, 50),
        _x("cpu_op", "aten::t", 101, 2),  # a sibling that ended before the launch
        _x("cpu_op", "aten::addmm", 105, 20),
        _x("cuda_runtime", "cudaLaunchKernel", 110, 3, correlation=1),  # innermost: aten::addmm
        _x("cuda_runtime", "cudaLaunchKernel", 130, 3, correlation=2),  # innermost: aten::linear
        _x("user_annotation", "my_rms_norm_block", 200, 50),
        _x("cuda_runtime", "cudaLaunchKernel", 210, 3, correlation=3),  # no cpu_op: the annotation
        _x("cpu_op", "aten::add", 300, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 302, 3, correlation=4),  # the launcher's own class, last
        _x("gpu_user_annotation", "attention_region", 390, 40, pid=0, tid=7, **k),
        _x("kernel", "kernel_a", 120, 5, pid=0, tid=7, correlation=1, **k),
        _x("kernel", "kernel_b", 140, 5, pid=0, tid=7, correlation=2, **k),
        _x("kernel", "kernel_c", 220, 5, pid=0, tid=7, correlation=3, **k),
        _x("kernel", "kernel_e", 310, 5, pid=0, tid=7, correlation=4, **k),
        _x("kernel", "kernel_d", 400, 5, pid=0, tid=7, correlation=99, **k),  # no launch: gpu annotation
    ]
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"traceEvents": events}))
    ks, _, names = collect(open_trace(p))
    got = {names[int(r["name"])]: int(r["op_class"]) for r in ks}
    want = {"kernel_a": "matmul", "kernel_b": "matmul", "kernel_c": "norm", "kernel_d": "attention",
            "kernel_e": "elementwise"}
    assert got == {n: OP_CLASS_ID[c] for n, c in want.items()}


def test_device_work_of_other_accelerators(tmp_path: Path) -> None:
    """MTIA, XPU and HPU categories are device work; a device-looking category that llmtop does not
    know is named in a warning with its count, and counted under skipped."""
    mtia = [
        _x("cpu_op", "aten::mm", 100, 50, pid=5, tid=5),
        _x("mtia_runtime", "runFunction - job_prep_and_submit_for_execution", 110, 5, pid=5, tid=5,
           correlation=1),
        _x("mtia_ccp_events", "fc-dtype_Float", 120, 7, pid=9, tid=4, correlation=1, stream=102),
        _x("mtia_ccp_events", "dma_request", 130, 3, pid=9, tid=801, direction="DEVICE_TO_HOST"),
        _x("mtia_insight", "some_device_counter", 130, 3, pid=9, tid=4),
        _x("mtia_insight", "some_device_counter", 140, 3, pid=9, tid=4),
        _x("npu_thing", "x", 150, 3, pid=9, tid=4),
        _x("cuda_sync", "cudaDeviceSynchronize", 160, 1, pid=5, tid=5),  # host side: not named
    ]
    p = tmp_path / "mtia.json"
    p.write_text(json.dumps({"deviceProperties": [], "traceEvents": mtia}))
    r = open_trace(p)
    ks, _, names = collect(r)
    assert sorted(names[int(i)] for i in ks["name"]) == ["dma_request", "fc-dtype_Float"]
    cls = {names[int(k["name"])]: int(k["op_class"]) for k in ks}
    assert cls == {"fc-dtype_Float": OP_CLASS_ID["matmul"], "dma_request": OP_CLASS_ID["memcpy"]}
    assert r.source.device.startswith("MTIA")
    assert r.skipped_by == {"unknown_device_category": 3}
    w = [x for x in r.warnings if "look like device work" in x]
    assert len(w) == 1 and "'mtia_insight' (2)" in w[0] and "'npu_thing' (1)" in w[0]
    assert "cuda_sync" not in w[0]

    xpu = [
        _x("cpu_op", "aten::addmm", 100, 50),
        _x("xpu_runtime", "piKernelLaunch", 110, 5, correlation=7),
        _x("kernel", "gemm_kernel", 120, 7, pid=0, tid=3, correlation=7, device=0, stream=3),
        _x("gpu_memcpy", "Memcpy M2D", 130, 2, pid=0, tid=3, correlation=8, device=0, stream=3),
    ]
    p = tmp_path / "xpu.json"
    p.write_text(json.dumps({"deviceProperties": [{"id": 0, "name": "Intel(R) Data Center GPU Max 1550"}],
                             "traceEvents": xpu}))
    r = open_trace(p)
    ks, _, names = collect(r)
    assert len(ks) == 2 and r.source.device == "Intel(R) Data Center GPU Max 1550" and not r.skipped_by

    rocm = [  # the kernel runs after its step ended: only the hip_runtime launch puts it in the step
        _x("user_annotation", "ProfilerStep#1", 90, 70),
        _x("cpu_op", "aten::mm", 100, 50),
        _x("hip_runtime", "hipExtModuleLaunchKernel", 110, 5, correlation=3),
        _x("kernel", "kernel_x", 300, 7, pid=2, tid=1, correlation=3, device=0, stream=1),
    ]
    p = tmp_path / "rocm.json"
    p.write_text(json.dumps({"traceEvents": rocm}))
    ks, st, _ = collect(open_trace(p))
    assert len(ks) == 1 and int(ks["op_class"][0]) == OP_CLASS_ID["matmul"]  # from aten::mm
    assert len(st) == 1 and ks["step"][0] == st["step"][0]

    only_unknown = [_x("cpu_op", "aten::mm", 100, 50), _x("hpu_graph_kernel", "k", 110, 5, pid=2, tid=1)]
    p = tmp_path / "cpu.json"
    p.write_text(json.dumps({"traceEvents": only_unknown}))
    r = open_trace(p)
    assert any("'hpu_graph_kernel' (1)" in x and "only the CPU side" in x for x in r.warnings)
    assert r.skipped_by == {"unknown_device_category": 1}


def test_rank_from_distributed_info_after_the_events(tmp_path: Path) -> None:
    k = {"device": 0, "stream": 7}
    events = [_x("cuda_runtime", "cudaLaunchKernel", 10, 1, correlation=1),
              _x("kernel", "gemm", 12, 2, pid=0, tid=7, correlation=1, **k)]
    for order in ("before", "after"):
        doc = {"traceEvents": events, "distributedInfo": {"rank": 3, "world_size": 4}}
        if order == "before":
            doc = {"distributedInfo": doc["distributedInfo"], "traceEvents": events}
        p = tmp_path / f"{order}.json"
        p.write_text(json.dumps(doc))
        r = open_trace(p)
        assert sum(len(b.kernels) for b in r.batches) == 1
        assert r.source.extra["ranks"] == [3] and [t["rank"] for t in r.source.extra["tracks"]] == [3]


def test_kernels_without_correlation_follow_their_ac2g_flow(tmp_path: Path) -> None:
    """Old traces: the kernel's launch is found through the flow that ends on it."""
    events = [
        _x("user_annotation", "ProfilerStep#1", 90, 70),
        _x("cpu_op", "aten::mm", 100, 50),
        _x("cuda_runtime", "cudaLaunchKernel", 110, 5, correlation=41),
        {"ph": "s", "id": 41, "pid": 1, "tid": 1, "ts": 110, "cat": "ac2g", "name": "ac2g"},
        _x("kernel", "kernel_x", 300, 7, pid=0, tid=7),  # no args: device/stream from pid/tid
        {"ph": "f", "id": 41, "pid": 0, "tid": 7, "ts": 300, "cat": "ac2g", "name": "ac2g", "bp": "e"},
        _x("kernel", "kernel_y", 400, 7, pid=0, tid=7),  # no flow: no launch, no launcher
    ]
    p = tmp_path / "old.json"
    p.write_text(json.dumps(events))
    ks, st, names = collect(open_trace(p))
    got = {names[int(k["name"])]: (int(k["step"]), int(k["op_class"])) for k in ks}
    assert got["kernel_x"] == (int(st["step"][0]), OP_CLASS_ID["matmul"])  # the launch placed it, aten::mm
    assert got["kernel_y"][1] == OP_CLASS_ID["other"]
