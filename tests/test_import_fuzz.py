"""Fuzzing every reader with damaged copies of the repository's real fixtures and of a fresh recording
(issue 14): truncation at random offsets, bit flips, type swaps, non-finite and huge numbers, deep
nesting, decompression bombs.

Each case goes through `llmtop report FILE --format json` in this process (`llmtop.cli.main`, the
function the command runs), where only LlmtopError is a clean error: anything else propagates as a
traceback and fails the test. Each case asserts that it ends within CASE_S, exits 0 with a JSON report or
1 with one `llmtop: error:` line, and - where the damage drops events a reader can tell were there - that
the report's `skipped` or `warnings` name what happened (`named`). A handful of subprocess runs of the real
command check the exit code, the one-line stderr, a timeout and the peak RSS of the child
(`resource.getrusage(RUSAGE_CHILDREN)` in a wrapper process that runs only that child).

Where damage cannot be told from a shorter or different but valid input, only "no traceback, bounded time"
is asserted: a cut exactly between two records (a recording stopped there, a JSONL file), changed values
that are still valid (a digit of a timestamp), SQLite pages (SQLite keeps no checksums).

Case counts: each `@settings(max_examples=...)` below; hypothesis runs that many per test (derandomized when
CI is set). `test_zz_case_count` checks that a full run made at least MIN_CASES and prints the tally (-s).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixture_paths import DOPPLER_LOG, FIXTURES, HTA_A100, MI300X_SGLANG, NSYS_A100, VLLM_CPU
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import event as _event
from hypothesis import strategies as hs
from hypothesis.control import currently_in_test_context

from llmtop.cli import main
from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.events import CounterSample, EventBatch, Marker
from llmtop.traces.recording import SYNC, RecordingWriter
from llmtop.traces.registry import ReadLimits

CASE_S = 20.0  # one damaged file, in-process (about 0.05 s here)
MIN_CASES = 200
CASES: Counter[str] = Counter()  # test -> cases run (test_zz_case_count)
FUZZ = dict(deadline=None, database=None, derandomize=bool(os.environ.get("CI")),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much])
SCALE = float(os.environ.get("LLMTOP_FUZZ_SCALE", "1"))  # e.g. 20 for a long local run


def n(examples: int) -> int:
    return max(1, int(examples * SCALE))


TIME_REASONS = {"time_out_of_range", "absurd_timestamp", "absurd_duration", "negative_duration"}
# warnings that describe a sound file (guesses, notes), not damage: they do not "name" a drop
_INFO = re.compile(r"launched outside every step|inferred from the repeating|no step annotations|^CPU-only "
                   r"trace|per-label sums|command buffer|no layer ranges|no NVTX ranges")

KINETO = {"hta_a100": HTA_A100, "mi300x": MI300X_SGLANG, "vllm_cpu": VLLM_CPU}
GPU_KINETO = ("hta_a100", "mi300x")  # device kernels: a changed value never merges two of them
RAW = {k: gzip.decompress(p.read_bytes()) for k, p in KINETO.items()}


# -- running one case ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    rc: int
    report: dict[str, Any] | None
    stderr: list[str]
    seconds: float

    def __repr__(self) -> str:  # short: hypothesis prints the arguments of a failing case
        if self.report is None:
            return f"Outcome(rc={self.rc}, stderr={self.stderr})"
        return (f"Outcome(rc=0, events={self.events}, skipped={self.skipped}, "
                f"warnings={self.report['warnings']})")


    @property
    def events(self) -> int:
        return int(self.report["events"]) if self.report else 0

    @property
    def skipped(self) -> dict[str, int]:
        return self.report["skipped"] if self.report else {}


class Baselines(dict):
    def __repr__(self) -> str:
        return "Baselines(" + ", ".join(f"{k}: {v.events} events" for k, v in self.items()) + ")"


def event(what: str) -> None:
    if currently_in_test_context():  # what the fuzz reached (--hypothesis-show-statistics)
        _event(what)


def run_report(path: Path, *extra: str) -> Outcome:
    """`llmtop report PATH --format json` in-process: exit 0 with a report or 1 with one error line."""
    out, err = io.StringIO(), io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["report", str(path), "--format", "json", *extra])
    dt = time.perf_counter() - t
    lines = err.getvalue().splitlines()
    assert dt < CASE_S, f"{dt:.1f} s"
    assert not any("Traceback" in x for x in lines)
    if rc == 1:
        assert lines and lines[-1].startswith("llmtop: error: ") and len(lines[-1]) > 15, lines
        assert all(x.startswith("llmtop: warning: ") for x in lines[:-1]), lines
        event("clean error")
        return Outcome(1, None, lines, dt)
    assert rc == 0, (rc, lines)
    rep = json.loads(out.getvalue())
    assert isinstance(rep["skipped"], dict) and isinstance(rep["warnings"], list)
    assert all(x.startswith("llmtop: warning: ") for x in lines), lines
    for reason in rep["skipped"]:
        event(f"skipped: {reason}")
    return Outcome(0, rep, lines, dt)


def named(o: Outcome, base: Outcome) -> bool:
    """Whether the report says that something was left out: a skip, or a warning the sound file has not."""
    return bool(o.skipped) or any(w not in base.report["warnings"] and not _INFO.search(w)
                                  for w in o.report["warnings"])


def check_drop(o: Outcome, base: Outcome) -> None:
    """A report with fewer events than the sound file names why."""
    if o.rc == 0 and o.events < base.events:
        event("events dropped")
        assert named(o, base), (o.events, base.events, o.report["warnings"])


def count(test: str) -> None:
    CASES[test] += 1


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh recording: batches of a synthetic 3-layer engine, counters and markers."""
    path = tmp_path_factory.mktemp("rec") / "fresh.llmtop"
    write_recording(path)
    return path


