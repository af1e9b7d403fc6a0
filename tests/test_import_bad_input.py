"""Bad input: a one-line LlmtopError or a partial import that counts what it skipped; never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixture_paths import DOPPLER_LOG as DOPPLER
from fixture_paths import HTA_A100 as HTA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from llmtop.errors import LlmtopError
from llmtop.events import OP_CLASS_ID
from llmtop.traces.importers.mapping import layer_of, op_class_of, parse_step, us_to_ns
from llmtop.traces.open import open_trace

HTA_RAW = gzip.decompress(HTA.read_bytes())


def outcome(path: Path) -> str:
    try:
        r = open_trace(path)
        n = sum(len(b) for b in r.batches)
    except LlmtopError as e:
        assert "\n" not in str(e) and str(e)
        return "error"
    return f"ok:{n}:{r.skipped}"


def test_truncated_gzip_is_partial(tmp_path: Path) -> None:
    data = HTA.read_bytes()
    p = tmp_path / "t.json.gz"
    p.write_bytes(data[: len(data) // 2])
    r = open_trace(p)
    assert sum(len(b.kernels) for b in r.batches) < 98
    assert r.skipped >= 1 and any("ended early" in w or "truncated" in w for w in r.warnings)


def test_half_written_json_is_partial(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_bytes(HTA_RAW[: int(len(HTA_RAW) * 0.8)])
    r = open_trace(p)
    assert r.skipped == 1 and any("truncated" in w for w in r.warnings)
    assert 0 < sum(len(b.kernels) for b in r.batches) <= 98


def test_sqlite_not_nsys(tmp_path: Path) -> None:
    p = tmp_path / "x.sqlite"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE users(id INTEGER, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(LlmtopError, match="not an Nsight Systems export"):
        open_trace(p)


def test_foreign_and_empty_files(tmp_path: Path) -> None:
    for name, data in (("a.json", b""), ("b.bin", b"\x00\x01garbage"), ("c.json", b'{"a": 1}'),
                       ("d.txt", b"hello world\n")):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(LlmtopError):
            open_trace(p)
    with pytest.raises(LlmtopError, match="no such file"):
        open_trace(tmp_path / "missing.json")


def test_wrong_types_are_skipped(tmp_path: Path) -> None:
    ok = {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 10, "dur": 2,
          "args": {"correlation": 1, "device": 0, "stream": 7}}
    bad = [dict(ok, ts="abc"), dict(ok, dur=None), dict(ok, name=5),
           dict(ok, args={"correlation": 1, "device": [1], "stream": 7}), "str", 7, None]
    p = tmp_path / "w.json"
    p.write_text(json.dumps({"traceEvents": [ok, *bad, dict(ok, ts=20)]}))
    r = open_trace(p)
    assert sum(len(b.kernels) for b in r.batches) == 2 and r.skipped == len(bad)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=hs.floats(0.0, 1.0), gz=hs.booleans(), flip=hs.integers(0, 255), at=hs.floats(0.0, 1.0))
def test_fuzz_kineto_bytes(cut: float, gz: bool, flip: int, at: float) -> None:
    data = bytearray(HTA_RAW[: int(len(HTA_RAW) * cut)])
    if data:
        data[int((len(data) - 1) * at)] = flip
    raw = gzip.compress(bytes(data)) if gz else bytes(data)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.json"
        p.write_bytes(raw)
        outcome(p)  # must not raise anything but LlmtopError


@settings(max_examples=20, deadline=None)
@given(lines=hs.lists(hs.one_of(hs.text(max_size=40), hs.sampled_from([
    "[browser:warning] [10.0ms][Profile] Batch decode (N=4):",
    "[browser:warning] [10.1ms][Profile] GPU Profile Report",
    "attention                       24.27    21.2", "TOTAL  1.0  100.0", "matmul:q_proj:L3   1e5  2",
])), max_size=30))
def test_fuzz_doppler_lines(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "log.txt"
        p.write_text("[browser:log] start\n" + "\n".join(lines))
        outcome(p)


def test_truncated_doppler_seed(tmp_path: Path) -> None:
    text = DOPPLER.read_text()
    p = tmp_path / "cut.txt"
    p.write_text(text[: len(text) // 3])
    r = open_trace(p)
    assert sum(len(b.steps) for b in r.batches) < text.count("GPU Profile Report")


# The mapping table, one row per rule family.
OP_CASES = [
    ("ampere_sgemm_32x32_sliced1x4_tn", "matmul"),
    ("Cijk_Alik_Bljk_BBS_BH_Bias_HA_S_SAV_UserArgs_MT64x32x256", "matmul"),
    ("NT_matmul7_kernel_2", "matmul"),
    ("void cutlass::Kernel<cutlass_80_tensorop_s16816gemm>", "matmul"),
    ("gemv_addmm (C)", "matmul"),
    ("aten::linear", "matmul"),
    ("_C::onednn_mm", "matmul"),
    ("matmul_rmsnorm_fused:L9.ffn_down", "matmul"),
    ("flash_fwd_splitkv_kernel", "attention"),
    ("fmha_cutlassF_f16_aligned_64x64_rf_sm80", "attention"),
    ("void paged_attention_ll4mi_QKV_mfma16_kernel", "attention"),
    ("batch_decode_paged_kv_kernel", "attention"),
    ("sdpa", "attention"),
    ("_ZN5aiter24add_rmsnorm_quant_kernelIDF16b", "norm"),
    ("fuse_add_norm_prefill_kernel", "norm"),
    ("void rotary_embedding_kernel<c10::BFloat16, true>", "rope"),
    ("metallic::kernels::rope::RoPEOp", "rope"),
    ("aten::embedding", "embedding"),
    ("act_and_mul_kernel", "elementwise"),
    ("aten::silu", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, add>", "elementwise"),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy"),
    ("Memset (Device)", "memcpy"),
    ("void (anonymous namespace)::store_kvcache<2048l>", "memcpy"),
    ("reduce_kernel<512, 1, ReduceOp<float, ArgMaxOps<float>>>", "sampling"),
    ("sample_topk_fused", "sampling"),
    ("aten::empty", "other"),
    ("property_lookup", "other"),
]


@pytest.mark.parametrize(("name", "cls"), OP_CASES)
def test_op_class_table(name: str, cls: str) -> None:
    assert op_class_of(name) == OP_CLASS_ID[cls]


@pytest.mark.parametrize(("name", "layer"), [
    ("nn.Module: LlamaDecoderLayer_12", 12), ("model.layers.7.mlp", 7), ("block_3_total", 3),
    ("blk.21.attn_q", 21), ("matmul:ffn_up:L12", 12), ("matmul_rmsnorm_fused:L9.ffn_down", 9),
    ("_ZN5aiter24add_rmsnorm_quant_kernelIDF16bDF16bLi64ELi8E", -1), ("ampere_sgemm_32x32", -1),
])
def test_layer_table(name: str, layer: int) -> None:
    assert layer_of(name) == layer


def test_step_table() -> None:
    f = parse_step("execute_context_1(4)_generation_0(0)")
    assert (f.phase, f.tokens, f.batch) == (0, 4, 1)
    f = parse_step("execute_context_0(0)_generation_3(3)")
    assert (f.phase, f.tokens, f.batch) == (1, 3, 3)
    f = parse_step("execute_32_context_0(sq0sk0sqsq0sqsk0)_generation_32(sq32sk32785sqsq32sqsk32785)")
    assert (f.phase, f.tokens, f.batch, f.ctx) == (1, 32, 32, 1025)
    assert parse_step("ProfilerStep#7").index == 7
    assert parse_step("step[DECODE bs=32]").batch == 32
    assert parse_step("aten::mm") is None


def test_us_to_ns_exact() -> None:
    assert us_to_ns("1694039959000054.484") == 1694039959000054484
    assert us_to_ns("0.0005") == 1 and us_to_ns(12) == 12000 and us_to_ns("-1.5") == -1500
    assert np.int64(us_to_ns("4909914216204.635")) == 4909914216204635
    # a flipped byte the fuzzer found: the exponent overflows to inf; the event is skipped, not fatal
    for bad in ("16940400100E6553", float("inf"), float("nan"), "-1e999"):
        with pytest.raises(ValueError):
            us_to_ns(bad)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """Reading a FIFO with no writer blocks forever: it is refused before any read."""
    fifo = tmp_path / "trace.json"
    os.mkfifo(fifo)
    for sub in ("report", "export"):
        argv = [sys.executable, "-m", "llmtop", sub, str(fifo)] + (["-o", str(tmp_path / "x.json")]
                                                                 if sub == "export" else [])
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [
            f"llmtop: error: {fifo} is not a regular file (a pipe, socket or device); give a trace file"]


def test_control_characters_in_names_never_reach_the_terminal(tmp_path: Path) -> None:
    """A kernel name carrying an escape sequence (set the window title, clear the screen) is printed
    escaped by text and markdown reports; JSON escapes it by itself."""
    doc = json.loads(HTA_RAW)
    kernel = next(e for e in doc["traceEvents"] if e.get("cat") == "kernel")
    evil = "\x1b]0;pwned\x07\x1b[2J\x9b2J"
    for e in doc["traceEvents"]:
        if e.get("cat") == "kernel" and e.get("name") == kernel["name"]:
            e["name"] = "gemm" + evil
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(doc))
    for fmt in ("text", "markdown", "json"):
        r = subprocess.run([sys.executable, "-m", "llmtop", "report", str(path), "--format", fmt],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not any(c in r.stdout for c in "\x1b\x07\x9b"), fmt
        assert "gemm" in r.stdout


# -- the JSON reader on damaged documents (issue 13) ---------------------------------------------------
def _complete_prefix(text: str) -> int:
    """How many traceEvents elements are complete in a cut Object-form document (stdlib, one by one)."""
    dec = json.JSONDecoder()
    i = text.index("[", text.index('"traceEvents"')) + 1
    n = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return n
        try:
            _, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return n
        n += 1


def test_cut_anywhere_keeps_every_complete_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Object and Array form cut at many places (with small chunks): the events before the cut, a warning."""
    from llmtop.traces import json_stream
    from llmtop.traces.json_stream import WalkStatus, walk

    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 300)
    events = json.loads(HTA_RAW)["traceEvents"][:60]
    text = json.dumps({"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "}, {"}],
                       "traceEvents": events, "traceName": "x"}, indent=1)
    for cut in range(0, len(text), 97):
        st = WalkStatus()
        got = [x for k, v in walk(text[:cut].encode(), "traceEvents", Any, ("deviceProperties",), st)
               if k == "items" for x in v]
        if '"traceEvents"' in text[:cut] and "[" in text[text.index('"traceEvents"'):cut]:
            assert got == events[: _complete_prefix(text[:cut])], cut
            assert st.truncated, cut
    arr = json.dumps(events)
    for cut in range(1, len(arr), 131):
        st = WalkStatus()
        got = [x for k, v in walk(arr[:cut].encode(), "traceEvents", Any, (), st) if k == "items" for x in v]
        assert st.truncated and got == events[: len(got)] and len(got) >= len(events) * cut // len(arr) - 2


