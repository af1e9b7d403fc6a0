"""The llmtop recording format: exact round trips, truncated and foreign files, kill -9 survival."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as hs
from hypothesis.control import currently_in_test_context

from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.errors import LlmtopError
from llmtop.events import (
    DECODE,
    KERNEL_DTYPE,
    PREFILL,
    STEP_DTYPE,
    CounterSample,
    EventBatch,
    Item,
    Marker,
    NameTable,
    SourceInfo,
)
from llmtop.traces.open import detect_format, open_trace_file
from llmtop.traces.recording import (
    FORMAT_VERSION,
    LOST_NAME,
    MAGIC,
    NAME_REPEAT_BYTES,
    NAME_REPEAT_RECORDS,
    REC_HEAD_SIZE,
    SYNC,
    RecordingReader,
    RecordingWriter,
    batch_time_ns,
    is_recording,
)

REPO = Path(__file__).resolve().parents[1]


def synth_batches(n_rounds: int = 3, tokens: int = 6) -> tuple[SyntheticEngine, list[EventBatch]]:
    eng = SyntheticEngine(n_layers=3, step_time_s=0.0)
    out = []
    for _ in range(n_rounds):
        eng.generate(["p"] * 2, tokens)
        b = eng.ops.recorder.drain()
        assert b is not None
        out.append(b)
    # a name added mid-stream (importers and agents do this) must travel with the next batch
    eng.ops.recorder.kernel_id("custom:fused_thing", "other")
    eng.generate(["p"], 2)
    out.append(eng.ops.recorder.drain())
    return eng, out


def write_items(path: Path, eng: SyntheticEngine, items: list, **kw) -> RecordingWriter:
    w = RecordingWriter(path, eng.source_info(), **kw)
    for it in items:
        w.write(it)
    w.close()
    return w


@pytest.mark.parametrize("level", [0, 1, 6])
def test_round_trip_is_byte_exact(tmp_path: Path, level: int) -> None:
    eng, batches = synth_batches()
    sample = CounterSample("process", 456, {"cpu_pct": 97.5, "rss": 1e8})
    items = [Marker(123, "round 0"), *batches[:2], sample, *batches[2:]]
    p = tmp_path / "run.llmtop"
    w = write_items(p, eng, items, compress_level=level)
    assert w.records_written == len(items)
    assert is_recording(p)
    with RecordingReader(p) as r:
        assert r.source == eng.source_info()
        assert r.format_version == FORMAT_VERSION
        got = list(r)
        assert r.truncated is None
    assert len(got) == len(items)
    for (t, g), want in zip(got, items, strict=True):
        assert type(g) is type(want)
        if isinstance(want, EventBatch):
            assert g.kernels.dtype == want.kernels.dtype and g.kernels.tobytes() == want.kernels.tobytes()
            assert g.steps.tobytes() == want.steps.tobytes()
            assert (g.names_base, g.new_names) == (want.names_base, want.new_names)
            assert t == int((want.steps["start_ns"] + want.steps["dur_ns"]).max())
        else:
            assert g == want and t == want.t_ns
    # names resolve in order on the consumer side, including the one added mid-stream
    table = NameTable()
    for _, g in got:
        if isinstance(g, EventBatch):
            table.extend(g.names_base, g.new_names)
    assert table.names == eng.ops.recorder.names.names
    assert "custom:fused_thing" in table.names


def test_compact(tmp_path: Path) -> None:
    eng, batches = synth_batches(n_rounds=4, tokens=16)
    n = sum(len(b.kernels) for b in batches)
    raw = write_items(tmp_path / "raw.llmtop", eng, batches, compress_level=0).bytes_written
    z = write_items(tmp_path / "z.llmtop", eng, batches, compress_level=1).bytes_written
    assert raw / n < 60  # ~50 bytes per kernel row plus the step rows and headers
    assert z < raw


def record_spans(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(where the records begin, [(start, end) byte range of each record]) of an intact v2 recording."""
    pos = data_start = 16 + int.from_bytes(data[12:16], "little") + 4
    spans = []
    while pos < len(data):
        assert data[pos : pos + len(SYNC)] == SYNC
        end = pos + REC_HEAD_SIZE + int.from_bytes(data[pos + 16 : pos + 20], "little")
        spans.append((pos, end))
        pos = end
    assert pos == len(data)
    return data_start, spans