def write_recording(path: Path, damage: Any = None) -> None:
    eng = SyntheticEngine(n_layers=3, step_time_s=0.0)
    with RecordingWriter(path, eng.source_info()) as w:
        w.write(Marker(1, "start"))
        for i in range(6):
            eng.generate(["p"] * 2, 5)
            b = eng.ops.recorder.drain()
            assert b is not None
            if damage is not None and i == 2:
                damage(b)
            w.write(b)
            w.write(CounterSample("process", int(b.kernels["start_ns"].max()), {"cpu_pct": 50.0 + i}))


@pytest.fixture(scope="module")
def baselines(recording: Path) -> dict[str, Outcome]:
    """The sound files' reports (what a damaged copy is compared with)."""
    out = Baselines({name: run_report(p) for name, p in KINETO.items()})
    out["nsys"] = run_report(NSYS_A100)
    out["doppler"] = run_report(DOPPLER_LOG)
    out["recording"] = run_report(recording)
    out["reference_v2"] = run_report(FIXTURES / "llmtop" / "reference_v2.llmtop")
    for name, o in out.items():
        assert o.rc == 0 and o.events > 0 and not o.skipped, name
    return out


# -- Kineto JSON ---------------------------------------------------------------------------------------
def _flip(data: bytes, flips: list[tuple[float, int]]) -> bytes:
    b = bytearray(data)
    for at, mask in flips:
        if b:
            b[int(at * (len(b) - 1))] ^= mask
    return bytes(b)


@settings(max_examples=n(60), **FUZZ)
@given(name=hs.sampled_from(sorted(KINETO)), cut=hs.one_of(hs.just(1.0), hs.floats(0.0, 1.0)),
       flips=hs.lists(hs.tuples(hs.floats(0.0, 1.0), hs.integers(1, 255)), max_size=4), gz=hs.booleans(),
       flip_compressed=hs.booleans())
def test_kineto_cut_and_flipped(case_dir: Path, baselines: dict[str, Outcome], name: str, cut: float,
                                flips: list[tuple[float, int]], gz: bool, flip_compressed: bool) -> None:
    raw = RAW[name]
    data = raw[: int(len(raw) * cut)]
    if not (gz and flip_compressed):
        data = _flip(data, flips)
    if gz:
        data = gzip.compress(data, compresslevel=1)
        if flip_compressed:
            data = _flip(data, flips)
    path = case_dir / "case.json"
    path.write_bytes(data)
    o = run_report(path)
    # a cut is always told (the document must close); a flipped value of a CPU-only trace's cpu_op can
    # legitimately nest one op in another (fewer outermost ops) without anything being wrong with the file
    if cut < 1.0 or not flips or name in GPU_KINETO:
        check_drop(o, baselines[name])
    count("kineto_cut_flip")


def _events(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = json.loads(RAW[name])
    return doc, doc["traceEvents"]


DOCS = {name: _events(name) for name in KINETO}
_CLASSES = {
    "device": {"kernel", "gpu_memcpy", "gpu_memset"},
    "runtime": {"cuda_runtime", "cuda_driver", "hip_runtime"},
    "cpu_op": {"cpu_op"},
    "annotation": {"user_annotation", "gpu_user_annotation", "python_function"},
}


def _class_of(e: Any) -> str:
    cat = e.get("cat") if isinstance(e, dict) else None
    for cls, cats in _CLASSES.items():
        if cat in cats and e.get("ph") == "X":
            return cls
    return "other"


INDEX = {name: {cls: [i for i, e in enumerate(evs) if _class_of(e) == cls] for cls in [*_CLASSES, "other"]}
         for name, (_, evs) in DOCS.items()}
WRONG = hs.one_of(hs.none(), hs.booleans(), hs.text(max_size=6), hs.integers(-(2**70), 2**70),
                  hs.floats(allow_nan=False, allow_infinity=False), hs.lists(hs.integers(), max_size=3),
                  hs.dictionaries(hs.text(max_size=3), hs.integers(), max_size=2))
FIELDS = ["ph", "cat", "name", "pid", "tid", "ts", "dur", "id", "args", "args.correlation", "args.device",
          "args.stream", "<event>", "<delete>"]


def _write_doc(path: Path, name: str, i: int, new: Any, gz: bool = False, raw_literal: str = "") -> None:
    doc, evs = DOCS[name]
    out = dict(doc)
    out["traceEvents"] = [*evs[:i], new, *evs[i + 1 :]]
    text = json.dumps(out)
    if raw_literal:  # a number json.dumps cannot write (Infinity, 1e400): a placeholder swapped in
        text = text.replace('"__FUZZ__"', raw_literal, 1)
    data = text.encode()
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)