def test_a_large_truncated_trace_imports_its_prefix_quickly(tmp_path: Path) -> None:
    """The recovery path is linear: a 20 MB document cut in the middle of its events."""
    ev = ('{"ph": "X", "cat": "kernel", "name": "gemm_%d", "pid": 0, "tid": 7, "ts": %d.250, "dur": 1.5, '
          '"args": {"correlation": %d, "device": 0, "stream": 7, "grid": [1, 1, 1]}}')
    body = ",\n".join(ev % (i % 5, i * 3, i) for i in range(150_000))
    text = '{"deviceProperties": [{"id": 0, "name": "G"}], "traceEvents": [' + body + '], "x": [{"a": 1}]}'
    cut = text[: len(text) // 2]
    p = tmp_path / "cut.json.gz"
    p.write_bytes(gzip.compress(cut.encode(), compresslevel=1))
    t = time.perf_counter()
    r = open_trace(p)
    n = sum(len(b.kernels) for b in r.batches)
    assert n == _complete_prefix(cut) and n > 70_000
    assert r.skipped_by.get("truncated_record") == 1 and any("truncated" in w for w in r.warnings)
    assert time.perf_counter() - t < 60  # about 2 s here


def test_gzip_members_and_damage(tmp_path: Path) -> None:
    """Concatenated gzip members are one document; a cut or corrupt member keeps what came before."""
    from llmtop.traces.json_stream import read_bytes

    raw = HTA_RAW
    p = tmp_path / "multi.json.gz"
    p.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert read_bytes(p) == (raw, None)
    assert sum(len(b.kernels) for b in open_trace(p).batches) == 98
    p.write_bytes(gzip.compress(raw) + b"\0" * 16)  # zero padding after the member
    assert read_bytes(p) == (raw, None)
    z = gzip.compress(raw)
    p.write_bytes(z[: len(z) // 2])
    data, err = read_bytes(p)
    assert raw.startswith(data) and len(data) > 0 and "truncated" in err
    p.write_bytes(z[:2000] + bytes(255 - b for b in z[2000:2100]) + z[2100:])
    data, err = read_bytes(p)
    assert raw.startswith(data) and err and "corrupt" in err


@settings(max_examples=200, deadline=None)
@given(vals=hs.lists(hs.one_of(
    hs.builds(lambda w, f, neg: f"{'-' if neg else ''}{w}.{f:03d}", hs.integers(0, 10**17),
              hs.integers(0, 999), hs.booleans()),
    hs.sampled_from(["1.5", "1e3", "12.3e4", "-0.000", "abc", "1_0.000", " 1.000", "9" * 19 + ".000"]),
    hs.integers(-10**6, 10**6), hs.none()), max_size=20))
def test_bulk_times_equal_the_careful_path(vals: list) -> None:
    """Kineto's bulk µs-text -> ns conversion gives what us_to_ns gives, or defers to it."""
    from llmtop.traces.importers.kineto import _ns, _times

    got = _times(vals)
    if got is None:
        return
    assert got.tolist() == [_ns(v) for v in vals]


# -- the hardening table (issue 14): every importer turns a malformed value into a counted skip -----------
HTA_DOC = json.loads(HTA_RAW)
HTA_KERNELS = [i for i, e in enumerate(HTA_DOC["traceEvents"]) if e.get("cat") == "kernel"]
HTA_EVENTS = 98  # kernels, copies and fills


def hta_with(path: Path, changes: dict[int, dict[str, Any]], literal: dict[str, str] | None = None) -> Path:
    """The HTA trace with some events' fields replaced; `literal` swaps placeholder strings for raw JSON
    text json.dumps cannot write (Infinity, 1e400, 100,000 brackets)."""
    evs = list(HTA_DOC["traceEvents"])
    for i, fields in changes.items():
        evs[i] = {**evs[i], **fields}
    text = json.dumps({**HTA_DOC, "traceEvents": evs})
    for k, v in (literal or {}).items():
        text = text.replace(f'"{k}"', v)
    path.write_text(text)
    return path


@pytest.mark.parametrize("field", ["ts", "dur"])
@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e308", "1e400", "9" * 40, str(2**64),
                                     "1" + "0" * 5000])
def test_nonfinite_and_huge_times_are_counted(tmp_path: Path, field: str, literal: str) -> None:
    """`Infinity`, `1e308`, a huge integer in ts/dur: that kernel is left out as time_out_of_range and named
    (on msgspec's path for valid JSON, on the stdlib's for Infinity/NaN); never an OverflowError."""
    r = open_trace(hta_with(tmp_path / "t.json", {HTA_KERNELS[3]: {field: "__LIT__"}}, {"__LIT__": literal}))
    assert sum(len(b.kernels) for b in r.batches) == HTA_EVENTS - 1
    assert r.skipped_by == {"time_out_of_range": 1}
    assert any("1 of 98 device events failed validation" in w and "'kernel' 1 of 79" in w for w in r.warnings)


def test_negative_and_absurd_kineto_times(tmp_path: Path) -> None:
    """Negative durations and a start decades away from the rest of the trace (still inside int64 ns)."""
    k = HTA_KERNELS
    ts = HTA_DOC["traceEvents"][k[0]]["ts"]
    r = open_trace(hta_with(tmp_path / "t.json", {k[0]: {"dur": -3}, k[1]: {"ts": 4e15}, k[2]: {"ts": -ts},
                                                  k[3]: {"dur": 9e10}}))
    assert sum(len(b.kernels) for b in r.batches) == HTA_EVENTS - 4
    assert r.skipped_by == {"negative_duration": 1, "absurd_timestamp": 2, "absurd_duration": 1}
    assert any("absurd_timestamp" in w for w in r.warnings)
    assert any("absurd_duration" in w for w in r.warnings)


@pytest.mark.parametrize("damaged", [False, True])
@pytest.mark.parametrize("depth", [2000, 100_000])
def test_deep_nesting_is_skipped_not_recursed(tmp_path: Path, depth: int, damaged: bool) -> None:
    """An event nested 100,000 levels deep in its args: left out and counted, the rest kept, on msgspec's
    path and (a NaN elsewhere makes msgspec reject the document) on the stdlib's; also as a meta value."""
    changes = {HTA_KERNELS[5]: {"args": {"deep": "__DEEP__"}}}
    if damaged:
        changes[HTA_KERNELS[6]] = {"dur": "__NAN__"}
    deep = "[" * depth + "]" * depth
    p = hta_with(tmp_path / "t.json", changes, {"__DEEP__": deep, "__NAN__": "NaN"})
    r = open_trace(p)
    assert sum(len(b.kernels) for b in r.batches) == HTA_EVENTS - 1 - damaged
    assert r.skipped_by.get("too_deeply_nested") == 1
    assert any("nest deeper" in w for w in r.warnings)
    text = p.read_text()
    p.write_text('{"distributedInfo": ' + deep + ", " + text[1:])  # a deep value outside traceEvents
    r = open_trace(p)
    assert sum(len(b.kernels) for b in r.batches) == HTA_EVENTS - 1 - damaged


def test_every_device_event_invalid_is_named_not_replaced(tmp_path: Path) -> None:
    """All kernels, copies and fills malformed: counted and named by category; the CPU ops shown instead
    are announced as that, never as a 'CPU-only trace'."""
    changes = {i: {"ts": "bad"} for i, e in enumerate(HTA_DOC["traceEvents"])
               if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")}
    r = open_trace(hta_with(tmp_path / "t.json", changes))
    assert r.skipped_by["malformed_record"] == 98
    assert any("98 of 98 device events failed validation" in w and "'gpu_memcpy' 16 of 16" in w
               and "shows the CPU side" in w for w in r.warnings)
    assert not any(w.startswith("CPU-only trace") for w in r.warnings)
    assert any(w.startswith("no valid device events") for w in r.warnings)


def test_device_events_with_a_damaged_phase_or_category_are_counted(tmp_path: Path) -> None:
    k = HTA_KERNELS
    r = open_trace(hta_with(tmp_path / "t.json", {k[0]: {"ph": "P"}, k[1]: {"ph": 5}, k[2]: {"cat": "kernal"},
                                                  k[3]: {"cat": None}}))
    assert sum(len(b.kernels) for b in r.batches) == HTA_EVENTS - 4
    assert r.skipped_by == {"malformed_record": 2, "unknown_device_category": 2}


def _nsys(tmp_path: Path, *sql: str) -> Path:
    from fixture_paths import NSYS_A100

    p = tmp_path / "n.sqlite"
    p.write_bytes(NSYS_A100.read_bytes())
    con = sqlite3.connect(p)
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()
    return p


FIRST_KERNEL = "WHERE rowid = (SELECT min(rowid) FROM CUPTI_ACTIVITY_KIND_KERNEL)"


@pytest.mark.parametrize(("sql", "reason"), [
    (f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET start = 9223372036854775000, end = 9223372036854775800 "
     f"{FIRST_KERNEL}", "time_out_of_range"),
    (f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET end = 9223372036854775000 {FIRST_KERNEL}", "time_out_of_range"),
    (f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET start = -9223372036854775000 {FIRST_KERNEL}",
     "time_out_of_range"),
    (f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET start = 1e300 {FIRST_KERNEL}", "malformed_record"),
    (f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET deviceId = 'x' {FIRST_KERNEL}", "malformed_record"),
    (f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET end = start - 5 {FIRST_KERNEL}", "negative_duration"),
    (f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET start = start - 100000000000000000, end = end - "
     f"100000000000000000 {FIRST_KERNEL}", "absurd_timestamp"),
])
def test_nsys_impossible_rows_are_counted(tmp_path: Path, sql: str, reason: str) -> None:
    """nsys start near 2^63 used to allocate 275 GiB; now that row is checked before any array is built."""
    r = open_trace(_nsys(tmp_path, sql))
    assert sum(len(b.kernels) for b in r.batches) == 19
    assert r.skipped_by == {reason: 1}
    assert any(reason.replace("_", " ") in w or reason in w for w in r.warnings)


def test_nsys_blobs_and_odd_launches(tmp_path: Path) -> None:
    """BLOBs where nsys writes text (StringIds, a name column, NVTX text), a launch and an NVTX range near
    2^63: placeholders and counts, never a TypeError."""
    r = open_trace(_nsys(
        tmp_path,
        "UPDATE StringIds SET value = X'00FF10' WHERE id = (SELECT demangledName FROM "
        "CUPTI_ACTIVITY_KIND_KERNEL ORDER BY rowid DESC LIMIT 1)",
        f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET demangledName = X'0102' {FIRST_KERNEL}",
        "UPDATE NVTX_EVENTS SET text = X'0102' WHERE rowid = (SELECT min(rowid) FROM NVTX_EVENTS)",
        "UPDATE CUPTI_ACTIVITY_KIND_RUNTIME SET start = 9223372036854775000 WHERE rowid = "
        "(SELECT min(rowid) FROM CUPTI_ACTIVITY_KIND_RUNTIME)",
        "UPDATE NVTX_EVENTS SET start = 9223372036854775000, end = 9223372036854775800 WHERE rowid = "
        "(SELECT min(rowid) FROM NVTX_EVENTS WHERE end IS NOT NULL)",
    ))
    names = list(r.names.names)
    assert sum(len(b.kernels) for b in r.batches) == 20
    assert "<kernel name: not text>" in names and any(n.startswith("<string ") for n in names)
    assert r.skipped_by == {"malformed_launch": 1, "malformed_range": 1}
    assert any("StringIds: 1 values are not text" in w for w in r.warnings)
    assert any("1 kernel names are neither text" in w for w in r.warnings)


def test_doppler_impossible_numbers(tmp_path: Path) -> None:
    """Huge row sums and log times, and a report logged before the one it follows: counted, no
    OverflowError; a log cut between reports says so."""
    import re

    lines = DOPPLER.read_text().splitlines()
    row = next(i for i, x in enumerate(lines) if x.startswith("attention "))
    lines[row] = re.sub(r"\d+\.\d+", "9" * 40, lines[row], count=1)
    head = [i for i, x in enumerate(lines) if "Batch decode" in x]
    lines[head[1]] = re.sub(r"\[\d+\.\d+ms\]", "[1.0ms]", lines[head[1]])
    lines[head[2]] = re.sub(r"\[\d+\.\d+ms\]", "[" + "9" * 30 + "ms]", lines[head[2]])
    p = tmp_path / "d.log"
    p.write_text("\n".join(lines) + "\n")
    r = open_trace(p)
    assert r.skipped_by["time_out_of_range"] == 1 and r.skipped_by["negative_duration"] > 10
    assert any("reports are missing or damaged" in w for w in r.warnings)
    p.write_text("\n".join(lines[: head[5]]) + "\n")
    assert any("cut short?" in w for w in open_trace(p).warnings)


def _metallic(ts: str, dur: Any, typ: str = "GpuOpCompleted") -> str:
    data = ({"op_name": "Generation Loop/block_0/sdpa", "backend": "Metal", "duration_us": dur}
            if typ == "GpuOpCompleted" else {"internal_kernel_name": "iteration_total", "duration_us": dur})
    return json.dumps({"timestamp": ts, "span_id": 1, "event": {"type": typ, "data": data}})


def test_metallic_impossible_values(tmp_path: Path) -> None:
    ok = [_metallic(f"2025-10-01T10:00:00.{100 + i:06d}000Z", 20) for i in range(5)]
    bad = [_metallic("2025-10-01T10:00:01.000000000Z", "INF"), _metallic("2025-10-01T10:00:01Z", 1e308),
           _metallic("2025-10-01T10:00:01Z", 10**40), _metallic("2025-10-01T10:00:01Z", -5),
           _metallic("9999-12-31T23:59:59Z", 5), _metallic("0001-01-01T00:00:00Z", 5),
           _metallic("2025-10-01T10:00:01Z", -50, "InternalKernelCompleted"),
           _metallic("2025-10-01T10:00:01Z", "DEEP")]
    p = tmp_path / "m.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    p.write_text("\n".join(ok + bad).replace('"INF"', "Infinity").replace('"DEEP"', deep) + "\n")
    r = open_trace(p)
    assert sum(len(b.kernels) for b in r.batches) == 5
    assert r.skipped_by == {"time_out_of_range": 5, "negative_duration": 2, "too_deeply_nested": 1}
    assert sum(1 for w in r.warnings if w.startswith("left out")) == 3


def test_recording_impossible_rows(tmp_path: Path) -> None:
    """A recording with a negative duration (TTFT -5,003 ms), a start past int64 ns, one decades away and a
    name id past its name table: those rows are left out and counted, the rest reported."""
    from llmtop.collectors.synthetic import SyntheticEngine
    from llmtop.traces.recording import RecordingWriter

    eng = SyntheticEngine(n_layers=3, step_time_s=0.0)
    p = tmp_path / "r.llmtop"
    total = 0
    with RecordingWriter(p, eng.source_info()) as w:
        for i in range(3):
            eng.generate(["p"] * 2, 4)
            b = eng.ops.recorder.drain()
            total += len(b.kernels)
            if i == 1:
                b.kernels["dur_ns"][0] = -5_003_000_000
                b.kernels["start_ns"][1] = (1 << 62) + 5
                b.kernels["start_ns"][2] += 10**17
                b.kernels["name"][3] = 2**31 - 1
                b.steps["dur_ns"][0] = -5_003_000_000
            w.write(b)
    r = open_trace(p)
    assert sum(len(b.kernels) for b in r.batches) == total - 4
    assert r.skipped_by == {"impossible_values": 2, "time_out_of_range": 1, "absurd_timestamp": 1,
                            "unknown_name": 1}


def test_max_bytes_sizes() -> None:
    from llmtop.traces.registry import ReadLimits, parse_size

    assert parse_size("4G") == parse_size("4GiB") == 4 << 30 and parse_size("4GB") == 4 * 10**9
    assert parse_size("512M") == 512 << 20 and parse_size("1.5k") == 1536 and parse_size("1000") == 1000
    for bad in ("", "0", "-1", "4X", "G", "9" * 400):
        with pytest.raises(ValueError):
            parse_size(bad)
    d = ReadLimits()
    assert d.allowed(1000) == 64 << 20 and d.allowed(100 << 20) == 8 << 30 and d.allowed(1 << 20) == 200 << 20
    assert d.allowed(2 << 20) == 400 << 20 and ReadLimits.explicit(5).allowed(10**9) == 5


def test_bounded_decompression_in_process(tmp_path: Path) -> None:
    """A lying gzip trailer, several members and plain files all stop at the limit they hit, in one line."""
    from llmtop.traces.json_stream import read_bytes
    from llmtop.traces.registry import ReadLimits

    p = tmp_path / "b.json.gz"
    z = gzip.compress(b" " * 3_000_000)
    p.write_bytes(z[:-4] + (1000).to_bytes(4, "little"))  # the trailer claims 1000 bytes
    with pytest.raises(LlmtopError, match="the --max-bytes limit"):
        read_bytes(p, ReadLimits.explicit(2_000_000))
    p.write_bytes(gzip.compress(b" " * 1_500_000) * 2)  # two members: 3 MB in all
    with pytest.raises(LlmtopError, match=r"decompresses to more than 1\.9 MiB, the --max-bytes limit"):
        read_bytes(p, ReadLimits.explicit(2_000_000))
    assert len(read_bytes(p, ReadLimits.explicit(3_000_000))[0]) == 3_000_000
    with pytest.raises(LlmtopError, match=r"10 times its compressed size .*the ratio limit"):
        read_bytes(p, ReadLimits(max_ratio=10, ratio_floor=0))
    q = tmp_path / "plain.json"
    q.write_bytes(HTA_RAW)
    with pytest.raises(LlmtopError, match="more than 1000 bytes: the --max-bytes limit"):
        open_trace(q, max_bytes=1000)
    assert sum(len(b.kernels) for b in open_trace(q, max_bytes=len(HTA_RAW)).batches) == HTA_EVENTS
