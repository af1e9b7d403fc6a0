"""llmtop.report.render on real Aggregator snapshots: every table, three formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_stats_aggregator import decode_loop, feed, loop_batches

from llmtop.errors import LlmtopError
from llmtop.events import SourceInfo
from llmtop.numfmt import ELLIPSIS, compact_name, shorten_middle, shorten_names
from llmtop.report import render, skipped_counts, with_notes
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
    # plus what an importer skipped or guessed: always present, empty here
    assert json.loads(render(report, "json")) == {**report, "warnings": [], "skipped": {}}
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


# -- warnings and skipped records -----------------------------------------------------------------------
def test_notes_are_merged_one_line_each() -> None:
    lines = ["JSON ends mid-record\n  (truncated file?)", "b"]
    r = with_notes({"kernels": []}, lines, 5, {"negative_duration": 2})
    assert r["warnings"] == ["JSON ends mid-record (truncated file?)", "b"]
    assert r["skipped"] == {"negative_duration": 2, "unmapped": 3}  # the total beyond its reasons
    r = with_notes(r, ["b", "c"], 1, {"negative_duration": 1})
    assert r["warnings"] == ["JSON ends mid-record (truncated file?)", "b", "c"]
    assert r["skipped"] == {"negative_duration": 3, "unmapped": 3}
    assert with_notes({}) == {"warnings": [], "skipped": {}}
    assert skipped_counts(0, {"x": 0}) == {} and skipped_counts(2) == {"unmapped": 2}


@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_notes_print_above_the_tables(report: dict, fmt: str) -> None:
    r = with_notes(report, ["trace.json: JSON ends mid-record (truncated file?)"], 3, {"truncated_record": 1})
    out = render(r, fmt)
    assert out.index("warning: trace.json: JSON ends mid-record") < out.index("Tokens")
    assert out.index("skipped: 3 records (truncated_record 1, unmapped 2)") < out.index("Tokens")
    assert "warning:" not in render(report, fmt) and "skipped:" not in render(report, fmt)


def test_once_json_carries_notes(report: dict) -> None:
    from llmtop.once import OnceResult, render_once

    d = json.loads(render_once(OnceResult(dict(report), [], ["p"], 1.0), "json"))
    assert d["warnings"] == [] and d["skipped"] == {} and d["kernels"] == report["kernels"]


def test_report_cli_json_carries_what_the_importer_skipped(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`llmtop report --format json` of a damaged recording: the skip and the truncation are in the JSON
    a script reads (and still on stderr), and in the text report above the tables."""
    import numpy as np

    from llmtop.cli import main
    from llmtop.events import EMPTY_STEPS, KERNEL_DTYPE, EventBatch
    from llmtop.traces.recording import RecordingWriter

    k = np.zeros(3, KERNEL_DTYPE)
    k["dur_ns"], k["start_ns"] = [1000, -5, 2000], [10, 20, 30]
    path = tmp_path / "bad.llmtop"
    with RecordingWriter(path, SourceInfo(kind="live")) as w:
        w.write(EventBatch(k, EMPTY_STEPS, 0, ["matmul:x"]))
        w.write(EventBatch(k[:1], EMPTY_STEPS, 1, []))
    cut = tmp_path / "cut.llmtop"
    cut.write_bytes(path.read_bytes()[:-7])
    rc = main(["report", str(cut), "--format", "json"])
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert rc == 0 and rep["skipped"].get("impossible_values") == 1  # the negative duration
    assert len(rep["warnings"]) >= 2 and all(w in err for w in rep["warnings"])  # it and the cut
    assert any("impossible values" in w for w in rep["warnings"])
    rc = main(["report", str(cut)])
    text = capsys.readouterr().out
    n = sum(rep["skipped"].values())
    assert text.index(f"skipped: {n} records (") < text.index("Tokens")
    assert sum(line.startswith("warning: ") for line in text.splitlines()) == len(rep["warnings"])


# -- kernel names -----------------------------------------------------------------------------------
GEMM = ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off"
        "_kernel__5x_cublas_splitk_beta0_alpha1_stages4_swizzle2_cluster1x2x1_persistent_tma_ws_cooperative")
ADD = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
       "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)")