def _pick(data: Any, name: str, classes: list[str]) -> tuple[str, int]:
    cls = data.draw(hs.sampled_from([c for c in classes if INDEX[name][c]]))
    return cls, data.draw(hs.sampled_from(INDEX[name][cls]))


def _swapped(e: dict[str, Any], field: str, value: Any) -> Any:
    if field == "<event>":
        return value
    new = json.loads(json.dumps(e))
    if field == "<delete>":
        new.pop(value if isinstance(value, str) and value in new else "ts", None)
    elif field.startswith("args."):
        if not isinstance(new.get("args"), dict):
            new["args"] = {}
        new["args"][field[5:]] = value
    else:
        new[field] = value
    return new


def _wrong_type(field: str, value: Any) -> bool:
    """Whether `value` cannot be what `field` holds in any sound trace (so it must be counted)."""
    if field in ("ts", "dur"):
        return not isinstance(value, int | float) or isinstance(value, bool)
    if field in ("name", "cat"):
        return not isinstance(value, str)
    return field == "<event>" and not isinstance(value, dict)


@settings(max_examples=n(60), **FUZZ)
@given(data=hs.data(), name=hs.sampled_from(sorted(KINETO)), field=hs.sampled_from(FIELDS), value=WRONG,
       gz=hs.booleans())
def test_kineto_type_swaps(case_dir: Path, baselines: dict[str, Outcome], data: Any, name: str, field: str,
                           value: Any, gz: bool) -> None:
    """One field of one event gets a value of another type (a number where a string belongs, null, a list,
    an object), or the event is replaced or loses a key: never more than that event is lost, and a
    lost event is counted."""
    cls, i = _pick(data, name, ["device", "runtime", "cpu_op", "annotation", "other"])
    event(f"swap {cls}.{field}")
    path = case_dir / "case.json"
    _write_doc(path, name, i, _swapped(DOCS[name][1][i], field, value), gz=gz)
    o = run_report(path)
    base = baselines[name]
    assert o.rc == 0, o.stderr  # one bad value never costs the file
    if name in GPU_KINETO:
        assert o.events >= base.events - 1
        check_drop(o, base)
    elif _wrong_type(field, value):
        check_drop(o, base)
    count("kineto_type_swap")


NUMBERS = ["Infinity", "-Infinity", "NaN", "1e308", "-1e308", "1e400", "-1e400", "1e-400", "9" * 30,
           "-" + "9" * 30, str(2**63), str(-(2**63)), str(2**64), "1.7976931348623157e308", "4e15", "-4e15",
           "1e17", "-0.0", "0", "-1", "1e5000 digits"]
ALWAYS_BAD = {"Infinity", "-Infinity", "NaN", "1e308", "-1e308", "1e400", "-1e400", "9" * 30, "-" + "9" * 30,
              str(2**63), str(-(2**63)), str(2**64), "1.7976931348623157e308", "1e17", "1e5000 digits"}
LITERAL = {"1e5000 digits": "1" + "0" * 5000}  # more digits than int() converts


@settings(max_examples=n(40), **FUZZ)
@given(data=hs.data(), name=hs.sampled_from(GPU_KINETO), field=hs.sampled_from(["ts", "dur"]),
       literal=hs.sampled_from(NUMBERS), gz=hs.booleans())
def test_kineto_nonfinite_and_huge_numbers(case_dir: Path, baselines: dict[str, Outcome], data: Any,
                                           name: str, field: str, literal: str, gz: bool) -> None:
    """Infinity, NaN, 1e308, 1e400, huge integers, absurd µs in ts/dur: the event is left out and counted
    by reason (never an OverflowError), and only that event."""
    cls, i = _pick(data, name, ["device", "device", "runtime", "cpu_op", "annotation"])
    event(f"{cls}.{field} = {literal[:12]}")
    path = case_dir / "case.json"
    _write_doc(path, name, i, _swapped(DOCS[name][1][i], field, "__FUZZ__"), gz=gz,
               raw_literal=LITERAL.get(literal, literal))
    o = run_report(path)
    base = baselines[name]
    assert o.rc == 0, o.stderr
    assert o.events >= base.events - 1
    check_drop(o, base)
    if cls == "device":
        if literal in ALWAYS_BAD or (field == "dur" and literal.startswith("-") and literal != "-0.0"):
            assert o.events == base.events - 1
        if o.events < base.events:
            assert TIME_REASONS & set(o.skipped), o.skipped
            assert any("device events failed validation" in w or "left out" in w
                       for w in o.report["warnings"])
    count("kineto_numbers")


