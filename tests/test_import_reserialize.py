"""Every real Kineto fixture, re-serialized, gives the same report (issue 13).

`traceEvents` first, last or in the middle of other top-level keys (some holding objects and lists whose
strings look like event boundaries), indented or compact, gzip or plain, and the bare Array form: the
JSON report's kernel table, tokens, layers and steps equal those of the original file. The variants are
read with small chunks so that chunk boundaries fall everywhere; the original with the default ones.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stdout
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fixture_paths import KINETO_DIR

from llmtop.cli import main
from llmtop.traces import json_stream
from llmtop.traces.json_stream import WalkStatus, walk

FIXTURES = sorted(KINETO_DIR.glob("*.json.gz"))
# more top-level keys: lists and objects, with strings that look like the end of an event
EXTRA: dict[str, Any] = {
    "deviceProperties_copy": [{"id": 0, "name": "x}, {y", "arr": [{"a": 1}, {"b": "]}"}]}, {"id": 1}],
    "profilerMeta": {"nested": {"list": [1, 2, {"k": "}, {\"ph\": \"X\"}"}], "s": "\\"}, "empty": {}},
    "displayTimeUnit": "ms",
    "emptyList": [],
}


def dumps(v: Any, indent: int | None, level: int = 0) -> str:
    """JSON text that keeps every number as written (Decimal), indented or compact."""
    if isinstance(v, dict):
        sep = ": " if indent else ":"
        items = [f"{json.dumps(k)}{sep}{dumps(x, indent, level + 1)}" for k, x in v.items()]
        return _wrap("{", "}", items, indent, level)
    if isinstance(v, list):
        return _wrap("[", "]", [dumps(x, indent, level + 1) for x in v], indent, level)
    if isinstance(v, Decimal):
        return str(v)
    return json.dumps(v)


def _wrap(a: str, b: str, items: list[str], indent: int | None, level: int) -> str:
    if not items:
        return a + b
    if not indent:
        return a + ",".join(items) + b
    pad, inner = "\n" + " " * indent * level, "\n" + " " * indent * (level + 1)
    return a + inner + ("," + inner).join(items) + pad + b


def report(path: Path) -> dict[str, Any]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["report", str(path), "--format", "json"]) == 0
    rep = json.loads(buf.getvalue())
    steps = [(t["track"], t["kernels"], t["steps"]) for t in rep.get("tracks", [])]
    return {"kernels": rep["kernels"], "tokens": rep["tokens"], "layers": rep["layers"], "steps": steps,
            "kernels_total_ms": rep["kernels_total_ms"]}


@pytest.fixture(scope="module")
def originals() -> dict[Path, tuple[dict[str, Any], dict[str, Any]]]:
    out = {}
    for f in FIXTURES:
        with gzip.open(f) as g:
            doc = json.load(g, parse_float=Decimal)
        assert isinstance(doc, dict) and "traceEvents" in doc
        out[f] = (doc, report(f))
    return out


VARIANTS = [(p, ind, gz) for p in ("first", "middle", "last") for ind in (2, None) for gz in (True, False)]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name.split(".")[0])
def test_every_key_order_whitespace_and_compression(
    fixture: Path, originals: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc, want = originals[fixture]
    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 8192)  # many chunks even in a small file
    events = doc["traceEvents"]
    others = [(k, v) for k, v in doc.items() if k != "traceEvents"] + list(EXTRA.items())
    for pos, indent, gz in VARIANTS:
        at = {"first": 0, "middle": len(others) // 2, "last": len(others)}[pos]
        keys = [*others[:at], ("traceEvents", events), *others[at:]]
        text = dumps(dict(keys), indent)
        p = tmp_path / f"{pos}_{indent}_{gz}.json{'.gz' if gz else ''}"
        p.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
        assert report(p) == want, (pos, indent, gz)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name.split(".")[0])
@pytest.mark.parametrize("indent", [1, None])
def test_array_form(fixture: Path, indent: int | None, originals: dict, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    doc, want = originals[fixture]
    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 8192)
    p = tmp_path / "array.json"
    p.write_text(dumps(doc["traceEvents"], indent) + "\n")
    assert report(p) == want


def test_chunk_boundaries_inside_strings_and_nested_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Elements whose strings and nested lists hold `}, {`: every chunk size gives what json gives."""
    items: list[Any] = []
    for i in range(300):
        items.append({"ph": "X", "name": f"k{i}" + "}, {" * (i % 3), "ts": f"{i}.5", "args": {
            "stream": i % 4, "list": [{"a": "}, {"}, {"b": [{}, {"c": "]"}]}] * (i % 2)}})
        if i % 50 == 0:
            items += [7, "str", None, [], [{"x": 1}, {"y": 2}]]
    text = json.dumps({"a": [{"b": "}, {"}], "traceEvents": items, "z": [{"q": 1}, {"r": "}, {"}]})
    want = json.loads(text, parse_float=str)["traceEvents"]
    for chunk in (1, 7, 64, 1000, 1 << 20):
        monkeypatch.setattr(json_stream, "CHUNK_BYTES", chunk)
        st = WalkStatus()
        got = [x for kind, v in walk(text.encode(), "traceEvents", Any, (), st) if kind == "items" for x in v]
        assert got == want and not st.truncated and not st.recovered, chunk


