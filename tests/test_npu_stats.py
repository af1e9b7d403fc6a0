"""The `npu` report section (llmtop/stats/npu.py) on hand-made events: bytes from the m / n fields, set-up
calls kept apart, the attribution's remainder, the text report, and the NPU pane (only for XRT calls)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmtop.events import (
    DECODE,
    KERNEL_DTYPE,
    NO_LAYER,
    OP_CLASS_ID,
    OP_CLASSES,
    PREFILL,
    STEP_DTYPE,
    EventBatch,
    SourceInfo,
    parse_xrt_name,
    xrt_name,
)
from llmtop.report import render
from llmtop.stats.aggregator import Aggregator

NPU = OP_CLASS_ID["npu"]
MS = 1_000_000


def npu_run() -> tuple[EventBatch, dict[str, Any]]:
    """Set-up (2 preload calls outside every step, one hw_context), then 3 decode steps of 2 layers x
    (rms: write 0.1 / run 1 / read 0.05 ms, 4096 B in, 2048 B out; attention on the CPU 0.3 ms) + head."""
    names: list[str] = []
    ids: dict[str, int] = {}

    def nid(n: str) -> int:
        if n not in ids:
            ids[n] = len(names)
            names.append(n)
        return ids[n]

    rows: list[tuple] = []
    t = 0

    def inv(kernel: str, step: int, layer: int, parts: tuple[float, float, float], b_in: int, b_out: int,
            setup: bool = False) -> None:
        nonlocal t
        for part, ms, m, n in zip(("bo_write", "npu_run", "bo_read"), parts, (b_in, 0, b_out),
                                  (1 if b_in else 0, 0, 1 if b_out else 0), strict=True):
            d = round(ms * MS)
            rows.append((nid(xrt_name(kernel, part, setup)), NPU, DECODE if step >= 0 else PREFILL, layer,
                         step, t, d, m, n))
            t += d

    def host(name: str, cls: str, step: int, layer: int, ms: float) -> None:
        nonlocal t
        d = round(ms * MS)
        rows.append((nid(name), OP_CLASS_ID[cls], DECODE, layer, step, t, d, 0, 0))
        t += d

    rows.append((nid(xrt_name("load", "hw_context", True)), NPU, PREFILL, NO_LAYER, -1, t, 30 * MS, 0, 0))
    t += 30 * MS
    for _ in range(2):
        inv("rms", -1, NO_LAYER, (0.5, 1.0, 0.05), 1 << 20, 2048, setup=True)
    steps = []
    for s in range(3):
        t0 = t
        for layer in range(2):
            inv("rms", s, layer, (0.1, 1.0, 0.05), 4096, 2048)
            host("attn_cpu", "attention", s, layer, 0.3)
            t += round(0.02 * MS)  # python between calls: in no event
        inv("head", s, NO_LAYER, (0.01, 5.0, 0.02), 4096, 8 * 1024)
        t += round(0.5 * MS)
        steps.append((DECODE, 0, s, 1, 1, 10 + s, t0, t - t0, 0, 0, 0))
    k = np.zeros(len(rows), KERNEL_DTYPE)
    for i, (n, c, ph, layer, step, start, d, m, nb) in enumerate(rows):
        k[i]["name"], k[i]["op_class"], k[i]["phase"], k[i]["layer"], k[i]["step"] = n, c, ph, layer, step
        k[i]["start_ns"], k[i]["dur_ns"], k[i]["m"], k[i]["n"] = start, d, m, nb
    st = np.array(steps, STEP_DTYPE)
    st["kernel_ns"] = [int(k["dur_ns"][k["step"] == s].sum()) for s in range(3)]
    return EventBatch(k, st, 0, names), {"wall_ms": float(st["dur_ns"].sum()) / MS}


def snapshot(mode: str = "cumulative", filt: str = "") -> dict[str, Any]:
    b, _ = npu_run()
    agg = Aggregator(window_s=3600)
    agg.set_source(SourceInfo(kind="live", backend="npu", n_layers=2,
                              extra={"npu": {"steps": "inferred", "layers": "inferred", "unpatched": []}}))
    half = len(b.kernels) // 2  # two batches: sums must not depend on the split
    agg.ingest(EventBatch(b.kernels[:half], b.steps[:0], 0, b.new_names))
    agg.ingest(EventBatch(b.kernels[half:], b.steps, len(b.new_names), []))
    return agg.snapshot(mode=mode, filter=filt).report


def test_names_and_class() -> None:
    assert OP_CLASSES[-1] == "npu" and OP_CLASS_ID["comm"] == 9  # appended: recorded ids never move
    assert parse_xrt_name(xrt_name("rms_gemv_rope", "npu_run")) == ("rms_gemv_rope", "npu_run", False)
    assert parse_xrt_name("xrt-setup:a/b/bo_read") == ("a/b", "bo_read", True)
    assert parse_xrt_name("matmul:q_proj") is None and parse_xrt_name("xrt:nopart") is None


def test_npu_section_rows_bytes_setup_and_attribution() -> None:
    _, want = npu_run()
    rep = snapshot()
    n = rep["npu"]
    rows = {r["name"]: r for r in n["kernels"]}
    assert set(rows) == {"rms", "head"}
    rms = rows["rms"]
    assert rms["count"] == 6
    assert (rms["bo_write_ms"], rms["npu_run_ms"], rms["bo_read_ms"]) == pytest.approx((0.6, 6.0, 0.3))
    assert rms["total_ms"] == pytest.approx(6.9) and rms["mean_ms"] == pytest.approx(1.15)
    assert rms["mb_written"] == pytest.approx(6 * 4096 / 2**20)
    assert rms["mb_read"] == pytest.approx(6 * 2048 / 2**20)
    assert rms["buffers_written_per_call"] == 1 and rms["buffers_read_per_call"] == 1
    assert rows["head"]["mb_read"] == pytest.approx(3 * 8192 / 2**20)
    tot = n["totals"]
    assert tot["count"] == 9 and tot["total_ms"] == pytest.approx(rms["total_ms"] + rows["head"]["total_ms"])
    assert sum(r["pct"] for r in n["kernels"]) == pytest.approx(100)
    # the preloads and the hw_context outside every step: apart from the rows and the attribution
    assert n["setup"]["count"] == 2 and n["setup"]["kernels"][0]["mb_written"] == pytest.approx(2.0)
    assert n["load"] == {"calls": 1, "ms": pytest.approx(30.0),
                         "by_call": {"hw_context": {"calls": 1, "ms": pytest.approx(30.0)}}}
    assert n["host_ops"] == [{"name": "attn_cpu", "op_class": "attention", "count": 6,
                              "total_ms": pytest.approx(1.8), "mean_ms": pytest.approx(0.3)}]
    a = n["attribution"]["decode"]
    assert a["steps"] == 3 and a["wall_ms"] == pytest.approx(want["wall_ms"])
    assert a["npu_ms"] == pytest.approx(tot["total_ms"]) and a["host_ms"] == pytest.approx(1.8)
    assert a["python_ms"] == pytest.approx(3 * (2 * 0.02 + 0.5))  # the gaps no event covers
    assert a["python_ms"] == pytest.approx(a["wall_ms"] - a["npu_ms"] - a["host_ms"])
    assert n["attribution"]["prefill"]["steps"] == 0
    assert n["steps_source"] == "inferred" and any("2 layers inferred" in x for x in n["notes"])
    # bytes are not a matmul shape: no shapes, no roofline for XRT rows
    assert all(r.get("flops") is None for r in rep["kernels"])


def test_window_mode_filter_and_no_npu() -> None:
    win = snapshot("window", filt="layer:0")
    cum = snapshot()
    assert win["npu"]["kernels"] == cum["npu"]["kernels"]  # all inside the window; the filter does not apply
    agg = Aggregator()
    k = np.zeros(1, KERNEL_DTYPE)
    k["op_class"], k["dur_ns"] = OP_CLASS_ID["matmul"], 5
    agg.ingest(EventBatch(k, np.zeros(0, STEP_DTYPE), 0, ["matmul:q_proj"]))
    assert agg.snapshot().report["npu"] is None


def test_text_report_has_the_tables() -> None:
    text = render(snapshot(), "text")
    for s in ("NPU XRT calls", "rms", "TOTAL", "set-up outside every step", "load (hw_context",
              "NPU wall-time attribution", "CPU host ops", "attn_cpu", "layers inferred"):
        assert s in text, s
    md = render(snapshot(), "markdown")
    assert "NPU XRT calls" in md


async def test_npu_pane_only_for_npu_sources(tmp_path: Path) -> None:
    from npu_stand_in import mlir_air_log

    from llmtop.traces.open import open_trace
    from llmtop.tui.app import LlmtopApp
    from llmtop.tui.panes import NpuPane
    from llmtop.tui.provider import AggregatorProvider

    log = tmp_path / "profile.log"
    log.write_text(mlir_air_log())
    res = open_trace(log)
    agg = Aggregator(window_s=3600.0)
    agg.set_source(res.source)
    for b in res.batches:
        agg.ingest(b)
    app = LlmtopApp(AggregatorProvider(agg))
    async with app.run_test(size=(140, 50)) as pilot:
        await pilot.pause()
        pane = app.query_one(NpuPane)
        assert pane.has_class("-shown") and pane.display and pane.size.height > 5
        text = pane.text()
        for s in ("XRT 1,039 calls", "write", "run", "read", "TTFT 1.28 s", "TPOT 92.8 ms", "NPU XRT",
                  "CPU host", "python", "drift +0.5%", "rms_gemv_rope", "×480", "decode_attention_cpu",
                  "█"):
            assert s in text, (s, text)
    plain = Aggregator(window_s=3600.0)
    k = np.zeros(1, KERNEL_DTYPE)
    k["op_class"], k["dur_ns"] = OP_CLASS_ID["matmul"], 5
    plain.ingest(EventBatch(k, np.zeros(0, STEP_DTYPE), 0, ["matmul:q_proj"]))
    app = LlmtopApp(AggregatorProvider(plain))
    async with app.run_test(size=(140, 50)) as pilot:
        await pilot.pause()
        pane = app.query_one(NpuPane)
        assert not pane.has_class("-shown") and pane.size.height == 0