def test_every_truncation_point_replays_a_prefix(tmp_path: Path) -> None:
    eng, batches = synth_batches(n_rounds=2, tokens=3)
    items = [*batches, CounterSample("gpu0", 9, {"util_pct": 50.0}), Marker(10, "end")]
    full = tmp_path / "full.llmtop"
    write_items(full, eng, items, compress_level=1)
    data = full.read_bytes()
    header_end, spans = record_spans(data)
    ends = [e for _, e in spans]
    assert len(spans) == len(items)
    cut = tmp_path / "cut.llmtop"
    # every cut inside the data section: complete records come back, the tail is reported as cut short,
    # never as corruption
    for off in list(range(header_end, len(data), 7)) + [e - 1 for e in ends] + [s + k for s, _ in spans
                                                                                 for k in (1, 8, 35, 36)]:
        cut.write_bytes(data[:off])
        with RecordingReader(cut) as r:
            got = list(r)
        complete = sum(1 for e in ends if e <= off)
        assert len(got) == complete, off
        assert (r.truncated is None) == (off in ends or off == header_end), off
        assert r.corrupt == [] and r.corrupt_records == 0, off
        if r.truncated:
            assert "cut short" in r.truncated and "\n" not in r.truncated
            assert r.problems() == [r.truncated]
    # cut inside the header: nothing to replay, one-line error
    for off in (3, 10, header_end - 2):
        cut.write_bytes(data[:off])
        with pytest.raises(LlmtopError, match="truncated inside its header"):
            RecordingReader(cut)


def test_a_corrupt_last_record_is_corruption_not_a_cut(tmp_path: Path) -> None:
    eng, batches = synth_batches(n_rounds=2)
    p = tmp_path / "c.llmtop"
    write_items(p, eng, batches)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the last record's payload
    p.write_bytes(bytes(data))
    with RecordingReader(p) as r:
        got = list(r)
    assert len(got) == len(batches) - 1
    assert r.truncated is None and r.corrupt == [[len(batches), len(batches)]]
    assert r.problems() == [f"c.llmtop: record {len(batches)} of {len(batches)} corrupt: skipped; "
                            f"{len(batches) - 1} kept"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b'{"traceEvents": []}', "not an llmtop recording"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not an llmtop recording"),
        (MAGIC + (FORMAT_VERSION + 1).to_bytes(2, "little") + b"\0\0" + b"\2\0\0\0{}" + b"\0" * 4, "version"),
        (MAGIC + (1).to_bytes(2, "little") + b"\0\0" + b"\4\0\0\0nope" + b"\0" * 4, "checksum"),
    ],
)
def test_foreign_or_bad_files_raise_one_line(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "bad.llmtop"
    p.write_bytes(content)
    with pytest.raises(LlmtopError, match=match) as e:
        RecordingReader(p)
    assert "\n" not in str(e.value)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LlmtopError, match="cannot read"):
        RecordingReader(tmp_path / "nope.llmtop")
    with pytest.raises(LlmtopError, match="directory"):
        RecordingReader(tmp_path)
    with pytest.raises(LlmtopError, match="cannot write"):
        RecordingWriter(tmp_path / "no" / "such" / "dir.llmtop", SyntheticEngine().source_info())


def test_background_flush_without_new_writes(tmp_path: Path) -> None:
    eng, batches = synth_batches(n_rounds=1, tokens=2)
    p = tmp_path / "f.llmtop"
    w = RecordingWriter(p, eng.source_info(), flush_interval=0.2)
    size0 = p.stat().st_size
    w.write(batches[0])  # small: sits in the userspace buffer until a flush
    deadline = time.monotonic() + 2.0
    while p.stat().st_size == size0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.stat().st_size > size0, "nothing flushed without further writes"
    with RecordingReader(p) as r:
        assert len(list(r)) == 1
    w.close()


CHILD = r"""
import sys, threading, time
from llmtop.collectors.engine import EngineCollector
from llmtop.collectors.process import ProcessCollector
from llmtop.collectors.pipeline import Pipeline
from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.traces.recording import RecordingWriter

class Sink:  # the child only records; what it aggregates does not matter here
    def set_source(self, s): pass
    def ingest(self, b): pass
    def note_dropped(self, c, n): pass
    def note_cost(self, c, s): pass

eng = SyntheticEngine(n_layers=2, step_time_s=0.02)
w = RecordingWriter(sys.argv[1], eng.source_info(), flush_interval=0.5)
p = Pipeline(Sink(), writer=w)
p.add(EngineCollector(eng, loop=True, max_new_tokens=16))
p.add(ProcessCollector(interval=0.2))
p.start()
while True:  # report progress: records handed to the writer by a given monotonic time
    print(time.monotonic(), w.records_written, flush=True)
    time.sleep(0.05)
"""