def _deep(depth: int, obj: bool) -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if obj else ("[" * depth + "]" * depth)


@settings(max_examples=n(24), **FUZZ)
@given(data=hs.data(), name=hs.sampled_from(GPU_KINETO),
       depth=hs.sampled_from([10, 500, 999, 1000, 1001, 3000, 100_000]), obj=hs.booleans(),
       where=hs.sampled_from(["device args", "cpu_op args", "element", "top-level key", "deviceProperties"]),
       damaged=hs.booleans(), gz=hs.booleans())
def test_kineto_deep_nesting(case_dir: Path, baselines: dict[str, Outcome], data: Any, name: str, depth: int,
                             obj: bool, where: str, damaged: bool, gz: bool) -> None:
    """Nesting 10 to 100,000 levels deep, on msgspec's path and (`damaged`: a NaN elsewhere makes msgspec
    reject the document) on the stdlib's: no RecursionError; an event nested too deep is left out and
    counted as too_deeply_nested, and nothing else is lost."""
    doc, evs = DOCS[name]
    deep = _deep(depth, obj)
    evs = list(evs)
    if damaged:
        j = data.draw(hs.sampled_from(INDEX[name]["runtime"] or INDEX[name]["cpu_op"]))
        evs[j] = {**evs[j], "args": {**(evs[j].get("args") or {}), "nan": "__NAN__"}}
    lost_one = False
    if where in ("device args", "cpu_op args"):
        cls = "device" if where.startswith("device") else "cpu_op"
        i = data.draw(hs.sampled_from(INDEX[name][cls]))
        e = json.loads(json.dumps(evs[i]))
        e.setdefault("args", {})["deep"] = "__DEEP__"
        evs[i] = e
        lost_one = cls == "device"
    elif where == "element":
        evs.insert(data.draw(hs.integers(0, len(evs))), "__DEEP__")
    out = {**doc, "traceEvents": evs}
    if where == "top-level key":
        out["zzz_extra"] = "__DEEP__"
    elif where == "deviceProperties":
        out = {"deviceProperties": [{"id": 0, "name": "G", "x": "__DEEP__"}], **out}
    text = json.dumps(out).replace('"__DEEP__"', deep).replace('"__NAN__"', "NaN")
    path = case_dir / "case.json"
    path.write_bytes(gzip.compress(text.encode(), compresslevel=1) if gz else text.encode())
    o = run_report(path)
    base = baselines[name]
    assert o.rc == 0, o.stderr
    assert o.events >= base.events - (1 if lost_one else 0)
    if o.events < base.events:
        assert o.skipped.get("too_deeply_nested") == 1
    if depth >= 3000 and where in ("element", "device args", "cpu_op args"):
        assert o.skipped.get("too_deeply_nested") == 1
    check_drop(o, base)
    count("kineto_deep")


