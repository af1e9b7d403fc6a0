"""Chrome Trace Event export: valid JSON, one X event per kernel and step, counters, metadata."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from fixture_paths import KINETO_DIR

from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.errors import LlmtopError
from llmtop.events import NO_LAYER, CounterSample, EventBatch, Marker
from llmtop.traces.chrome_export import export_chrome, export_file
from llmtop.traces.recording import RecordingWriter


def make_items() -> tuple[SyntheticEngine, list]:
    eng = SyntheticEngine(n_layers=4, step_time_s=0.0)
    items: list = [Marker(1, "round 0")]
    for i in range(3):
        eng.generate(["a", "b"], 5)
        items.append(eng.ops.recorder.drain())
        values = {"cpu_pct": 50.0 + i, "rss_bytes": 1e8, "bad": float("nan")}
        items.append(CounterSample("process", 10 + i, values))
    return eng, items


def load(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("track_by", ["layer", "phase"])
def test_event_counts_and_tracks(tmp_path: Path, track_by: str) -> None:
    eng, items = make_items()
    batches = [b for b in items if isinstance(b, EventBatch)]
    kernels = sum(len(b.kernels) for b in batches)
    steps = sum(len(b.steps) for b in batches)
    samples = [c for c in items if isinstance(c, CounterSample)]
    out = tmp_path / "trace.json"
    counts = export_chrome(iter(items), eng.source_info(), None, out, track_by=track_by)
    doc = load(out)
    ev = doc["traceEvents"]
    assert doc["otherData"]["source"]["model"] == "synthetic"
    by_ph = Counter(e["ph"] for e in ev)
    assert dict(by_ph) == counts
    x_kernels = [e for e in ev if e["ph"] == "X" and e["cat"] != "step"]
    x_steps = [e for e in ev if e["ph"] == "X" and e["cat"] == "step"]
    assert len(x_kernels) == kernels and len(x_steps) == steps
    toks = [e for e in ev if e["ph"] == "C" and e["name"] == "tok/s"]
    assert len(toks) == steps
    gauges = [e for e in ev if e["ph"] == "C" and e["name"] != "tok/s"]
    assert len(gauges) == sum(len(c.values) for c in samples)
    assert all(e["args"]["value"] is None for e in gauges if e["name"] == "process.bad")  # NaN -> null
    assert by_ph["i"] == 1
    thread_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["name"] == "thread_name"}
    if track_by == "layer":
        layers = {int(x) for b in batches for x in set(b.kernels["layer"].tolist())}
        assert len(thread_names) == len(layers) + 1  # + the steps track
        assert "outside layers" in thread_names.values() and NO_LAYER in layers
        assert {f"layer {i}" for i in range(4)} <= set(thread_names.values())
    else:
        assert set(thread_names.values()) == {"steps", "prefill kernels", "decode kernels"}
    # every kernel event sits on a named track of a named process
    procs = {e["pid"] for e in ev if e["name"] == "process_name"}
    assert all((e["pid"], e["tid"]) in thread_names and e["pid"] in procs for e in x_kernels)
    # names resolved (no placeholder ids), exact ns -> µs timestamps
    all_k = [k for b in batches for k in b.kernels]
    assert {e["name"] for e in x_kernels} == {eng.ops.recorder.names[int(k["name"])] for k in all_k}
    first = all_k[0]
    e0 = next(e for e in x_kernels if round(e["ts"] * 1000) == int(first["start_ns"]))
    assert round(e0["dur"] * 1000) == int(first["dur_ns"])
    text = out.read_text()
    assert all(len(m) == 3 for m in re.findall(r'"ts":-?\d+\.(\d+)', text))
    # tok/s of a step = tokens / wall
    s0 = batches[0].steps[0]
    assert toks[0]["args"]["prefill"] == pytest.approx(s0["tokens"] * 1e9 / s0["dur_ns"], rel=1e-6)


def test_export_recording_file_and_truncated_warning(tmp_path: Path) -> None:
    eng, items = make_items()
    items = items[:-1]  # end on a batch, so the cut below loses kernels
    assert isinstance(items[-1], EventBatch)
    rec = tmp_path / "r.llmtop"
    with RecordingWriter(rec, eng.source_info()) as w:
        for it in items:
            w.write(it)
    data = rec.read_bytes()
    rec.write_bytes(data[:-10])  # cut the last record
    counts, warnings = export_file(rec, tmp_path / "o.json")
    doc = load(tmp_path / "o.json")
    assert len(doc["traceEvents"]) == sum(counts.values())
    assert warnings and "cut short" in warnings[0]
    kernels = sum(len(b.kernels) for b in items if isinstance(b, EventBatch))
    assert 0 < counts["X"] < kernels + sum(len(b.steps) for b in items if isinstance(b, EventBatch))


def test_bad_inputs(tmp_path: Path) -> None:
    eng, items = make_items()
    with pytest.raises(LlmtopError, match="track grouping"):
        export_chrome(items, eng.source_info(), None, tmp_path / "x.json", track_by="kernel")
    with pytest.raises(LlmtopError, match="cannot write"):
        export_chrome(items, eng.source_info(), None, tmp_path / "no" / "x.json")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(LlmtopError) as e:
        export_file(junk, tmp_path / "x.json")
    assert "\n" not in str(e.value)
    with pytest.raises(LlmtopError, match="no such file"):
        export_file(tmp_path / "missing.llmtop", tmp_path / "x.json")


def test_export_imported_trace(tmp_path: Path) -> None:
    """A real foreign trace goes through the importers (when present) and exports the same way."""
    fixtures = sorted(KINETO_DIR.glob("*.json*"))
    assert fixtures, "tests/fixtures/kineto is empty"
    counts, _ = export_file(fixtures[0], tmp_path / "k.json")
    doc = load(tmp_path / "k.json")
    assert counts.get("X", 0) > 0 and len(doc["traceEvents"]) == sum(counts.values())