def test_a_5mb_trace_with_keys_after_the_events_imports_in_seconds(tmp_path: Path) -> None:
    """The H100 trace that never finished: traceEvents followed by more keys holding objects and lists."""
    n = 12000
    ev = []
    for i in range(n):
        ev.append(f'{{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, '
                  f'"ts": {i * 10}.123, "dur": 5.5, "args": {{"External id": {i}, '
                  f'"Input Dims": [[4096, 4096], [4096, 4096]]}}}}')
        ev.append(f'{{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, '
                  f'"ts": {i * 10 + 1}.000, "dur": 2.0, "args": {{"correlation": {i}, "cbid": 211}}}}')
        ev.append(f'{{"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_{i % 7}", "pid": 0, "tid": 7, '
                  f'"ts": {i * 10 + 3}.250, "dur": 4.75, "args": {{"correlation": {i}, "device": 0, '
                  f'"stream": 7, "grid": [132, 1, 1], "block": [256, 1, 1]}}}}')
    props = [{"id": d, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85045231616, "computeMajor": 9,
              "numSms": 132, "regsPerBlock": 65536} for d in range(8)]
    text = ('{"schemaVersion": 1, "traceEvents": [\n' + ",\n".join(ev) + '\n], "deviceProperties": '
            + json.dumps(props) + ', "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1}, '
            '"cupti_version": 24, "traceName": "h100.json", "displayTimeUnit": "ms"}\n')
    p = tmp_path / "h100.json"
    p.write_text(text)
    assert p.stat().st_size > 5_000_000
    code = textwrap.dedent("""
        import json, sys, time
        from llmtop.traces.open import open_trace
        t = time.perf_counter()
        r = open_trace(sys.argv[1])
        n = sum(len(b.kernels) for b in r.batches)
        print(json.dumps({"s": time.perf_counter() - t, "n": n, "device": r.source.device}))
    """)
    t = time.perf_counter()
    try:
        cmd = [sys.executable, "-c", code, str(p)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("importing a 5 MB trace with keys after traceEvents took over 120 s (the old hang)")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["n"] == n and res["device"] == "NVIDIA H100 80GB HBM3"
    assert res["s"] < 30, res  # about 0.2 s on a 2-core machine; generous for a loaded one
    assert time.perf_counter() - t < 120


def test_msgspec_decodes_the_event_fields_exactly() -> None:
    """Floats reach the importer as their text: ns timestamps beyond float precision stay exact."""
    from llmtop.traces.importers.kineto import _Event, _Item

    doc = b'{"traceEvents": [{"ph": "X", "ts": 1694039959000054.484, "dur": 1e-3, "args": {"stream": 7}}]}'
    got = [v for kind, vs in walk(doc, "traceEvents", _Item, (), WalkStatus()) if kind == "items" for v in vs]
    assert isinstance(got[0], _Event) and got[0].ts == "1694039959000054.484" and got[0].dur == "1e-3"
    assert msgspec.json.Decoder(Any, float_hook=str).decode(b"[1.5]") == ["1.5"]