def test_sigkill_recording_replays_up_to_last_flush(tmp_path: Path) -> None:
    path = tmp_path / "killed.llmtop"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    progress: list[tuple[float, int]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            t, n = line.split()
            progress.append((float(t), int(n)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not (progress and progress[-1][1] > 0) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        assert progress, "child never started"
        time.sleep(2.0)  # >= 1.5 s of recording
    finally:
        t_kill = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reader.join(5)
    assert proc.returncode == -signal.SIGKILL
    # Everything written a second before the kill must have been flushed (flush_interval 0.5 s).
    flushed = max((n for t, n in progress if t <= t_kill - 1.0), default=0)
    assert flushed > 0
    with RecordingReader(path) as r:
        got = list(r)
        truncated = r.truncated
    assert len(got) >= flushed
    batches = [b for _, b in got if isinstance(b, EventBatch)]
    counters = [c for _, c in got if isinstance(c, CounterSample)]
    assert batches and counters
    # the replayed stream is self-consistent: names resolve, steps are whole
    table = NameTable()
    for b in batches:
        table.extend(b.names_base, b.new_names)
        assert int(b.kernels["name"].max()) < len(table)
        assert np.all(np.isin(b.kernels["step"], b.steps["step"]))
    assert truncated is None or "cut short" in truncated


# -- old recordings still read: reference files written by the code before the shared codec ------
REFERENCE_DIR = REPO / "tests" / "fixtures" / "llmtop"
REFERENCE_CREATED_UNIX = 1700000000.0
REFERENCE_VERSION = "0.0.0-fixture"


def reference_source() -> SourceInfo:
    return SourceInfo(kind="live", backend="cpu", device="fixture cpu", model="tiny", dtype="f32",
                      timing="perf_counter_ns", max_context=128, n_layers=2, extra={"note": "reference"})


def reference_items() -> list[tuple[Item, int | None]]:
    """Fixed items (and explicit record times where the writer would otherwise read the clock)."""
    k = np.zeros(6, KERNEL_DTYPE)
    k["name"] = [0, 1, 2, 0, 1, 2]
    k["op_class"] = [0, 1, 2, 0, 1, 2]
    k["phase"] = [PREFILL] * 3 + [DECODE] * 3
    k["layer"] = [0, 0, 1, 1, -1, -1]
    k["step"] = [0, 0, 0, 1, 1, 1]
    k["batch"], k["ctx"] = 2, [5, 5, 5, 6, 6, 6]
    k["start_ns"] = np.arange(6) * 1000 + 10_000
    k["dur_ns"] = np.arange(6) * 10 + 500
    k["m"], k["n"], k["k"] = [2, 0, 0, 2, 0, 0], [64, 0, 0, 64, 0, 0], [32, 0, 0, 32, 0, 0]
    s = np.zeros(2, STEP_DTYPE)
    s["phase"], s["step"], s["tokens"], s["batch"], s["ctx"] = [PREFILL, DECODE], [0, 1], [10, 2], 2, [5, 6]
    s["start_ns"], s["dur_ns"], s["kernel_ns"] = [10_000, 13_000], [3000, 3000], [1530, 1560]
    big = np.zeros(40, KERNEL_DTYPE)  # > 256 bytes: compressed when the level allows it
    big["name"] = np.arange(40) % 4
    big["phase"], big["step"], big["track"] = DECODE, 2, np.arange(40) % 3
    big["start_ns"] = 20_000 + np.arange(40) * 100
    big["dur_ns"] = 90
    s2 = np.zeros(1, STEP_DTYPE)
    s2["phase"], s2["step"], s2["tokens"], s2["start_ns"], s2["dur_ns"] = DECODE, 2, 1, 20_000, 4100
    s2["kernel_ns"] = -1
    return [
        (EventBatch(k, s, 0, ["matmul_q", "attn_é", "norm"]), None),
        (CounterSample("process", 16_000, {"cpu_pct": 97.5, "rss_bytes": 1.5e8}), None),
        (Marker(17_000, "round 1 ✓"), None),
        (EventBatch(big, s2, 3, ["lm_head"]), None),
        (EventBatch(names_base=4, new_names=["late_name"]), 25_000),
    ]


def write_reference(path: Path, compress_level: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import llmtop.traces.recording as recording

    monkeypatch.setattr(recording, "LLMTOP_VERSION", REFERENCE_VERSION)
    with monkeypatch.context() as m:
        m.setattr(recording.time, "time", lambda: REFERENCE_CREATED_UNIX)
        w = RecordingWriter(path, reference_source(), compress_level=compress_level)
    for item, t in reference_items():
        w.write(item, t)
    w.close()


def _records(data: bytes) -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """(file header bytes, [(type, flags, t_ns, decompressed payload)]) of a whole recording."""
    version = int.from_bytes(data[8:10], "little")
    hlen = int.from_bytes(data[12:16], "little")
    pos = 16 + hlen + 4
    head, at = (20, 0) if version == 1 else (REC_HEAD_SIZE, len(SYNC))  # at: where type is
    len_at, t_at = (at + 4, at + 8) if version == 1 else (at + 8, at + 12)
    out = []
    while pos < len(data):
        rtype, flags = data[pos + at], data[pos + at + 1]
        plen = int.from_bytes(data[pos + len_at : pos + len_at + 4], "little")
        t_ns = int.from_bytes(data[pos + t_at : pos + t_at + 8], "little", signed=True)
        payload = data[pos + head : pos + head + plen]
        out.append((rtype, flags, t_ns, zlib.decompress(payload) if flags & 1 else payload))
        pos += head + plen
    return data[: 16 + hlen + 4], out


def assert_reference_items(got: list[tuple[int, Item]]) -> None:
    want = reference_items()
    assert len(got) == len(want)
    for (t, item), (w, wt) in zip(got, want, strict=True):
        if isinstance(w, EventBatch):
            assert isinstance(item, EventBatch)
            assert np.array_equal(item.kernels, w.kernels) and np.array_equal(item.steps, w.steps)
            assert (item.names_base, item.new_names) == (w.names_base, w.new_names)
            assert t == (wt if wt is not None else batch_time_ns(w))
        else:
            assert item == w and t == w.t_ns


@pytest.mark.parametrize("name", ["reference_v1_raw.llmtop", "reference_v1.llmtop"])
def test_version_1_recordings_still_read_unchanged(name: str) -> None:
    """Files written before record checksums had sync markers (format 1) read item for item."""
    ref = REFERENCE_DIR / name
    with RecordingReader(ref) as r:
        assert r.format_version == 1 < FORMAT_VERSION
        assert r.source == reference_source() and r.header["llmtop_version"] == REFERENCE_VERSION
        got = list(r)
        assert r.problems() == [] and r.records_read == len(got) == r.records_total
    assert_reference_items(got)
    tf = open_trace_file(ref)
    assert tf.format == "llmtop" and tf.source == reference_source()
    assert [(t, type(i)) for t, i in tf.records] == [(t, type(i)) for t, i in got]
    assert tf.warnings == [] and tf.skipped_by == {}
    assert detect_format(ref) == "recording"


@pytest.mark.parametrize(("name", "level"),
                         [("reference_v2_gpu_raw.llmtop", 0), ("reference_v2_gpu.llmtop", 1)])
def test_recording_reads_and_is_written_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       name: str, level: int) -> None:
    """Today's writer (format 2, step rows with the CUPTI busy/idle columns) reproduces the reference."""
    ref = REFERENCE_DIR / name
    with RecordingReader(ref) as r:
        assert r.format_version == 2 == FORMAT_VERSION
        assert r.source == reference_source() and r.header["llmtop_version"] == REFERENCE_VERSION
        assert [f[0] for f in r.header["step_dtype"]] == list(STEP_DTYPE.names)
        got = list(r)
        assert r.problems() == []
    assert_reference_items(got)  # the names the writer repeats come out once
    # what the current writer makes of the same items is the reference, byte for byte
    out = tmp_path / name
    write_reference(out, level, monkeypatch)
    if level == 0:
        assert out.read_bytes() == ref.read_bytes()
    else:  # another zlib build may compress differently: then the headers and decompressed records match
        mine, theirs = out.read_bytes(), ref.read_bytes()
        assert mine == theirs or _records(mine) == _records(theirs)
    # and it opens through the format registry like any trace: every item, in order, with its time
    tf = open_trace_file(ref)
    assert tf.format == "llmtop" and tf.source == reference_source()
    assert [(t, type(i)) for t, i in tf.records] == [(t, type(i)) for t, i in got]
    assert detect_format(ref) == "recording"


@pytest.mark.parametrize("name", ["reference_v2_raw.llmtop", "reference_v2.llmtop"])
def test_format_2_recordings_with_older_step_rows_still_read(name: str) -> None:
    """Format-2 files written before the step rows gained busy_ns / idle_ns: the header names the older
    layout, the reader converts (the new columns read 0: not sampled)."""
    ref = REFERENCE_DIR / name
    with RecordingReader(ref) as r:
        assert r.format_version == 2 == FORMAT_VERSION
        assert "busy_ns" not in [f[0] for f in r.header["step_dtype"]]
        got = list(r)
        assert r.problems() == []
    assert_reference_items(got)
    # version 1 and 2 hold the same records: only the framing and the repeated names differ
    v1 = _records((REFERENCE_DIR / name.replace("v2", "v1")).read_bytes())[1]
    v2 = _records(ref.read_bytes())[1]
    assert [(t, ts) for t, _, ts, _ in v2] == [(t, ts) for t, _, ts, _ in v1]
    assert [p for *_, p in v2[:3]] == [p for *_, p in v1[:3]]  # the later batches repeat earlier names
    tf = open_trace_file(ref)
    assert [(t, type(i)) for t, i in tf.records] == [(t, type(i)) for t, i in got]


def test_impossible_values_and_empty_recordings_are_reported(tmp_path: Path) -> None:
    """A negative duration (a damaged file, a buggy writer) is skipped and counted, never folded into a
    negative TTFT; a recording with only its header says so. Both still exit 0."""
    import contextlib
    import io

    from llmtop.cli import main
    from llmtop.events import DECODE, KERNEL_DTYPE, PREFILL, STEP_DTYPE, EventBatch, SourceInfo
    from llmtop.traces.recording import RecordingWriter

    k = np.zeros(2, KERNEL_DTYPE)
    k["dur_ns"], k["start_ns"] = [1000, -5_003_000_000], [10, 20]
    s = np.zeros(2, STEP_DTYPE)
    s["phase"], s["tokens"], s["batch"], s["ctx"] = [PREFILL, DECODE], [4, 1], 1, [4, 5]
    s["start_ns"], s["dur_ns"], s["kernel_ns"] = [0, 100], [-5_003_000_000, 2_000_000], [1000, 0]
    bad, empty = tmp_path / "neg.llmtop", tmp_path / "empty.llmtop"
    with RecordingWriter(bad, SourceInfo(kind="live")) as w:
        w.write(EventBatch(k, s, 0, ["matmul:x"]))
    RecordingWriter(empty, SourceInfo(kind="live")).close()
    for path, warning, events in ((bad, "skipped 2 events with impossible values", 1),
                                  (empty, "holds no events (only its header)", 0)):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["report", str(path), "--format", "json"])
        rep = json.loads(out.getvalue())
        assert rc == 0 and warning in err.getvalue() and rep["events"] == events
        assert rep["tokens"]["ttft_ms"] is None or rep["tokens"]["ttft_ms"] >= 0


# -- damage: a corrupt record is skipped and named, the rest is kept ------------------------------
def fuzz_items() -> tuple[list[tuple[Item, int]], list[str], dict[int, int]]:
    """Items (with record times) whose batches add kernel names now and then and use the newest, the
    writer's name table, and name id -> index among the batch records of the batch that added it."""
    rng = np.random.default_rng(7)
    names: list[str] = []
    added_by: dict[int, int] = {}
    items: list[tuple[Item, int]] = []
    n_batches = 0
    for i in range(40):
        t = 1_000_000 * (i + 1)
        if i % 6 == 5:
            items.append((CounterSample("process", t, {"cpu_pct": float(i), "rss_bytes": 1e8 + i}), t))
            continue
        if i % 9 == 4:
            items.append((Marker(t, f"round {i} ✓"), t))
            continue
        new = [f"kernel:{i}:{j}" for j in range(3 if i == 0 else (1 if i % 4 == 1 else 0))]
        base = len(names)
        for j in range(len(new)):
            added_by[base + j] = n_batches
        names += new
        n_batches += 1
        if i == 21:  # a names-only batch
            items.append((EventBatch(names_base=base, new_names=new), t))
            continue
        n = 12 + i % 5
        k = np.zeros(n, KERNEL_DTYPE)
        k["name"] = rng.integers(0, len(names), n)
        k["name"][-1] = len(names) - 1
        k["phase"], k["step"], k["batch"], k["ctx"] = DECODE, i, 1, i + 3
        k["start_ns"] = t - 100_000 + np.arange(n) * 1000
        k["dur_ns"] = rng.integers(100, 900, n)
        s = np.zeros(1, STEP_DTYPE)
        s["phase"], s["step"], s["tokens"], s["batch"], s["ctx"] = DECODE, i, 1, 1, i + 3
        s["start_ns"], s["dur_ns"], s["kernel_ns"] = t - 100_000, 100_000, int(k["dur_ns"].sum())
        items.append((EventBatch(k, s, base, new), t))
    return items, names, added_by


FUZZ_ITEMS, FUZZ_NAMES, FUZZ_ADDED_BY = fuzz_items()


def _fuzz_recording() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.llmtop"
        with RecordingWriter(p, SourceInfo(kind="live", backend="cpu")) as w:
            for item, t in FUZZ_ITEMS:
                w.write(item, t)
        return p.read_bytes()


FUZZ_DATA = _fuzz_recording()
FUZZ_START, FUZZ_SPANS = record_spans(FUZZ_DATA)
FUZZ_BATCH_INDEX = {}  # record index -> index among the batch records
for _i, (_it, _) in enumerate(FUZZ_ITEMS):
    if isinstance(_it, EventBatch):
        FUZZ_BATCH_INDEX[_i] = len(FUZZ_BATCH_INDEX)
FUZZ = settings(max_examples=300, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _runs(numbers: set[int]) -> list[str]:
    out: list[list[int]] = []
    for x in sorted(numbers):
        if out and out[-1][1] == x - 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return [f"{a}" if a == b else f"{a}-{b}" for a, b in out]


def check_damaged(path: Path, damaged: bytes) -> RecordingReader:
    """Read a damaged copy of FUZZ_DATA and check it against what the damage touched: every record whose
    bytes are intact comes back exactly, names resolve, and the warnings name the damaged records."""
    path.write_bytes(damaged)
    changed = [damaged[s:e] != FUZZ_DATA[s:e] for s, e in FUZZ_SPANS]  # a cut-off record counts as changed
    kept = [i for i, c in enumerate(changed) if not c]
    with RecordingReader(path) as r:
        got = list(r)  # no exception, whatever the damage
    assert len(got) == len(kept) == r.records_read
    table = NameTable()
    kept_batches = {FUZZ_BATCH_INDEX[i] for i in kept if i in FUZZ_BATCH_INDEX}
    for (t, g), i in zip(got, kept, strict=True):
        want, want_t = FUZZ_ITEMS[i]
        assert type(g) is type(want) and t == want_t
        if not isinstance(want, EventBatch):
            assert g == want
            continue
        assert isinstance(g, EventBatch)
        assert g.kernels.tobytes() == want.kernels.tobytes() and g.steps.tobytes() == want.steps.tobytes()
        assert g.names_base == len(table)  # names arrive in order: no gap, no repeat
        table.extend(g.names_base, g.new_names)
        for x in g.kernels["name"].tolist():
            b = FUZZ_ADDED_BY[x]  # a name rides in the batch record adding it and the next R - 1
            recovered = any(j in kept_batches for j in range(b, b + NAME_REPEAT_RECORDS))
            assert table[x] == (FUZZ_NAMES[x] if recovered else f"<lost name {x}>"), (x, b)
    # records wholly past a cut are gone, not damaged
    damaged_numbers = {i + 1 for i, c in enumerate(changed) if c and FUZZ_SPANS[i][0] < len(damaged)}
    reported = {x for a, b in r.corrupt for x in range(a, b + 1)}
    assert r.corrupt_records == len(reported)
    last_kept = kept[-1] + 1 if kept else 0
    # up to the last intact record the seq numbers make the count exact ...
    assert {x for x in reported if x <= last_kept} == {x for x in damaged_numbers if x <= last_kept}
    # ... a damaged tail is reported from its first record on (or as cut short when the file ends early)
    tail = {x for x in damaged_numbers if x > last_kept}
    if tail:
        assert min(tail) in reported or (r.truncated is not None and len(damaged) < len(FUZZ_DATA))
    # an intact record cut short is told apart from damage, once its sync marker is whole or no damage
    # comes before it (a few bytes of a marker after damage are just more damage)
    cut_in = [i for i, (s, e) in enumerate(FUZZ_SPANS) if s < len(damaged) < e]
    if cut_in:
        start = FUZZ_SPANS[cut_in[0]][0]
        if damaged[start:] == FUZZ_DATA[start : len(damaged)] and (
                len(damaged) - start >= len(SYNC) or damaged_numbers <= {cut_in[0] + 1}):
            assert r.truncated is not None and cut_in[0] + 1 not in reported
    lines = r.problems()
    assert all(line and "\n" not in line for line in lines)
    if currently_in_test_context():  # what the fuzz reached (--hypothesis-show-statistics)
        seen_by = {"corrupt records": reported, "lost names": r.lost_names, "cut short": r.truncated,
                   "damaged tail": tail, "stray bytes": r.stray_bytes}
        for what, seen in seen_by.items():
            event(f"{what}: {bool(seen)}")
    if reported:
        line = next(x for x in lines if " corrupt: " in x)
        assert line.endswith(f"; {len(kept)} kept")
        if reported == damaged_numbers and len(_runs(reported)) <= 10:
            words = line.replace(",", " ").split()
            assert all(run in words for run in _runs(reported)), line
    else:
        assert not any(" corrupt: " in x for x in lines)
    return r


def test_the_fuzz_recording_is_intact(tmp_path: Path) -> None:
    r = check_damaged(tmp_path / "f.llmtop", FUZZ_DATA)
    assert r.problems() == [] and r.records_total == len(FUZZ_ITEMS)
    assert len(FUZZ_NAMES) > 8 and len(FUZZ_SPANS) == len(FUZZ_ITEMS)


@FUZZ
@given(bits=hs.lists(hs.integers(0, 8 * (len(FUZZ_DATA) - FUZZ_START) - 1), min_size=1, max_size=6))
def test_flipped_bits_skip_only_the_records_they_hit(tmp_path: Path, bits: list[int]) -> None:
    data = bytearray(FUZZ_DATA)
    for b in bits:
        data[FUZZ_START + b // 8] ^= 1 << (b % 8)
    r = check_damaged(tmp_path / "f.llmtop", bytes(data))
    assert r.truncated is None  # flips never look like a cut


FILLS = hs.sampled_from(["zeros", "ones", "random", "sync", "shift"])


@FUZZ
@given(ranges=hs.lists(hs.tuples(hs.integers(0, len(FUZZ_DATA) - FUZZ_START - 1), hs.integers(1, 3000), FILLS,
                                 hs.randoms(use_true_random=False)), min_size=1, max_size=3),
       cut=hs.none() | hs.integers(FUZZ_START, len(FUZZ_DATA)))
def test_overwritten_ranges_and_cuts_keep_every_intact_record(tmp_path: Path, ranges: list,
                                                              cut: int | None) -> None:
    data = bytearray(FUZZ_DATA)
    shifts = [r for r in ranges if r[2] == "shift"][:1]  # last, and one: it copies from bytes left intact
    for off, n, fill, rnd in [r for r in ranges if r[2] != "shift"] + shifts:
        lo = FUZZ_START + off
        hi = min(len(data), lo + n)
        if fill == "zeros":
            data[lo:hi] = bytes(hi - lo)
        elif fill == "ones":
            data[lo:hi] = b"\xff" * (hi - lo)
        elif fill == "random":
            data[lo:hi] = rnd.randbytes(hi - lo)
        elif fill == "sync":  # sync markers with garbage after them: the reader must not trust them
            unit = SYNC + rnd.randbytes(REC_HEAD_SIZE - len(SYNC))
            data[lo:hi] = (unit * ((hi - lo) // len(unit) + 1))[: hi - lo]
        else:  # stale bytes from earlier in the file: intact-looking copies of records already read
            src = rnd.randrange(FUZZ_START, lo - (hi - lo) + 1) if lo - (hi - lo) >= FUZZ_START else -1
            if src < 0 or data[src : src + hi - lo] != FUZZ_DATA[src : src + hi - lo]:
                continue  # (a copy of a record whose original is damaged too would be read as that record)
            data[lo:hi] = FUZZ_DATA[src : src + hi - lo]
    if cut is not None:
        del data[cut:]
    check_damaged(tmp_path / "f.llmtop", bytes(data))


def test_damage_to_any_header_field_loses_only_its_record(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each record in turn: its sync marker, type, seq, length, time, checksums, first payload byte. The
    search for the next sync marker runs in tiny chunks, so markers straddle every chunk boundary."""
    import llmtop.traces.recording as recording

    monkeypatch.setattr(recording, "_SCAN_CHUNK", 41)
    for i, (s, _) in enumerate(FUZZ_SPANS):
        for off in (0, 7, 8, 12, 16, 19, 20, 28, 32, 35, 36):
            data = bytearray(FUZZ_DATA)
            data[s + off] ^= 0x40
            r = check_damaged(tmp_path / "h.llmtop", bytes(data))
            assert r.corrupt == [[i + 1, i + 1]] and r.truncated is None, (i, off)


def _damaged_record(data: bytes, index: int, off: int = 100) -> bytes:
    s, e = record_spans(data)[1][index]
    out = bytearray(data)
    out[min(s + off, e - 1)] ^= 0x10
    return bytes(out)


def test_one_flipped_bit_in_record_4_of_61_loses_that_record_only(tmp_path: Path) -> None:
    """The case of the hardening issue: it used to keep 1,362 of 52,664 kernels and call the file cut
    short."""
    import contextlib
    import io

    from llmtop.cli import main
    from llmtop.traces.open import open_trace

    eng = SyntheticEngine(n_layers=2, step_time_s=0.0)
    p = tmp_path / "run.llmtop"
    per_record = []
    with RecordingWriter(p, eng.source_info()) as w:
        for _ in range(61):
            eng.generate(["p"] * 2, 3)
            b = eng.ops.recorder.drain()
            assert b is not None
            w.write(b)
            per_record.append(len(b.kernels))
    bad = tmp_path / "bad.llmtop"
    bad.write_bytes(_damaged_record(p.read_bytes(), 3))
    res = open_trace(bad)
    kernels = sum(len(b.kernels) for b in res.batches)
    assert kernels == sum(per_record) - per_record[3]
    assert res.warnings == ["bad.llmtop: record 4 of 61 corrupt: skipped; 60 kept"]
    assert res.skipped_by == {"corrupt_record": 1} and res.skipped == 1
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["report", str(bad), "--format", "json"])
    rep = json.loads(out.getvalue())
    assert rc == 0 and "record 4 of 61 corrupt: skipped; 60 kept" in err.getvalue()
    assert rep["skipped"] == {"corrupt_record": 1}
    assert "bad.llmtop: record 4 of 61 corrupt: skipped; 60 kept" in rep["warnings"]


def test_corruption_and_a_cut_tail_are_both_told(tmp_path: Path) -> None:
    eng, batches = synth_batches(n_rounds=4)
    p = tmp_path / "both.llmtop"
    write_items(p, eng, batches)
    data = _damaged_record(p.read_bytes(), 1)
    p.write_bytes(data[:-10])
    from llmtop.traces.open import open_trace

    res = open_trace(p)
    assert len(list(res.batches)) == len(batches) - 2
    assert res.skipped_by == {"corrupt_record": 1}  # the cut is a warning: nothing before it is missing
    n = len(batches)
    assert res.warnings[0] == f"both.llmtop: record 2 of {n} corrupt: skipped; {n - 2} kept"
    assert "cut short" in res.warnings[1] and len(res.warnings) == 2


def test_names_only_corrupt_records_held_come_back_as_placeholders(tmp_path: Path) -> None:
    """Losing NAME_REPEAT_RECORDS batch records in a row loses the names only they carried: the kernels
    that use them later keep their numbers under `<lost name N>`, and the warning says so."""
    x = next(x for x, b in FUZZ_ADDED_BY.items() if b > 0)  # a name added after the first batch
    b = FUZZ_ADDED_BY[x]
    batch_records = sorted(i for i, j in FUZZ_BATCH_INDEX.items() if b <= j < b + NAME_REPEAT_RECORDS)
    lo, hi = FUZZ_SPANS[batch_records[0]][0], FUZZ_SPANS[batch_records[-1]][1]
    data = bytearray(FUZZ_DATA)
    data[lo:hi] = bytes(hi - lo)
    r = check_damaged(tmp_path / "n.llmtop", bytes(data))  # checks every kernel's name, lost or not
    assert r.lost_names >= 1
    assert any(f"kernel names were only in corrupt records: their kernels show as {LOST_NAME.format('N')}"
               in line for line in r.problems())
    # one batch record fewer lost: every name survives in a later record's repeats
    hi = FUZZ_SPANS[batch_records[-2]][1]
    data = bytearray(FUZZ_DATA)
    data[lo:hi] = bytes(hi - lo)
    r = check_damaged(tmp_path / "n.llmtop", bytes(data))
    assert r.lost_names == 0 and len(r.problems()) == 1


def test_repeated_names_are_bounded_and_gaps_in_the_input_stay_consistent(tmp_path: Path) -> None:
    from llmtop.codec import NAMES_JSON, decode_batch_payload
    from llmtop.traces.open import open_trace

    long_names = [f"{i:04d}:" + "x" * 300 for i in range(200)]  # ~60 KB of names in one batch
    k = np.zeros(1, KERNEL_DTYPE)
    items = [EventBatch(names_base=0, new_names=long_names), EventBatch(k, names_base=200, new_names=["new"]),
             # a producer that skipped names 201-203 (never the pipeline's): nothing to repeat there
             EventBatch(k.copy(), names_base=204, new_names=["after_gap"])]
    items[2].kernels["name"] = 204
    p = tmp_path / "names.llmtop"
    with RecordingWriter(p, SourceInfo(kind="live"), compress_level=0) as w:
        for i, it in enumerate(items):
            w.write(it, 10 * (i + 1))
    data = p.read_bytes()
    _, spans = record_spans(data)
    raw = [decode_batch_payload(data[s + REC_HEAD_SIZE : e], NAMES_JSON) for s, e in spans]
    repeats = raw[1].new_names[: 200 - raw[1].names_base]
    assert len(repeats) > 0 and sum(len(n) + 3 for n in repeats) <= NAME_REPEAT_BYTES
    assert raw[1].new_names[-1] == "new" and raw[2].new_names[-1] == "after_gap"
    assert raw[2].names_base == 204  # nothing repeated from before the gap it cannot know
    with RecordingReader(p) as r:
        got = [b for _, b in r]
        assert r.lost_names == 3
    assert [(b.names_base, len(b.new_names)) for b in got] == [(0, 200), (200, 1), (201, 4)]
    assert got[2].new_names == ["<lost name 201>", "<lost name 202>", "<lost name 203>", "after_gap"]
    res = open_trace(p)  # the consumer's name table never sees a gap (it used to raise ValueError)
    assert sum(len(b) for b in res.batches) == 2 and res.names[204] == "after_gap"


@pytest.mark.parametrize("name", ["reference_v1_raw.llmtop", "reference_v1.llmtop"])
def test_version_1_damage_skips_what_it_can(tmp_path: Path, name: str) -> None:
    """Version 1 has no sync markers: a record with a bad checksum is skipped when its length leads to an
    intact record; a damaged length leaves the rest unread, said in one line; never an exception."""
    data = (REFERENCE_DIR / name).read_bytes()
    pos = 16 + int.from_bytes(data[12:16], "little") + 4
    starts = []
    while pos < len(data):
        starts.append(pos)
        pos += 20 + int.from_bytes(data[pos + 4 : pos + 8], "little")
    p = tmp_path / name
    bad = bytearray(data)
    bad[starts[1] + 22] ^= 0x01  # the counter's payload
    p.write_bytes(bytes(bad))
    with RecordingReader(p) as r:
        got = list(r)
    assert [type(i) for _, i in got] == [EventBatch, Marker, EventBatch, EventBatch]
    assert r.problems() == [f"{name}: record 2 of 5 corrupt: skipped; 4 kept"]
    bad = bytearray(data)
    bad[starts[1] + 4] ^= 0x01  # the counter's length
    p.write_bytes(bytes(bad))
    with RecordingReader(p) as r:
        got = list(r)
    assert len(got) == 1 and r.corrupt == [[2, 2]]
    assert r.problems()[0] == f"{name}: record 2 corrupt: skipped; 1 kept"
    assert "cannot be read: a version 1 recording has no sync markers" in r.problems()[1]
    # a byte changed anywhere in the records (every third): no exception, and what comes back is items of the
    # file in order (v1 does not check a record's type, flags or time: those changes can go unseen)
    want = [type(i) for i, _ in reference_items()]
    for off in range(starts[0], len(data), 3):
        bad = bytearray(data)
        bad[off] ^= 0xA5
        p.write_bytes(bytes(bad))
        with RecordingReader(p) as r:
            got = [type(i) for _, i in r]
        rest = iter(want)
        assert all(t in rest for t in got) and all(line and "\n" not in line for line in r.problems())
