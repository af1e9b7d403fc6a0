"""The attention pane on a real long-context recording (issue 17): the shipped model decoding 600 tokens
(context 38 -> 636). Folded whole, the fit passes its rule and the pane states the growth with its
interval and R² and draws the line; folded over its first 200 decode steps (a span too short for the
rule), the pane shows the points and the reason, and neither a slope nor a line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fixture_paths import LONG_CONTEXT

from llmtop.events import EventBatch
from llmtop.stats.aggregator import Aggregator
from llmtop.traces.open import open_trace_file
from llmtop.tui.app import LlmtopApp
from llmtop.tui.panes import AttentionPane
from llmtop.tui.provider import AggregatorProvider


def provider(max_decode_steps: int | None = None) -> AggregatorProvider:
    tf = open_trace_file(LONG_CONTEXT)
    agg = Aggregator(window_s=3600.0)
    agg.set_source(tf.source)
    seen = 0
    for _, item in tf.records:
        if not isinstance(item, EventBatch):
            continue
        if max_decode_steps is not None and seen >= max_decode_steps:
            break
        agg.ingest(item)
        seen += int(np.count_nonzero(item.steps["phase"] == 1))
    return AggregatorProvider(agg, kind="replay")


def fit_cells(pane: AttentionPane) -> int:
    """Plot cells drawn in the fit line's style."""
    fit = pane.cs("plot--fit")
    return sum(len(seg.text.strip()) for line in pane.lines() if not hasattr(line, "plain")
               for seg in line if seg.style == fit)


async def _pane(prov: AggregatorProvider) -> tuple[dict[str, Any], str, int]:
    app = LlmtopApp(prov)
    async with app.run_test(size=(150, 44)) as pilot:
        await pilot.pause()
        pane = app.query_one(AttentionPane)
        return dict(app.snapshot.report["attention"]), pane.text(), fit_cells(pane)


async def test_a_real_long_context_run_gets_a_fit_and_its_line() -> None:
    att, text, cells = await _pane(provider())
    assert att["fit_ok"] is True and att["ctx_max"] - att["ctx_min"] >= 256
    slope, ci = att["slope_ms_per_1k"], att["slope_ci95_ms_per_1k"]
    assert slope > 3 * ci / 1.96 > 0 and att["r2"] >= 0.5 and att["intercept_ms"] >= 0
    assert "growth" in text and "ms/1k tok" in text and "R²" in text, text
    assert att["share_pct_last"] > att["share_pct_first"]
    assert "share of step" in text
    assert cells > 0  # the fitted line is drawn


@pytest.mark.parametrize("steps", [20, 200])
async def test_no_fit_is_stated_or_drawn_below_the_rule(steps: int) -> None:
    att, text, cells = await _pane(provider(max_decode_steps=steps))
    assert att["fit_ok"] is False and att["fit_note"]
    assert att["projection"] is None or att["projection"]["attention_ms"] is None
    assert "growth" not in text and "R²" not in text, text
    assert "context range too narrow" in " ".join(text.split()), text  # the reason, with the rule's numbers
    assert cells == 0  # points only
