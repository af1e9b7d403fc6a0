"""The TUI's pure parts (braille plot, formatting, stacked bars) and the live-pipeline provider."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from llmtop.collectors.engine import EngineCollector
from llmtop.collectors.gpu import GpuCollector
from llmtop.collectors.pipeline import Pipeline
from llmtop.collectors.process import ProcessCollector
from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.stats.aggregator import Aggregator
from llmtop.tui import view
from llmtop.tui.app import LlmtopApp
from llmtop.tui.panes import DeviceStrip, HeaderBar, KernelTable
from llmtop.tui.panes.layers import _stack_cells
from llmtop.tui.plot import BrailleCanvas, Series, decimate, plot_rows
from llmtop.tui.provider import PipelineProvider, SnapshotProvider


def test_braille_dots_land_where_expected() -> None:
    c = BrailleCanvas(2, 1)  # 4 x 4 dots
    c.set(0, 0)
    c.set(3, 3)
    rows = c.rows()
    assert [r.plain for r in rows] == [chr(0x2800 + 0x01) + chr(0x2800 + 0x80)]
    c.set(99, 99)  # out of range: ignored, no exception
    assert c.rows()[0].plain == rows[0].plain


def test_line_plot_spans_the_canvas_and_rises() -> None:
    rows = plot_rows(10, 3, [Series([0, 1, 2, 3], [0, 1, 2, 3], line=True)])
    text = [r.plain for r in rows]
    assert len(text) == 3 and all(len(t) == 10 for t in text)
    # lowest point bottom-left, highest top-right, and no gaps in a line series
    assert text[2][0] != " " and text[0][-1] != " "
    assert all(any(ch != " " for ch in t) for t in text)


def test_plot_skips_non_finite_points_and_flat_series() -> None:
    rows = plot_rows(4, 2, [Series([0, 1, 2], [1.0, float("nan"), 1.0])])
    assert sum(ch != " " for r in rows for ch in r.plain) == 2
    assert [r.plain for r in plot_rows(4, 2, [])] == ["    ", "    "]


@pytest.mark.parametrize(
    ("value", "ms", "dur", "pct"),
    [
        (0.001234, "0.00123", "1.2 µs", "0.0%"),
        (0.01234, "0.0123", "12 µs", "0.0%"),
        (0.1234, "0.123", "123 µs", "0.1%"),
        (1.5, "1.50", "1.50 ms", "1.5%"),
        (12.34, "12.3", "12.3 ms", "12.3%"),
        (1234.0, "1,234", "1.23 s", "1234%"),
        (None, "–", "–", "–"),
        (float("nan"), "–", "–", "–"),
    ],
)
def test_number_formats(value: float | None, ms: str, dur: str, pct: str) -> None:
    assert view.fmt_ms(value) == ms
    assert view.fmt_duration_ms(value) == dur
    assert view.fmt_pct(value) == pct


def test_shorten_keeps_both_ends() -> None:
    assert view.shorten("matmul:gate_proj", 30) == "matmul:gate_proj"
    s = view.shorten("void at::native::vectorized_elementwise_kernel<4>", 20)
    assert len(s) == 20 and s.startswith("void at::") and s.endswith("kernel<4>")


def test_stacked_bar_cells_split_by_op_class() -> None:
    # 3/4 matmul + 1/4 attention over a 2-row bar at full height: 12 eighths matmul, 4 attention
    cells = _stack_cells([("matmul", 3.0), ("attention", 1.0)], peak=4.0, h=2)
    assert cells[0] == ("█", "matmul", "")
    assert cells[1] == ("▄", "matmul", "attention")
    # half height, single class: a partial top block, nothing above
    assert _stack_cells([("norm", 1.0)], peak=2.0, h=2) == [("█", "norm", ""), (" ", "", "")]


def test_pipeline_provider_drives_the_app() -> None:
    """A live pipeline (synthetic producer, real process/GPU collectors) behind the provider protocol."""
    agg = Aggregator(window_s=30.0)
    pipe = Pipeline(agg, report_interval=0.1)
    engine = SyntheticEngine(n_layers=3, step_time_s=0.002)
    pipe.set_source(engine.source_info())
    pipe.add(EngineCollector(engine, loop=True, max_new_tokens=8, drain_interval=0.01))
    pipe.add(ProcessCollector(interval=0.1))
    gpu = pipe.add(GpuCollector(interval=0.2))
    provider = PipelineProvider(pipe)
    assert isinstance(provider, SnapshotProvider)
    pipe.start()
    try:
        deadline = time.monotonic() + 10
        while "process" not in pipe.counters.latest() and time.monotonic() < deadline:
            time.sleep(0.05)
        counters = provider.counters()
        assert counters["process"]["rss_bytes"] > 0
        if not gpu.available:
            assert counters["gpu_absent"] == gpu.reason
        status = provider.status()
        assert status["kind"] == "live" and status["state"] == "running"
        assert status["prompt"].startswith("#")
        assert "gpu" not in status["errors"]  # an absent GPU is a reason, not an error

        async def drive() -> None:
            app = LlmtopApp(provider)
            async with app.run_test(size=(100, 30)) as pilot:
                await pilot.pause()
                app.refresh_now()
                await pilot.pause()
                assert app.query_one(KernelTable).row_count > 0
                assert "synthetic" in app.query_one(HeaderBar).content.plain
                strip = app.query_one(DeviceStrip).content.plain
                assert "RSS" in strip and "GPU" in strip
                await pilot.press("space")
                assert provider.status()["state"] == "paused"

        asyncio.run(drive())
    finally:
        pipe.stop()


def test_decimate_keeps_each_columns_extremes_in_order() -> None:
    rng = np.random.default_rng(0)
    xs = np.arange(2000, dtype=float)
    ys = rng.random(2000) * 100
    ys[1234] = 1000.0  # a spike must survive
    ys[77] = -5.0
    dx, dy = decimate(xs.tolist(), ys.tolist(), 40)
    assert len(dx) <= 80
    assert dx == sorted(dx)
    assert max(dy) == 1000.0 and min(dy) == -5.0
    cols = ((np.array(dx) - 0) / 1999 * 39).astype(int)
    for c in range(40):  # every column's min and max (computed directly) are kept
        sel = ((xs / 1999 * 39).astype(int)) == c
        assert ys[sel].max() in dy and ys[sel].min() in dy
        assert (cols == c).sum() <= 2
    short = decimate([0.0, 1.0, 2.0], [1.0, float("nan"), 3.0], 40)  # few points: unchanged, gaps kept
    assert short[0] == [0.0, 1.0, 2.0] and math.isnan(short[1][1])


def test_wgpu_adapter_fills_the_gpu_half_of_the_strip() -> None:
    """Without NVML, a WebGPU source's adapter (name, backend, features, limits, weight path) is shown."""
    from llmtop.events import SourceInfo

    adapter = {"name": "llvmpipe (LLVM 15.0.6, 256 bits)", "backend": "Vulkan", "type": "CPU",
               "features": ["timestamp-query", "timestamp-query-inside-passes"],
               "limits": {"max-buffer-size": 2**31, "max-texture-dimension-2d": 16384},
               "timing": "inside-pass", "weight_read": "storage"}
    line = view.adapter_line(adapter)
    assert line.startswith("llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, CPU)")
    assert "features ts,ts-in-pass" in line and "tex ≤ 16384" in line and "weights storage" in line
    pipe = Pipeline(Aggregator())
    pipe.set_source(SourceInfo(kind="live", backend="wgpu", extra={"adapter": adapter}))
    pipe.add(GpuCollector())
    counters = PipelineProvider(pipe).counters()
    assert counters["adapter"] == adapter

    async def run() -> str:
        app = LlmtopApp(PipelineProvider(pipe), refresh_hz=0.01)
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause()
            return app.query_one(DeviceStrip).content.plain

    strip = asyncio.run(run())
    assert "GPU llvmpipe" in strip and "absent" not in strip


def test_row_selected_message_keeps_its_handler_name_and_coalesces() -> None:
    """The table's message lives in llmtop.tui.messages; handlers written for the nested class still fire."""
    from llmtop.tui.messages import RowSelected

    assert KernelTable.RowSelected is RowSelected
    assert RowSelected.handler_name == "on_kernel_table_row_selected"
    a, b = KernelTable(id="a"), KernelTable(id="b")
    first, later = RowSelected(a, "matmul:q_proj"), RowSelected(a, "attention:decode")
    assert later.can_replace(first) and later.control is a
    assert not RowSelected(b, "x").can_replace(first)  # another table's selection is its own
