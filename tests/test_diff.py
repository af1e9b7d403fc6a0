"""`llmtop diff A B` (stats/compare.py, report_diff.py): the rank test against a brute-force one, a file
against itself, two real recordings of the shipped model with --threads 1 and --threads 2, Kineto traces."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixture_paths import HTA_A100, MI300X_SGLANG

from llmtop.stats.compare import diff_rows, mann_whitney

LLMTOP = [sys.executable, "-m", "llmtop"]


def _brute(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """U and the two-sided normal p with tie correction from explicit mid-ranks of the pooled sample."""
    x = np.concatenate([a, b])
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(sx):  # average rank over each run of equal values
        j = i
        while j + 1 < len(sx) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    na, nb, n = len(a), len(b), len(x)
    u = ranks[:na].sum() - na * (na + 1) / 2
    _, t = np.unique(x, return_counts=True)
    var = na * nb / 12 * ((n + 1) - (t**3 - t).sum() / (n * (n - 1)))
    z = (u - na * nb / 2) / math.sqrt(var)
    return u, math.erfc(abs(z) / math.sqrt(2))


def _counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v, c = np.unique(x, return_counts=True)
    return v, c


def test_rank_test_matches_explicit_ranks() -> None:
    rng = np.random.default_rng(3)
    for shift in (0, 1, 3):
        a = rng.integers(100, 130, 400)  # few distinct values: many ties, as in duration buckets
        b = rng.integers(100 + shift, 130 + shift, 250)
        u, p = mann_whitney(*_counts(a), *_counts(b))
        bu, bp = _brute(a, b)
        assert u == pytest.approx(bu) and p == pytest.approx(bp, rel=1e-9, abs=1e-300)
    a = rng.integers(0, 50, 300)
    assert mann_whitney(*_counts(a), *_counts(a)) == (pytest.approx(300 * 300 / 2), 1.0)
    assert mann_whitney(*_counts(a), np.zeros(0, np.int64), np.zeros(0, np.int64))[1] == 1.0
    same = np.full(20, 7)
    assert mann_whitney(*_counts(same), *_counts(same))[1] == 1.0  # all tied: no information


def test_rows_present_on_one_side_and_the_effect_floor() -> None:
    row = {"op_class": "matmul", "count": 100, "total_ms": 100.0, "mean_ms": 1.0}
    b_row = {**row, "total_ms": 101.0, "mean_ms": 1.01}
    buckets = (np.array([10, 11]), np.array([50, 50]))
    shifted = (np.array([11, 12]), np.array([50, 50]))
    rows = diff_rows([{"name": "k", **row}, {"name": "gone", **row}], [{"name": "k", **b_row},
                     {"name": "new", **row, "count": 3}], {"k": buckets}, {"k": shifted})
    by = {r["name"]: r for r in rows}
    # shifted by a whole bucket (p tiny) but the mean moved 1 % < 2 %: not significant
    assert by["k"]["p_value"] < 1e-6 and not by["k"]["significant"]
    assert by["gone"]["significant"] and by["gone"]["change"] == "gone" and by["gone"]["b_count"] == 0
    assert not by["new"]["significant"] and by["new"]["change"] == "new"  # 3 events: too few to say
    assert [r["name"] for r in rows] == ["gone", "new", "k"]  # by |delta_ms|


def _diff(a: Path, b: Path, *extra: str) -> dict:
    r = subprocess.run([*LLMTOP, "diff", str(a), str(b), "--format", "json", *extra], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real recordings of the shipped model: float32 on 1 and 2 threads, bfloat16 on 1 thread."""
    d = tmp_path_factory.mktemp("diff")
    out = {}
    for key, flags in (("t1", ["--threads", "1"]), ("t2", ["--threads", "2"]),
                       ("bf16", ["--threads", "1", "--dtype", "bfloat16"])):
        path = d / f"{key}.llmtop"
        prompt = "Write a long story about a lighthouse keeper."
        cmd = [*LLMTOP, "--once", *flags, "--ignore-eos", "--max-new-tokens", "32", "--prompt", prompt,
               "--record", str(path), "--format", "json"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out[key] = path
    return out


def test_a_recording_against_itself_changes_nothing(recordings: dict[str, Path]) -> None:
    a = recordings["t1"]
    for group in ("kernel", "op_class", "layer"):
        d = _diff(a, a, "--group", group)
        assert d["rows"] and d["significant_rows"] == 0 and d["group"] == group
        for r in d["rows"]:
            assert r["delta_ms"] == 0 and r["delta_pct"] in (0, None) and not r["significant"]
            assert r["p_value"] == 1.0 and r["a_count"] == r["b_count"] > 0
            assert set(r) >= {"name", "a_total_ms", "b_total_ms", "delta_ms", "delta_pct", "a_mean_ms",
                              "b_mean_ms", "a_count", "b_count", "significant"}
        assert all(x["delta"] in (0, None) for x in d["tokens"].values())


def test_two_threads_against_one(recordings: dict[str, Path]) -> None:
    """--threads 2 against 1: the same decode steps on both sides, and every row flagged significant is one
    whose distribution moved (a small p) by more than the effect floor, in the direction of its mean.
    (On this project's 2-vCPU machines the second thread does not speed up the decode GEMVs: the diff
    says so rather than inventing a speed-up.)"""
    d = _diff(recordings["t1"], recordings["t2"], "--filter", "phase:decode class:matmul")
    rows = d["rows"]
    assert {r["name"] for r in rows} >= {"matmul:gate_proj", "matmul:up_proj", "matmul:down_proj",
                                         "matmul:lm_head"}
    assert all(r["a_count"] == r["b_count"] for r in rows)  # the same decode steps, one call each
    for r in rows:
        if r["significant"]:
            assert r["p_value"] < d["alpha"] / len(rows) and abs(r["delta_mean_pct"]) >= d["min_effect_pct"]
            assert r["change"] == ("faster" if r["delta_mean_pct"] < 0 else "slower")
    assert d["tokens"]["tpot_ms_p50"]["a"] > 0 and d["tokens"]["tpot_ms_p50"]["b"] > 0


def test_bfloat16_against_float32(recordings: dict[str, Path]) -> None:
    """A change that does move every decode matmul (bfloat16 GEMVs on a CPU are not float32's): flagged,
    with the change named, and shown in the text table."""
    a, b = recordings["t1"], recordings["bf16"]
    d = _diff(a, b, "--filter", "phase:decode class:matmul")
    sig = [r for r in d["rows"] if r["significant"]]
    seen = [(r["name"], r["delta_mean_pct"], r["p_value"]) for r in d["rows"]]
    assert len(sig) >= len(d["rows"]) - 2 >= 5 and "matmul:lm_head" in {r["name"] for r in sig}, seen
    assert all(r["change"] in ("faster", "slower") for r in sig)
    text = subprocess.run([*LLMTOP, "diff", str(a), str(b), "--filter", "phase:decode"], capture_output=True,
                          text=True, timeout=300).stdout
    assert "YES (" in text and "Token rate and attribution" in text and "decode tok/s" in text


def test_kineto_traces() -> None:
    d = _diff(HTA_A100, HTA_A100)
    assert d["rows"] and d["significant_rows"] == 0 and all(r["delta_ms"] == 0 for r in d["rows"])
    assert d["a"]["format"] == d["b"]["format"] == "kineto"
    # two different workloads: kernels of each side appear as new / gone, by their whole time
    d = _diff(HTA_A100, MI300X_SGLANG, "--group", "op_class")
    changes = {r["change"] for r in d["rows"]}
    assert changes and all(r["a_count"] + r["b_count"] > 0 for r in d["rows"])
    md = subprocess.run([*LLMTOP, "diff", str(HTA_A100), str(MI300X_SGLANG), "--format", "markdown"],
                        capture_output=True, text=True, timeout=300)
    assert md.returncode == 0 and "| Name | Class |" in md.stdout


@pytest.mark.parametrize("args", [["/nonexistent.llmtop", "/nonexistent2.llmtop"], ["--alpha", "2", "x", "y"],
                                  ["only-one"]])
def test_bad_input_is_one_line(args: list[str], tmp_path: Path) -> None:
    r = subprocess.run([*LLMTOP, "diff", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.startswith("llmtop: error:") and len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr


async def test_replay_against_a_baseline_colours_each_rows_change(recordings: dict[str, Path]) -> None:
    """`llmtop replay A --against B`: the kernel table gets a `vs B` column with the same numbers and
    significance as `llmtop diff B A`, styled by direction."""
    from llmtop.cli import PARSERS, build_replay_session

    a, b = recordings["bf16"], recordings["t1"]
    args = PARSERS["replay"]().parse_args([str(a), "--speed", "0", "--window", "3600", "--against", str(b)])
    session = build_replay_session(args)
    app = session.app
    with session:
        assert session.pipeline.wait_done(60)
        async with app.run_test(size=(180, 40)) as pilot:
            app.refresh_now()
            await pilot.pause()
            from llmtop.tui.panes import KernelTable

            t = app.query_one(KernelTable)
            assert "vs_b" in t.shown_columns and t.header_labels()["vs_b"] == "vs B"
            app.action_toggle_window()  # cumulative: the whole replay against the whole baseline
            app.refresh_now()
            await pilot.pause()
            want = {r["name"]: r for r in _diff(b, a)["rows"]}
            for key in t.order:
                cells = dict(zip(("name", *t.shown_columns), t.row_cells(key), strict=True))
                w = want[key]
                assert cells["vs_b"] == f"{w['delta_mean_pct']:+.0f}%" + ("*" if w["significant"] else "")
            assert any(c.endswith("*") for c in (dict(zip(("name", *t.shown_columns), t.row_cells(k),
                                                              strict=True))["vs_b"] for k in t.order))
