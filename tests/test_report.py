"""llmtop.report.render on real Aggregator snapshots: every table, three formats."""

from __future__ import annotations

import json

import pytest
from test_stats_aggregator import decode_loop, feed, loop_batches

from llmtop.errors import LlmtopError
from llmtop.events import SourceInfo
from llmtop.report import render
from llmtop.stats import Aggregator


@pytest.fixture(scope="module")
def report() -> dict:
    names, ks, ss = decode_loop(20, gens=2)
    agg = Aggregator(10.0)
    agg.set_source(
        SourceInfo(kind="replay", backend="cpu", device="test cpu", model="smollm2", max_context=8192)
    )
    feed(agg, loop_batches(names, ks, ss, 4))
    agg.note_dropped("engine", 3)
    return agg.snapshot("cumulative").report


def test_json_is_the_report(report: dict) -> None:
    assert json.loads(render(report, "json")) == report
    for key in (
        "source",
        "tokens",
        "kernels",
        "layers",
        "attention",
        "attribution",
        "trend",
        "dropped",
        "mode",
        "group",
        "window_s",
    ):
        assert key in report
    for key in (
        "name",
        "op_class",
        "count",
        "total_ms",
        "mean_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "pct",
        "cum_pct",
        "min_ms",
        "std_ms",
    ):
        assert key in report["kernels"][0]


@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_every_table_is_rendered(report: dict, fmt: str) -> None:
    out = render(report, fmt)
    for title in (
        "Tokens",
        "Kernel Execution Statistics",
        "Per-layer time",
        "Attention growth",
        "Wall-time attribution",
        "Per-token trend",
        "Dropped events: 3",
    ):
        assert title in out
    top = report["kernels"][0]
    assert top["name"] in out and f"{top['pct']:.2f}%" in out
    assert "at 8,192 tokens attention" in out
    assert "OUTLIER" in out  # layer 2 of the generated loop is 8x slower in down_proj
    assert all(r["name"] in out for r in report["kernels"])  # no limit: every row
    if fmt == "markdown":
        assert "| Name | Class | Time % | Cum % | Total (ms) | Instances |" in out
    lim = render(report, fmt, limit=3)
    assert f"({len(report['kernels']) - 3} more rows not shown)" in lim


def test_empty_report_renders() -> None:
    r = Aggregator().snapshot().report
    for fmt in ("text", "markdown", "json"):
        out = render(r, fmt)
        assert out.endswith("\n")
    assert "no kernel events in this view" in render(r, "text")
    assert "no decode steps yet" in render(r, "markdown")


def test_bad_format_and_input() -> None:
    with pytest.raises(LlmtopError):
        render({}, "html")
    with pytest.raises(LlmtopError):
        render([], "text")  # type: ignore[arg-type]


def test_report_holds_plain_json_types(report: dict) -> None:
    def walk(x: object) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (str, int, float, bool), (x, type(x))

    walk(report)
    json.loads(render(Aggregator().snapshot().report, "json"))  # allow_nan=False: no NaN/inf anywhere


def test_report_and_screen_print_one_ms_format(report: dict) -> None:
    """llmtop.numfmt is the one ms formatter: the report's cells are the TUI's, bar the missing-value dash."""
    from llmtop.numfmt import fmt_ms
    from llmtop.report import fms
    from llmtop.tui import view

    cases = {0.0: "0.000", 0.000432: "0.00043", 0.001234: "0.00123", 0.01234: "0.0123", 0.1234: "0.123",
             1.234: "1.23", 12.34: "12.3", 123.4: "123", 1234.5: "1,234"}
    for value, want in cases.items():
        assert fms(value) == view.fmt_ms(value) == fmt_ms(value) == want, value
    assert fms(None) == "-" and view.fmt_ms(float("nan")) == "–"
    top = report["kernels"][0]
    out = render(report, "text")
    assert fmt_ms(top["total_ms"]) in out and fmt_ms(top["p95_ms"]) in out
