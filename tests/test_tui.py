"""Pilot tests of the Textual app on a real short generation (real model, real Aggregator).

The events come from the shipped SmolLM2 GGUF running a few decode steps on the torch CPU backend;
the app reads them only through Aggregator snapshots, as in a live run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from textual.geometry import Region

from llmtop.events import OP_CLASSES, EventBatch, SourceInfo
from llmtop.stats.aggregator import Aggregator
from llmtop.tui import view
from llmtop.tui.app import MIN_HEIGHT, MIN_WIDTH, LlmtopApp
from llmtop.tui.panes import (
    AttentionPane,
    DeviceStrip,
    ErrorBar,
    HeaderBar,
    KernelTable,
    LayerPane,
    TokenPane,
)
from llmtop.tui.provider import AggregatorProvider, SnapshotProvider
from llmtop.tui.screens import FilterInput, HelpScreen, KernelDetailScreen

GEN_TOKENS = 10


@pytest.fixture(scope="module")
def generation() -> tuple[EventBatch, SourceInfo, int]:
    """(all events of one real generation, its SourceInfo, number of decoder layers)."""
    from llmtop.kernels.torch_backend import TorchOps
    from llmtop.model.engine import Engine
    from llmtop.model.loader import load_model

    loaded = load_model("default")
    engine = Engine(loaded, TorchOps(threads=1), max_context=256)
    engine.generate(["Name three colors."], GEN_TOKENS)
    batch = engine.ops.recorder.drain()
    assert batch is not None and len(batch.steps) >= 3
    return batch, engine.source_info(), loaded.config.n_layers


def split(batch: EventBatch, at_step: int) -> tuple[EventBatch, EventBatch]:
    """Two in-order batches of one stream: steps before `at_step`, then the rest."""
    k1, k2 = batch.kernels["step"] < at_step, batch.kernels["step"] >= at_step
    s1, s2 = batch.steps["step"] < at_step, batch.steps["step"] >= at_step
    first = EventBatch(batch.kernels[k1], batch.steps[s1], batch.names_base, list(batch.new_names))
    rest = EventBatch(batch.kernels[k2], batch.steps[s2], batch.names_base + len(batch.new_names), [])
    return first, rest


def make_provider(
    generation: tuple[EventBatch, SourceInfo, int], *, upto: int | None = None
) -> AggregatorProvider:
    batch, source, _ = generation
    # A window far longer than the test run: the numbers must not age out while a test runs.
    agg = Aggregator(window_s=3600.0)
    agg.set_source(source)
    agg.ingest(batch if upto is None else split(batch, upto)[0])
    return AggregatorProvider(
        agg,
        counters={
            "process": {"cpu_pct": 97.0, "rss_bytes": 3.2e8, "threads": 7.0},
            "gpu_absent": "no NVIDIA GPU found",
        },
    )


def report(app: LlmtopApp) -> dict[str, Any]:
    return app.snapshot.report


def table(app: LlmtopApp) -> KernelTable:
    return app.query_one(KernelTable)


def kernel_names(app: LlmtopApp) -> list[str]:
    return [str(r["name"]) for r in report(app)["kernels"]]


def text_of(widget: Any) -> str:
    return widget.text()


@pytest.fixture
def provider(generation: tuple[EventBatch, SourceInfo, int]) -> Iterator[AggregatorProvider]:
    yield make_provider(generation)


async def test_panes_fill(
    provider: AggregatorProvider, generation: tuple[EventBatch, SourceInfo, int]
) -> None:
    assert isinstance(provider, SnapshotProvider)
    _, source, n_layers = generation
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        rep = report(app)
        names = kernel_names(app)
        assert len(names) >= 15  # every kernel of a decoder layer + embedding, lm_head, sampling ...
        assert table(app).order == names
        assert table(app).row_count == len(names)
        top = rep["kernels"][0]
        assert table(app).row_cells(top["name"])[0] == top["name"]
        assert table(app).row_cells(top["name"])[1] == top["op_class"]
        header = app.query_one(HeaderBar).content.plain
        assert source.backend in header and source.device in header and source.timing in header
        assert "SmolLM2" in header or source.model in header
        tokens = text_of(app.query_one(TokenPane))
        assert "decode" in tokens and "TTFT" in tokens and "TPOT" in tokens
        assert f"gen {rep['tokens']['generated']}" in tokens
        layers = text_of(app.query_one(LayerPane))
        assert "peak L" in layers and "matmul" in layers and "█" in layers
        assert len(rep["layers"]) == n_layers
        attention = text_of(app.query_one(AttentionPane))
        # 10 tokens of context growth: no line and no slope stated, the rule's reason instead (issue 17)
        assert "context range too narrow" in attention and "ms/1k tok" not in attention
        assert rep["attention"]["fit_ok"] is False and "slope" in rep["attention"]["fit_rule"]
        strip = app.query_one(DeviceStrip).content.plain
        assert "CPU 97.0%" in strip and "7 thr" in strip and "no NVIDIA GPU found" in strip


async def test_sort_cycles_and_orders_rows(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("s")
        assert app.sort_key == "count"
        rows = {r["name"]: r for r in report(app)["kernels"]}
        counts = [rows[k]["count"] for k in table(app).order]
        assert counts == sorted(counts, reverse=True)
        assert "▼count" in table(app).header_labels()["count"]
        for expected in ("mean", "p95", "max", "name", "total"):
            await pilot.press("s")
            assert app.sort_key == expected
        # back at total: rows ordered by total time, as the snapshot ordered them
        totals = [rows[k]["total_ms"] for k in table(app).order]
        assert totals == sorted(totals, reverse=True)
        assert "sort total" in str(table(app).border_title)


async def test_group_by_cycles(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("g")
        assert app.group == "op_class" and report(app)["group"] == "op_class"
        keys = set(table(app).order)
        assert keys and keys <= set(OP_CLASSES) and "matmul" in keys
        await pilot.press("g")
        assert app.group == "layer"
        assert table(app).row_count == len(report(app)["kernels"]) > 1
        await pilot.press("g")
        assert app.group == "kernel" and "matmul:q_proj" in table(app).order


async def test_ticks_build_snapshots_in_a_worker(generation: tuple[EventBatch, SourceInfo, int]) -> None:
    import threading

    batch, _, _ = generation
    provider = make_provider(generation, upto=3)
    threads: list[str] = []
    inner = provider.snapshot

    def snapshot(*a: object) -> object:
        threads.append(threading.current_thread().name)
        return inner(*a)

    provider.snapshot = snapshot  # type: ignore[method-assign]
    app = LlmtopApp(provider, refresh_hz=0.01)  # ticks driven below
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        before = report(app)["tokens"]["generated"]
        ui_thread = threading.current_thread().name
        provider.aggregator.ingest(split(batch, 3)[1])
        app._tick()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert threads[-1] != ui_thread  # built in the worker ...
        assert report(app)["tokens"]["generated"] > before  # ... and swapped into the panes
        # a key press in between makes the worker's snapshot stale: it is dropped, never shown
        app._tick()
        await pilot.press("s")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.sort_key != "total" and report(app)["sort"] == app.sort_key


async def test_snapshot_begun_before_reset_is_dropped(generation: tuple[EventBatch, SourceInfo, int]) -> None:
    import threading
    import time as _time

    provider = make_provider(generation, upto=3)
    inner = provider.snapshot
    main = threading.main_thread()

    def slow_in_workers(*a: object) -> object:
        snap = inner(*a)  # taken now, with the pre-reset numbers ...
        if threading.current_thread() is not main:
            _time.sleep(0.3)  # ... and delivered after the reset below
        return snap

    provider.snapshot = slow_in_workers  # type: ignore[method-assign]
    app = LlmtopApp(provider, refresh_hz=0.01)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert table(app).row_count > 0
        app._tick()
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert table(app).row_count == 0  # the stale worker snapshot did not bring the old rows back


async def test_pause_freezes_panes(generation: tuple[EventBatch, SourceInfo, int]) -> None:
    batch, _, _ = generation
    provider = make_provider(generation, upto=3)
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        before = report(app)["tokens"]["generated"]
        await pilot.press("space")
        assert app.paused
        assert "PAUSED" in app.query_one(HeaderBar).content.plain
        provider.aggregator.ingest(split(batch, 3)[1])
        app._tick()  # a refresh tick while paused must not touch the panes
        await pilot.pause()
        assert report(app)["tokens"]["generated"] == before
        await pilot.press("space")
        assert not app.paused
        assert report(app)["tokens"]["generated"] > before
        assert "PAUSED" not in app.query_one(HeaderBar).content.plain


async def test_filter_box(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        all_rows = table(app).row_count
        await pilot.press("slash")
        box = app.query_one(FilterInput)
        assert box.has_focus and box.display
        await pilot.press(*"matmul")
        assert app.filter_text == "matmul"
        assert 0 < table(app).row_count < all_rows
        assert all("matmul" in k for k in table(app).order)
        assert app.sort_key == "total"  # typing "s" in the box filters, it does not cycle the sort
        await pilot.press("enter")
        assert not box.display and table(app).has_focus
        assert "filter “matmul”" in str(table(app).border_title)
        await pilot.press("slash", "escape")
        assert app.filter_text == "" and table(app).row_count == all_rows


async def test_window_toggle(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert report(app)["mode"] == "window"
        # every pane names its scope (issue 17): the window's length, or since start / since reset
        assert "last 3,600 s" in str(table(app).border_title) or "last 3600 s" in str(table(app).border_title)
        for pane in (TokenPane, LayerPane):
            assert "last 3600 s" in str(app.query_one(pane).border_title)
        assert "since start" in str(app.query_one(AttentionPane).border_title)  # context needs all of it
        await pilot.press("w")
        assert app.mode == "cumulative" and report(app)["mode"] == "cumulative"
        assert "since start" in str(table(app).border_title)
        assert all("since start" in str(app.query_one(p).border_title) for p in (TokenPane, LayerPane,
                                                                                 AttentionPane))
        assert "cumulative" in app.query_one(HeaderBar).content.plain
        await pilot.press("r")
        await pilot.pause()
        assert "since reset" in str(table(app).border_title)
        await pilot.press("w")
        assert app.mode == "window"


async def test_reset_empties_then_refills(generation: tuple[EventBatch, SourceInfo, int]) -> None:
    batch, _, _ = generation
    provider = make_provider(generation, upto=3)
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert table(app).row_count > 0
        await pilot.press("r")
        assert table(app).row_count == 0
        assert (
            "waiting" in text_of(app.query_one(TokenPane)) or report(app)["tokens"].get("generated", 0) == 0
        )
        provider.aggregator.ingest(split(batch, 3)[1])
        app.refresh_now()
        await pilot.pause()
        assert table(app).row_count > 0


async def test_detail_screen_opens_and_closes(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        top = table(app).order[0]
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, KernelDetailScreen) and screen.kernel == top
        body = screen.query_one("#detail-body").content.plain
        assert "Shapes" in body and "Duration distribution" in body and "Per layer" in body
        title = screen.query_one("#detail-title").content.plain
        assert "count" in title and "p95" in title
        # each count names its scope: the view's (the window here) beside the shapes' (the whole run)
        assert "last 3600 s · count" in title, title
        assert "Duration distribution · last 3600 s" in body and "counted since start" in body
        await pilot.press("escape")
        assert not isinstance(app.screen, KernelDetailScreen)


async def test_help_screen(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "cycle sort" in app.screen.query_one("#help-text").content.plain
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_theme_toggle(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        dark = app.current_theme.dark
        await pilot.press("t")
        await pilot.pause()
        assert app.current_theme.dark is not dark
        assert table(app).row_count == len(kernel_names(app))  # rebuilt with the new styles


async def test_usable_at_80x24(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-compact") and not app.screen.has_class("-too-small")
        t = table(app)
        assert t.row_count == len(kernel_names(app))
        assert {"op_class", "total_ms", "mean_ms", "p95_ms", "pct"} <= set(t.shown_columns)
        # every pane keeps a visible area, and the whole table fits the width (no sideways scroll)
        for w in (app.query_one(TokenPane), app.query_one(LayerPane), app.query_one(AttentionPane), t):
            assert w.region.width > 0 and w.region.height >= 3
        assert t.virtual_size.width <= t.size.width
        assert "█" in text_of(app.query_one(LayerPane))
        await pilot.press("s")  # keys still work in the compact layout
        assert "▼count" in t.header_labels()["count"]


async def test_too_small_terminal_says_so(provider: AggregatorProvider) -> None:
    app = LlmtopApp(provider)
    async with app.run_test(size=(MIN_WIDTH - 10, MIN_HEIGHT - 4)) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-too-small")
        msg = app.query_one("#too-small")
        assert msg.display and "too small" in str(msg.content)
        assert not table(app).display or table(app).region.height == 0
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert not app.screen.has_class("-too-small")


async def test_rows_keep_their_place_between_refreshes(
    generation: tuple[EventBatch, SourceInfo, int],
) -> None:
    batch, _, _ = generation
    provider = make_provider(generation, upto=4)
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        t = table(app)
        first = t.order
        app.refresh_now()
        await pilot.pause()
        assert t.order == first  # same data, same order: nothing moves
        await pilot.press("down", "down")
        chosen = t.cursor_key()
        provider.aggregator.ingest(split(batch, 4)[1])
        app.refresh_now()
        await pilot.pause()
        assert t.order == kernel_names(app)
        assert t.cursor_key() == chosen  # the selection follows its kernel if rows reorder


class FailingProvider(AggregatorProvider):
    def snapshot(self, mode: str, group: str, sort: str, filter: str) -> Any:
        if getattr(self, "fail", False):
            raise RuntimeError("source went away")
        return super().snapshot(mode, group, sort, filter)

    def status(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            **super().status(),
            "errors": {"gpu": "NVMLError: GPU is lost"},
            "behind": "falling behind: 120 events dropped in 1.0s",
        }


async def test_failures_are_shown_not_raised(generation: tuple[EventBatch, SourceInfo, int]) -> None:
    base = make_provider(generation)
    provider = FailingProvider(base.aggregator, counters=base.counters())
    app = LlmtopApp(provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        rows = table(app).row_count
        header = app.query_one(HeaderBar).content.plain
        assert "⚠ falling behind: 120 events dropped" in header
        assert "GPU ✖ NVMLError: GPU is lost" in app.query_one(DeviceStrip).content.plain
        provider.fail = True
        app._tick()  # the snapshot is built in a worker thread and swapped in on the UI thread
        await app.workers.wait_for_complete()
        await pilot.pause()
        errors = app.query_one(ErrorBar)
        assert errors.display and "source went away" in errors.content.plain
        assert table(app).row_count == rows  # the last good frame stays


def test_bad_refresh_rate_is_a_usage_error(provider: AggregatorProvider) -> None:
    from llmtop.errors import UsageError

    for bad in (0.0, -1.0, 1000.0):
        with pytest.raises(UsageError, match="--refresh"):
            LlmtopApp(provider, refresh_hz=bad)


async def test_table_repaints_only_changed_lines(provider: AggregatorProvider) -> None:
    """A refresh marks dirty only the table lines whose cells changed (whole-table repaints are costly)."""
    app = LlmtopApp(provider, refresh_hz=0.01)  # no timer refresh in between: the test drives show()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        t = table(app)
        rows = [dict(r) for r in report(app)["kernels"]]
        calls: list[tuple[Region, ...]] = []
        real_refresh = t.refresh

        def spy(*regions: Region, **kw: Any) -> Any:
            calls.append(regions)
            return real_refresh(*regions, **kw)

        t.refresh = spy  # type: ignore[method-assign]
        t.show(rows, app.sort_key)
        assert calls == []  # nothing changed: nothing to repaint
        rows[2]["mean_ms"] = 1234.5  # not the sort column: the order stays, one line changes
        t.show(rows, app.sort_key)
        assert len(calls) == 1 and len(calls[0]) == 1
        region = calls[0][0]
        assert (region.y, region.height) == (3, 1)  # line 0 is the header, row 2 is line 3
        assert view.fmt_ms(1234.5) in t.row_cells(str(rows[2]["name"]))
        await pilot.press("down")  # a moved cursor repaints the whole table next time
        calls.clear()
        t.show(rows, app.sort_key)
        assert calls == [()]


async def test_b_shows_roofline_columns_and_the_detail_plots_the_kernel(provider: AggregatorProvider) -> None:
    """`b` swaps the duration columns for bytes / GB/s / GFLOP/s / % of peak / bound (issue 18); the
    detail of a matmul puts it on the device's roofline."""
    app = LlmtopApp(provider)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        rep = report(app)
        assert rep["device_peak"] is not None  # the CPU probe's (cached) peak, via the engine's source
        await pilot.press("b")
        await pilot.pause()
        t = table(app)
        assert t.roofline and {"gbps", "pct_peak_bw", "bound"} <= set(t.shown_columns)
        rows = {r["name"]: r for r in rep["kernels"]}
        key = next(k for k in t.order if k.startswith("matmul:"))
        cells = dict(zip(("name", *t.shown_columns), t.row_cells(key), strict=True))
        assert cells["bound"] == rows[key]["bound"] == "memory"
        assert cells["gbps"] == view.fmt_rate(rows[key]["gbps"])
        plain = next(k for k in t.order if not k.startswith("matmul:"))
        assert dict(zip(("name", *t.shown_columns), t.row_cells(plain), strict=True))["gbps"] == view.DASH
        t.cursor_row = t.order.index(key)
        await pilot.press("enter")
        body = ""
        for _ in range(50):  # the detail fills on mount: a loaded machine may take a few frames
            await pilot.pause(0.05)
            content = app.screen.query_one("#detail-body").content if isinstance(app.screen,
                                                                                 KernelDetailScreen) else ""
            body = getattr(content, "plain", content)
            if "Roofline" in body:
                break
        assert "Roofline" in body and "●" in body and "memory-bound" in body
        await pilot.press("escape")
        await pilot.press("b")
        await pilot.pause()
        assert not t.roofline and "p95_ms" in t.shown_columns


async def test_header_step_since_start_and_decode_attribution(provider: AggregatorProvider) -> None:
    """Issue 17: `step` counts decode steps since the start (not the window's), and the wall-time attribution
    per decode step is on screen with the report's numbers."""
    from llmtop.tui.panes.header import attribution_text

    app = LlmtopApp(provider)
    async with app.run_test(size=(200, 40)) as pilot:
        await pilot.pause()
        rep = report(app)
        dec = rep["attribution"]["decode"]
        header = app.query_one(HeaderBar).content.plain
        assert f"step {view.fmt_count(rep['tokens']['step_index'])}" in header
        assert rep["tokens"]["step_index"] == rep["tokens"]["decode_steps"] == GEN_TOKENS - 1
        want = (f"{view.fmt_ms(dec['wall_ms_per_step'])} ms = kernels "
                f"{view.fmt_ms(dec['kernel_ms_per_step'])} + host {view.fmt_ms(dec['host_ms_per_step'])} "
                f"({view.fmt_pct(dec['host_pct'])})")
        assert attribution_text(rep["attribution"]) == want and want in header
        # the model's name, not the (venv) path it was read from
        assert "SmolLM2-135M-Instruct" in header and "site-packages" not in header