# -- decompression bombs -------------------------------------------------------------------------------
def gzip_bomb(prefix: bytes, chunk: bytes, repeat: int, suffix: bytes, members: int = 1) -> bytes:
    """prefix + chunk * repeat + suffix as gzip, fast: the chunk is compressed once after a full flush (no
    back references across it) and its deflate blocks repeated; `members` splits it into gzip members."""
    out = []
    per = [repeat // members + (1 if m < repeat % members else 0) for m in range(members)]
    for m, k in enumerate(per):
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        head = prefix if m == 0 else b""
        tail = suffix if m == members - 1 else b""
        a = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
        b = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
        z = c.compress(tail) + c.flush()
        crc = zlib.crc32(head)
        for _ in range(k):
            crc = zlib.crc32(chunk, crc)
        crc = zlib.crc32(tail, crc)
        size = len(head) + k * len(chunk) + len(tail)
        out += [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", a, b * k, z,
                struct.pack("<II", crc, size & 0xFFFFFFFF)]
    return b"".join(out)


@settings(max_examples=n(20), **FUZZ)
@given(pad=hs.sampled_from([b" ", b"\n", b" \t\r\n", b"x"]), mib=hs.integers(1, 160),
       where=hs.sampled_from(["between events", "after the document", "alone"]),
       max_mib=hs.one_of(hs.none(), hs.integers(1, 200)), members=hs.integers(1, 3))
def test_decompression_bombs(case_dir: Path, baselines: dict[str, Outcome], pad: bytes, mib: int, where: str,
                             max_mib: int | None, members: int) -> None:
    """A .gz expanding to up to 160 MiB of padding, as one or several members, under the default limits
    (64 MiB, then 200 times the compressed size) or `--max-bytes`: refused in one line that names the limit
    it hit once the document would pass it, read in full otherwise."""
    chunk = pad * ((1 << 20) // len(pad))
    raw = RAW["hta_a100"]
    if where == "between events":
        cut = raw.index(b"{", raw.index(b'"traceEvents"'))
        prefix, suffix = raw[:cut], raw[cut:]
    elif where == "after the document":
        prefix, suffix = raw, b""
    else:
        prefix, suffix = b"", b""
    data = gzip_bomb(prefix, chunk, mib, suffix, members)
    size = len(prefix) + mib * len(chunk) + len(suffix)
    path = case_dir / "bomb.json.gz"
    path.write_bytes(data)
    extra = () if max_mib is None else ("--max-bytes", f"{max_mib}M")
    o = run_report(path, *extra)
    lim = ReadLimits.explicit(None if max_mib is None else max_mib << 20)
    cap = lim.allowed(len(data))
    event(f"{'default' if max_mib is None else '--max-bytes'} {'over' if size > cap else 'under'}")
    if size > cap:
        assert o.rc == 1
        if where == "alone":  # refused from its first 64 KiB already: blank, or no known format
            count("bombs")
            return
        want = ("the --max-bytes limit" if max_mib is not None else
                "the ratio limit" if cap < lim.max_bytes else "the size limit")
        assert want in o.stderr[-1] and str(path) in o.stderr[-1], o.stderr
    elif where == "between events" and pad != b"x":
        assert o.rc == 0 and o.events == baselines["hta_a100"].events
    count("bombs")
    # else: a clean error (not JSON, no events) or a report: run_report checked both


# -- nsys SQLite ---------------------------------------------------------------------------------------
NSYS_TABLES = ["CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
               "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS", "StringIds", "TARGET_INFO_GPU"]
with contextlib.closing(sqlite3.connect(NSYS_A100)) as _con:
    NSYS_COLS = {t: [r[1] for r in _con.execute(f"PRAGMA table_info({t})")] for t in NSYS_TABLES}
NSYS_BYTES = NSYS_A100.read_bytes()
SQL_VALUES = hs.one_of(hs.none(), hs.text(max_size=8), hs.binary(max_size=8),
                       hs.integers(-(2**63), 2**63 - 1),
                       hs.sampled_from([2**63 - 1, -(2**63), 2**62, 9223372036854775000, -1]),
                       hs.floats(allow_nan=False), hs.sampled_from([float("inf"), -float("inf"), 1e300]))
KERNEL_TIME_COLS = {"start", "end", "deviceId", "streamId"}


@settings(max_examples=n(40), **FUZZ)
@given(data=hs.data(), table=hs.sampled_from(NSYS_TABLES), value=SQL_VALUES, all_rows=hs.booleans())
def test_nsys_type_and_range_swaps(case_dir: Path, baselines: dict[str, Outcome], data: Any, table: str,
                                   value: Any, all_rows: bool) -> None:
    """A column of one row (or of every row) of an nsys table gets a value of another type (a BLOB in
    StringIds, text where an integer belongs, a REAL) or an impossible one (start near 2^63, inf): no
    traceback, no giant allocation; kernels left out are counted."""
    col = data.draw(hs.sampled_from(NSYS_COLS[table]))
    event(f"{table}.{col} <- {type(value).__name__}")
    path = case_dir / "case.sqlite"
    path.write_bytes(NSYS_BYTES)
    with contextlib.closing(sqlite3.connect(path)) as con:
        where = "" if all_rows else f" WHERE rowid = (SELECT min(rowid) FROM {table})"
        try:
            con.execute(f'UPDATE {table} SET "{col}" = ?{where}', (value,))
        except sqlite3.IntegrityError:  # NOT NULL, UNIQUE: the schema refuses this one
            reject()
        con.commit()
    o = run_report(path)
    check_drop(o, baselines["nsys"])
    count("nsys_swap")


@settings(max_examples=n(20), **FUZZ)
@given(cut=hs.one_of(hs.just(1.0), hs.floats(0.0, 1.0)),
       flips=hs.lists(hs.tuples(hs.floats(0.0, 1.0), hs.integers(1, 255)), min_size=1, max_size=8))
def test_nsys_cut_and_flipped(case_dir: Path, cut: float, flips: list[tuple[float, int]]) -> None:
    """Damaged SQLite pages: a clean error or a report (SQLite keeps no checksums, so a changed row is
    not always detectable: only "no traceback, bounded time" holds)."""
    path = case_dir / "case.sqlite"
    path.write_bytes(_flip(NSYS_BYTES[: max(100, int(len(NSYS_BYTES) * cut))], flips))
    run_report(path)
    count("nsys_bytes")


# -- recordings ----------------------------------------------------------------------------------------


@settings(max_examples=n(40), **FUZZ)
@given(which=hs.sampled_from(["recording", "reference_v2"]), cut=hs.one_of(hs.just(1.0), hs.floats(0.0, 1.0)),
       flips=hs.lists(hs.tuples(hs.floats(0.0, 1.0), hs.integers(1, 255)), max_size=4),
       zero=hs.one_of(hs.none(), hs.tuples(hs.floats(0.0, 1.0), hs.integers(1, 400))))
def test_recording_cut_flipped_zeroed(case_dir: Path, baselines: dict[str, Outcome], recording: Path,
                                      which: str, cut: float, flips: list[tuple[float, int]],
                                      zero: tuple[float, int] | None) -> None:
    """A fresh recording and the v2 reference, cut, bit-flipped, with a run of bytes zeroed: checksums
    catch every damaged record (counted, named); a cut names itself unless it falls between records."""
    src = recording if which == "recording" else FIXTURES / "llmtop" / "reference_v2.llmtop"
    sound = src.read_bytes()
    data = bytearray(sound[: int(len(sound) * cut)])
    for at, mask in flips:
        if data:
            data[int(at * (len(data) - 1))] ^= mask
    if zero is not None and data:
        a = int(zero[0] * (len(data) - 1))
        data[a : a + zero[1]] = bytes(len(data[a : a + zero[1]]))
    path = case_dir / "case.llmtop"
    path.write_bytes(bytes(data))
    o = run_report(path)
    boundaries = {m.start() for m in re.finditer(re.escape(SYNC), sound)}
    if len(data) == len(sound) or len(data) not in boundaries:  # else: a recording stopped there
        check_drop(o, baselines[which])
    count("recording_bytes")


KERNEL_FIELDS = {"dur_ns": [-1, -(2**62), 2**62, 2**63 - 1, -(2**63)],
                 "start_ns": [2**62, -(2**62), 2**63 - 1, -(2**63), 10**17, -(10**17)],
                 "name": [2**31 - 1, 2**32 - 1, 10_000],
                 "phase": [2, 7, 255], "op_class": [200, 255]}
STEP_FIELDS = {"dur_ns": [-5_003_000_000, 2**63 - 1], "start_ns": [2**62, -(2**63)],
               "tokens": [-1], "batch": [-1], "ctx": [-1], "kernel_ns": [-2, 2**62]}


@settings(max_examples=n(30), **FUZZ)
@given(data=hs.data(), steps=hs.booleans(), n_rows=hs.integers(1, 5))
def test_recording_impossible_values(case_dir: Path, baselines: dict[str, Outcome], data: Any, steps: bool,
                                     n_rows: int) -> None:
    """Rows with intact checksums but impossible values (negative durations, times beyond int64 ns, a name
    id past the name table, an unknown phase or op class): left out and counted, the rest kept."""
    fields = STEP_FIELDS if steps else KERNEL_FIELDS
    field = data.draw(hs.sampled_from(sorted(fields)))
    value = data.draw(hs.sampled_from(fields[field]))
    event(f"{'step' if steps else 'kernel'}.{field} = {value}")

    def damage(b: EventBatch) -> None:
        arr = b.steps if steps else b.kernels
        rows = data.draw(hs.lists(hs.integers(0, len(arr) - 1), min_size=1, max_size=n_rows, unique=True))
        arr[field][rows] = value

    path = case_dir / "values.llmtop"
    write_recording(path, damage)
    o = run_report(path)
    assert o.rc == 0, o.stderr
    base = baselines["recording"]
    assert o.events >= base.events - n_rows
    assert named(o, base)  # every value above is impossible: always counted
    check_drop(o, base)
    count("recording_values")


# -- doppler and metallic logs -------------------------------------------------------------------------
DOPPLER_TEXT = DOPPLER_LOG.read_text()
_NUM = re.compile(r"\d+(?:\.\d+)?")


@settings(max_examples=n(30), **FUZZ)
@given(cut=hs.one_of(hs.just(1.0), hs.floats(0.0, 1.0)),
       flips=hs.lists(hs.tuples(hs.floats(0.0, 1.0), hs.integers(1, 127)), max_size=3),
       numbers=hs.lists(hs.tuples(hs.floats(0.0, 1.0), hs.sampled_from(["9" * 40, "0", "1e309", "99999999999",
                                                                        "-5", "NaN"])), max_size=3),
       gz=hs.booleans())
def test_doppler_cut_flipped_numbers(case_dir: Path, baselines: dict[str, Outcome], cut: float,
                                     flips: list[tuple[float, int]],
                                     numbers: list[tuple[float, str]], gz: bool) -> None:
    """The real doppler log (plain or gzip) cut anywhere, bit-flipped, with numbers (times, row sums)
    replaced by huge or odd ones: no OverflowError; a cut or a lost report is named."""
    text = DOPPLER_TEXT[: int(len(DOPPLER_TEXT) * cut)]
    spans = [m.span() for m in _NUM.finditer(text)]
    for at, lit in numbers:
        if spans:
            a, b = spans[int(at * (len(spans) - 1))]
            text = text[:a] + lit + text[b:]
            spans = [m.span() for m in _NUM.finditer(text)]
    data = _flip(text.encode(), flips)
    path = case_dir / "case.log"
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    o = run_report(path)
    if not numbers:  # a row sum replaced by another valid one moves time without losing anything
        check_drop(o, baselines["doppler"])
    count("doppler")


def _metallic_lines() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"timestamp": "2025-10-01T10:00:00.002000000Z", "span_id": 1,
                                  "event": {"type": "GpuOpCompleted", "data": {
                                      "op_name": "Prompt Processing/gemv", "backend": "Metal",
                                      "duration_us": 1500}}}]
    for i in range(24):
        out.append({"timestamp": f"2025-10-01T10:00:00.{10000 + i * 300:06d}000Z", "span_id": 1,
                    "event": {"type": "GpuOpCompleted", "data": {
                        "op_name": f"Generation Loop/block_{i % 2}/sdpa", "backend": "Metal",
                        "duration_us": 200 + i}}})
        if i % 6 == 5:
            out.append({"timestamp": f"2025-10-01T10:00:00.{10000 + i * 300 + 50:06d}000Z", "span_id": 1,
                        "event": {"type": "InternalKernelCompleted", "data": {
                            "parent_op_name": "g", "internal_kernel_name": "iteration_total",
                            "duration_us": 1800}}})
    return out


