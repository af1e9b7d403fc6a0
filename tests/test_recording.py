"""The llmtop recording format: exact round trips, truncated and foreign files, kill -9 survival."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

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
    MAGIC,
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


def test_every_truncation_point_replays_a_prefix(tmp_path: Path) -> None:
    eng, batches = synth_batches(n_rounds=2, tokens=3)
    items = [*batches, CounterSample("gpu0", 9, {"util_pct": 50.0}), Marker(10, "end")]
    full = tmp_path / "full.llmtop"
    write_items(full, eng, items, compress_level=1)
    data = full.read_bytes()
    with RecordingReader(full) as r:
        r_iter = list(r)
        header_end = r._data_start
    ends = []  # byte offset where each record ends
    pos = header_end
    for _ in r_iter:
        plen = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 20 + plen
        ends.append(pos)
    assert pos == len(data)
    cut = tmp_path / "cut.llmtop"
    # every cut inside the data section: complete records come back, the tail is reported
    for off in list(range(header_end, len(data), 7)) + [e - 1 for e in ends]:
        cut.write_bytes(data[:off])
        with RecordingReader(cut) as r:
            got = list(r)
        complete = sum(1 for e in ends if e <= off)
        assert len(got) == complete, off
        assert (r.truncated is None) == (off in ends or off == header_end), off
        if r.truncated:
            assert "cut short" in r.truncated and "\n" not in r.truncated
    # cut inside the header: nothing to replay, one-line error
    for off in (3, 10, header_end - 2):
        cut.write_bytes(data[:off])
        with pytest.raises(LlmtopError, match="truncated inside its header"):
            RecordingReader(cut)


def test_corrupt_tail_stops_cleanly(tmp_path: Path) -> None:
    eng, batches = synth_batches(n_rounds=2)
    p = tmp_path / "c.llmtop"
    write_items(p, eng, batches)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the last record's payload
    p.write_bytes(bytes(data))
    with RecordingReader(p) as r:
        got = list(r)
    assert len(got) == len(batches) - 1
    assert r.truncated is not None and "checksum" in r.truncated


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
    hlen = int.from_bytes(data[12:16], "little")
    pos = 16 + hlen + 4
    out = []
    while pos < len(data):
        rtype, flags = data[pos], data[pos + 1]
        plen = int.from_bytes(data[pos + 4 : pos + 8], "little")
        t_ns = int.from_bytes(data[pos + 8 : pos + 16], "little", signed=True)
        payload = data[pos + 20 : pos + 20 + plen]
        out.append((rtype, flags, t_ns, zlib.decompress(payload) if flags & 1 else payload))
        pos += 20 + plen
    return data[: 16 + hlen + 4], out


@pytest.mark.parametrize(("name", "level"), [("reference_v1_raw.llmtop", 0), ("reference_v1.llmtop", 1)])
def test_old_recording_reads_and_is_written_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           name: str, level: int) -> None:
    ref = REFERENCE_DIR / name
    with RecordingReader(ref) as r:
        assert r.format_version == 1 == FORMAT_VERSION  # the shared codec did not change the bytes
        assert r.source == reference_source() and r.header["llmtop_version"] == REFERENCE_VERSION
        got = list(r)
        assert r.truncated is None
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
    # what the current writer makes of the same items is what the code before the shared codec wrote
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
