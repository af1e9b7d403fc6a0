"""Readable at 80x24 (issue 17): pane titles keep their unit and scope, no line of a pane is cut through a
number (a chunk that does not fit wraps at its spaces, never between a number and its unit), and the
header drops or shortens an item rather than crop it. On the real generation of test_tui and on the
imported MI300X SGLang trace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from test_tui import generation, make_provider  # noqa: F401 - `generation` is a module-scoped fixture

from llmtop.stats.aggregator import Aggregator
from llmtop.traces.open import open_trace
from llmtop.tui.app import LlmtopApp
from llmtop.tui.panes import AttentionPane, HeaderBar, LayerPane, TokenPane
from llmtop.tui.panes.base import fit_title, flow, wrap_words
from llmtop.tui.provider import AggregatorProvider

TRACE = Path(__file__).parent / "fixtures" / "kineto" / "tracelens_mi300x_sglang_qwen3_8b_decode.json.gz"
NUMBER_THEN_UNIT = re.compile(r"\d ?(ms|µs|tok/s|tok|%|s)\b")


def trace_provider() -> AggregatorProvider:
    res = open_trace(TRACE)
    agg = Aggregator(window_s=3600.0)
    agg.set_source(res.source)
    for b in res.batches:
        agg.ingest(b)
    return AggregatorProvider(agg, kind="import")


def test_wrapping_keeps_a_number_with_its_unit() -> None:
    for width in (8, 12, 20, 36):
        lines = [t.plain for t in wrap_words(Text("at 8,192 tok 47.3% of a step (12.0 ms)"), width)]
        assert " ".join(lines) == "at 8,192 tok 47.3% of a step (12.0 ms)"
        assert all(not ln.endswith(("8,192", "12.0")) for ln in lines), lines
    lines = flow([Text("decode 422,535 tok/s"), Text("share of step 33.3% → 33.3%"), Text("gen 5")], 24)
    assert [t.plain for t in lines] == ["decode 422,535 tok/s", "share of step 33.3% →", "33.3%", "gen 5"]


def test_a_title_is_worded_to_fit() -> None:
    variants = ["Per layer · ms / decode step · last 10 s", "Per layer · ms/step · last 10 s",
                "Layer ms · last 10 s"]
    assert fit_title(variants, 120) == variants[0]
    assert fit_title(variants, 40) == variants[1]
    assert fit_title(variants, 27) == variants[2]
    assert fit_title(variants, 10) == variants[2]  # none fits: the shortest, cropped by Textual


@pytest.mark.parametrize("source", ["generation", "trace"])
async def test_80x24_titles_keep_unit_and_scope_and_no_line_is_cropped(generation: Any, source: str) -> None:  # noqa: F811
    prov = make_provider(generation) if source == "generation" else trace_provider()
    app = LlmtopApp(prov)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(3):
            await pilot.pause()
        for cls, words in ((TokenPane, ("Tok",)), (LayerPane, ("Layer", "ms")), (AttentionPane, ("Att",))):
            pane = app.query_one(cls)
            title = str(pane.border_title)
            room = pane.outer_size.width - 6
            assert len(title) <= room or title == fit_title([title], 0), (title, room)
            assert all(w in title for w in words), title
            assert ("last 3600 s" if cls is not AttentionPane else "since start") in title, title
            w = pane.size.width
            for line in pane.lines():
                if isinstance(line, Text):  # text lines fit whole: nothing is cut at the border
                    assert line.cell_len <= w, (cls.__name__, line.plain, w)
        header = app.query_one(HeaderBar)
        line2 = header.content.plain.split("\n")[1]
        assert len(line2) <= header.size.width, line2
        # every "label value" the header shows is whole: a number is followed by its unit where it has one
        for m in re.finditer(r"(\d[\d.,]*)( ?)(\S*)", line2):
            assert not m.group(0).endswith("…"), line2
        if "decode step" in line2:
            assert NUMBER_THEN_UNIT.search(line2.split("decode step", 1)[1]), line2


def test_the_layer_axis_never_runs_labels_together() -> None:
    """Flagged layers are placed first and every label keeps a blank cell before the next (the live run
    showed "▲1215" for a flagged L12 beside a plain 15)."""
    from rich.style import Style

    from llmtop.tui.panes.layers import _axis

    for flagged in ({12}, {0, 12, 13}, {2, 3, 9}, set(range(0, 30, 2))):
        cols = [(str(i), None, i in flagged) for i in range(30)]
        text = _axis(cols, 1, 30, Style(), Style()).plain
        tokens = text.split()
        for tok in tokens:  # each token is one label: "▲N" or a number (last two digits), never two
            assert re.fullmatch(r"▲\d{1,2}|\d{1,2}", tok), (flagged, text)
        for tok in tokens:
            if tok.startswith("▲"):
                assert int(tok[1:]) in flagged
                assert text.index(tok) == int(tok[1:])  # under its own column
        assert any(t == f"▲{min(flagged)}" for t in tokens)  # the first flagged layer always shows


async def test_the_kernel_detail_at_80x24_wraps_no_line() -> None:
    """Every line of the kernel detail fits its box at 80x24 (the bars, the by-phase lines), so none wraps
    into the next; on the first rows of the MI300X trace."""
    from llmtop.tui.screens import KernelDetailScreen

    app = LlmtopApp(trace_provider())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for _ in range(3):
            await pilot.press("enter")
            for _ in range(50):  # the detail fills once mounted and laid out
                await pilot.pause(0.05)
                screen = app.screen
                if isinstance(screen, KernelDetailScreen):
                    body = screen.query_one("#detail-body")
                    if isinstance(body.content, Text) and body.size.width:
                        break
            assert isinstance(screen, KernelDetailScreen)
            body = screen.query_one("#detail-body")
            lines = body.content.plain.split("\n")
            assert "By phase" in lines
            assert max(len(ln) for ln in lines) <= body.size.width, [ln for ln in lines
                                                                     if len(ln) > body.size.width]
            await pilot.press("escape")
            await pilot.press("down")


def test_a_long_outlier_list_is_counted_not_cut() -> None:
    """Nine flagged layers on a 25-cell pane (a real generation flagged that many): as many as fit, with
    the count, never a layer number cut in two."""
    from llmtop.tui.panes.layers import outlier_text

    flagged = ["1", "4", "8", "11", "15", "18", "22", "25", "29"]
    assert outlier_text(["0", "12"], 25) == "⚠ outlier L0,L12"
    for width in (14, 20, 25, 30, 41):
        text = outlier_text(flagged, width)
        assert len(text) <= width and text.startswith("⚠ 9 outliers"), text
        named = [t for t in text.removeprefix("⚠ 9 outliers").strip().split(",") if t and t != "…"]
        assert named == ["L" + f for f in flagged[: len(named)]], text