METALLIC = _metallic_lines()


@settings(max_examples=n(24), **FUZZ)
@given(data=hs.data(), field=hs.sampled_from(["timestamp", "event", "event.type", "event.data",
                                               "data.op_name", "data.duration_us", "<line>"]),
       value=hs.one_of(WRONG, hs.sampled_from(["__INF__", "__BIG__", "__DEEP__", "9999-12-31T23:59:59Z"])),
       cut=hs.one_of(hs.just(1.0), hs.floats(0.0, 1.0)))
def test_metallic_swaps_and_cuts(case_dir: Path, data: Any, field: str, value: Any, cut: float) -> None:
    """metallic JSONL: a field of one line swapped for another type, Infinity, 1e400, a year-9999 time or
    100,000 levels of nesting, and the file cut anywhere: no traceback, and a GpuOpCompleted line left
    out is counted."""
    lines = [json.loads(json.dumps(x)) for x in METALLIC]
    i = data.draw(hs.integers(0, len(lines) - 1))
    rec = lines[i]
    if field == "<line>":
        lines[i] = value
    elif field.startswith("data."):
        rec["event"]["data"][field[5:]] = value
    elif field == "event.type":
        rec["event"]["type"] = value
    elif field == "event.data":
        rec["event"]["data"] = value
    else:
        rec[field] = value
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    text = text.replace('"__INF__"', "Infinity").replace('"__BIG__"', "1e400").replace(
        '"__DEEP__"', "[" * 100_000 + "]" * 100_000)
    text = text[: int(len(text) * cut)]
    path = case_dir / "case.jsonl"
    path.write_text(text)
    o = run_report(path)
    if o.rc == 0 and cut == 1.0 and field in ("data.duration_us", "timestamp") and (
            METALLIC[i]["event"]["type"] == "GpuOpCompleted") and (
            not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
        # a GpuOpCompleted whose time or duration cannot be one: counted
        assert o.skipped, (field, value)
    last = text.rsplit("\n", 1)[-1]
    if o.rc == 0 and last.strip() and not _parses(last):  # cut inside a line: that line is counted
        assert o.skipped, o.report["warnings"]
    count("metallic")


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


# -- the real command, in subprocesses -----------------------------------------------------------------
WRAP = """
import json, resource, subprocess, sys, time
t = time.monotonic()
try:
    p = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))
    rc, out, err = p.returncode, p.stdout, p.stderr
except subprocess.TimeoutExpired as e:
    rc, out, err = "timeout", "", str(e.stderr or "")
print(json.dumps({"rc": rc, "stdout": out, "stderr": err, "seconds": time.monotonic() - t,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def cli(*argv: str, timeout: float = 60, prefix: list[str] | None = None) -> dict[str, Any]:
    """`python -m llmtop ARGV` in a child of a wrapper process: its exit code, output, wall time and peak
    RSS (the wrapper's RUSAGE_CHILDREN covers that one child only). prefix: a command that runs it."""
    cmd = [*(prefix or []), sys.executable, "-m", "llmtop", *argv]
    r = subprocess.run([sys.executable, "-c", WRAP, str(timeout), *cmd], capture_output=True, text=True,
                       timeout=timeout + 30)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["rc"] != "timeout", f"llmtop {' '.join(argv)} ran past {timeout} s"
    assert "Traceback" not in d["stderr"], d["stderr"]
    return d


def one_error_line(d: dict[str, Any]) -> str:
    lines = d["stderr"].strip().splitlines()
    assert d["rc"] == 1 and len(lines) == 1 and lines[0].startswith("llmtop: error: "), d["stderr"]
    return lines[0]


@pytest.fixture(scope="module")
def big_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 MB of .json.gz expanding to 2 GiB of spaces inside traceEvents (the issue's example)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.json.gz"
    path.write_bytes(gzip_bomb(b'{"traceEvents": [', b" " * (16 << 20), 128, b"]}"))
    assert 1 << 20 < path.stat().st_size < 4 << 20
    return path


def test_cli_bomb_default_limits(big_bomb: Path) -> None:
    d = cli("report", str(big_bomb), "--format", "json", timeout=60)
    line = one_error_line(d)
    assert "200 times its compressed size" in line and "the ratio limit" in line and "--max-bytes" in line
    assert d["seconds"] < 30 and d["maxrss_kb"] < 1 << 20  # stops after 400 MiB: well under 1 GiB
    count("cli")


def test_cli_bomb_max_bytes(big_bomb: Path) -> None:
    d = cli("report", str(big_bomb), "--max-bytes", "64M", timeout=60)
    want = f"llmtop: error: {big_bomb}: decompresses to more than 64 MiB, the --max-bytes limit"
    assert one_error_line(d) == want
    assert d["seconds"] < 30 and d["maxrss_kb"] < 400 << 10
    d = cli("export", str(big_bomb), "-o", str(big_bomb.with_suffix(".out.json")), "--max-bytes", "1M")
    assert "the --max-bytes limit" in one_error_line(d)
    count("cli")


def test_cli_max_bytes_must_be_a_size(big_bomb: Path) -> None:
    for bad in ("3X", "0", "-1", "lots"):
        d = cli("report", str(big_bomb), "--max-bytes", bad)
        lines = d["stderr"].strip().splitlines()
        assert d["rc"] == 2 and len(lines) == 1 and "--max-bytes" in lines[0], d
    count("cli")


def test_cli_hostile_values(tmp_path: Path) -> None:
    """The issue's table through the real command: Infinity and 1e308 in ts/dur, 100,000 levels of nesting
    in args, nsys start near 2^63 and a BLOB in StringIds: exit 0, counted, small RSS."""
    doc, evs = DOCS["hta_a100"]
    k = INDEX["hta_a100"]["device"]
    evs = list(evs)
    evs[k[0]] = {**evs[k[0]], "ts": "__INF__"}
    evs[k[1]] = {**evs[k[1]], "dur": "__1E308__"}
    evs[k[2]] = {**evs[k[2]], "args": {**evs[k[2]]["args"], "deep": "__DEEP__"}}
    text = json.dumps({**doc, "traceEvents": evs}).replace('"__INF__"', "Infinity").replace(
        '"__1E308__"', "1e308").replace('"__DEEP__"', "[" * 100_000 + "]" * 100_000)
    p = tmp_path / "hostile.json"
    p.write_text(text)
    d = cli("report", str(p), "--format", "json")
    assert d["rc"] == 0, d["stderr"]
    rep = json.loads(d["stdout"])
    assert rep["skipped"] == {"time_out_of_range": 2, "too_deeply_nested": 1}
    assert rep["events"] == 98 - 3 and d["maxrss_kb"] < 500 << 10
    db = tmp_path / "n.sqlite"
    shutil.copy(NSYS_A100, db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET start = 9223372036854775000, end = "
                    "9223372036854775800 WHERE rowid = (SELECT min(rowid) FROM CUPTI_ACTIVITY_KIND_KERNEL)")
        con.execute("UPDATE StringIds SET value = X'00FF10' WHERE id = (SELECT demangledName FROM "
                    "CUPTI_ACTIVITY_KIND_KERNEL ORDER BY rowid DESC LIMIT 1)")
        con.commit()
    d = cli("report", str(db), "--format", "json")
    assert d["rc"] == 0, d["stderr"]
    rep = json.loads(d["stdout"])
    assert rep["skipped"] == {"time_out_of_range": 1} and d["maxrss_kb"] < 500 << 10
    assert any("StringIds: 1 values are not text" in w for w in rep["warnings"])
    assert any(k["name"].startswith("<string ") for k in rep["kernels"])
    count("cli")


def test_cli_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission: one line, exit 1. Root reads any file, so as root the command runs
    without the capabilities that let it (setpriv drops dac_override and dac_read_search)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: every file is readable")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    p = tmp_path / "secret.json.gz"
    shutil.copy(HTA_A100, p)
    p.chmod(0)
    try:
        d = cli("report", str(p), "--format", "json", prefix=prefix)
        assert one_error_line(d) == f"llmtop: error: cannot read {p}: Permission denied"
        d = cli("report", str(tmp_path), prefix=prefix)  # a directory holding only that file
        assert one_error_line(d) == (f"llmtop: error: {tmp_path}: directory holds no trace files ({p}: not a "
                                     f"trace file (cannot read {p}: Permission denied), left out)")
    finally:
        p.chmod(0o644)
    count("cli")


def test_zz_case_count() -> None:
    """The tally of this run (printed with -s); a full run of the file makes at least MIN_CASES."""
    total = sum(CASES.values())
    print(f"\nfuzz cases: {total} ({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))})")
    full = {"kineto_cut_flip", "kineto_type_swap", "kineto_numbers", "kineto_deep", "bombs", "nsys_swap",
            "nsys_bytes", "recording_bytes", "recording_values", "doppler", "metallic", "cli"}
    if set(CASES) >= full:
        assert total >= MIN_CASES