MUL = ADD.replace("CUDAFunctor_add", "CUDAFunctor_mul")
CIJK = "Cijk_Alik_Bljk_BBS_BH_Bias_HA_S_SAV_UserArgs_MT{}_MI16x16x1_SN_LDSB1_AFC1_AFEM1_CLR1_CADS0_ISA942"
LONG = [GEMM, ADD, MUL, CIJK.format("256x32x64"), CIJK.format("32x32x256"), "multimem_all_reduce_kernel",
        "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"]


def _renamed(report: dict, names: list[str]) -> dict:
    ks = [dict(k, name=n) for k, n in zip(report["kernels"], names, strict=False)]
    return {**report, "kernels": ks}


def _name_cells(text: str, names: list[str]) -> list[str]:
    """The Name cell of each kernel row of the text report (first column, up to the Class column)."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("Name "))
    cls_at = lines[start].index("Class")
    return [x[:cls_at].rstrip() for x in lines[start + 2 : start + 2 + len(names)]]


def test_text_cuts_long_names_in_the_middle(report: dict) -> None:
    r = _renamed(report, LONG)
    out = render(r, "text")
    cells = _name_cells(out, LONG)
    assert len(set(cells)) == len(LONG)  # the add and mul instances, both Cijk tiles: still told apart
    for name, cell in zip(LONG, cells, strict=True):
        if cell == name:
            continue
        assert ELLIPSIS in cell and len(cell) < len(name)
        assert cell[:12] == compact_name(name)[:12]  # the start is kept (less namespaces and "void ")
    assert cells[LONG.index("multimem_all_reduce_kernel")] == "multimem_all_reduce_kernel"
    assert cells[0].endswith("cooperative")  # a name without templates keeps its end
    assert cells[1].endswith("3ul> >(…)") and "add" in cells[1] and "mul" in cells[2]
    assert "256x32x64" in cells[3] and "32x32x256" in cells[4]
    assert all(name not in out for name in (GEMM, ADD, MUL))
    wide = render(r, "text", wide=True)
    assert _name_cells(wide, LONG) == LONG  # whole, each on one line
    for fmt in ("markdown", "json"):
        full = render(r, fmt)
        assert all((json.dumps(n)[1:-1] if fmt == "json" else n) in full for n in LONG)


def test_nsys_layout_cuts_names_too(report: dict) -> None:
    from llmtop.report_nsys import render_nsys

    r = _renamed(report, LONG)
    out = render_nsys(r, "text")
    row = next(x for x in out.splitlines() if "_add<float>" in x)
    assert ELLIPSIS in row and ADD not in out
    assert ADD in render_nsys(r, "text", wide=True)


def test_names_are_text_not_markup(report: dict) -> None:
    r = _renamed(report, ["[bold]not bold[/bold]", "a[/]b"])
    out = render(r, "text")
    assert "[bold]not bold[/bold]" in out and "a[/]b" in out


@pytest.mark.parametrize("width", [8, 12, 30, 40, 60])
@pytest.mark.parametrize("name", [*LONG, "x" * 100, "f(" + "int, " * 30 + "int)", f"void g<{'a' * 80}>(i)"])
def test_shorten_middle(name: str, width: int) -> None:
    s = shorten_middle(name, width)
    assert len(s) <= width
    if len(name) <= width:
        assert s == name
    else:
        assert s == compact_name(name) or (ELLIPSIS in s and s[:2] == compact_name(name)[:2])


def test_compact_names() -> None:
    assert compact_name(ADD) == ("vectorized_elementwise_kernel<4, CUDAFunctor_add<float>, "
                                 "array<char*, 3ul> >(int, CUDAFunctor_add<float>, array<char*, 3ul>)")
    pool = "void at::native::(anonymous namespace)::max_pool_forward_nchw<float, float>(int)"
    assert compact_name(pool) == "max_pool_forward_nchw<float, float>(int)"
    # names apart only by their namespace stay apart
    a, b = (f"void ns{i}::kernel<{'float, ' * 12}int>(float*, int)" for i in (1, 2))
    assert len(set(shorten_names([a, b], 40))) == 2


def test_shorten_names_tells_instances_apart() -> None:
    names = [f"void k<{'float, ' * 20}{i}, {'int, ' * 20}>(float*)" for i in range(3)]
    for width in (30, 40, 60):
        out = shorten_names(names, width)
        assert len(set(out)) == 3 and all(len(s) <= width for s in out), out
    assert shorten_names(["a", "a"], 5) == ["a", "a"]
