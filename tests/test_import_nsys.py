"""Nsight Systems SQLite: kernel names as `nsys stats` prints them (demangled), `--names short`, op classes
from the NVTX range around each launch, and skipped records counted by reason. Numbers are counted from
the file with sqlite3, independently of the importer."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from fixture_paths import NSYS_A100

from llmtop.cli import main
from llmtop.events import OP_CLASS_ID, OP_CLASSES
from llmtop.traces.open import open_trace


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    rc = main(["report", *args, "--format", "json"])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def _kernel_rows(rep: dict) -> dict[str, dict]:
    return {k["name"]: k for k in rep["kernels"] if not k["name"].startswith(("Memcpy", "Memset"))}


DEMANGLED = ("SELECT s.value, count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k "
             "JOIN StringIds s ON s.id = k.demangledName {where} GROUP BY k.demangledName")


def _demangled_counts(path: Path, where: str = "") -> Counter[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return Counter(dict(db.execute(DEMANGLED.format(where=where)).fetchall()))


def test_fixture_kernels_are_its_demangled_names(capsys: pytest.CaptureFixture[str]) -> None:
    want = _demangled_counts(NSYS_A100)
    rows = _kernel_rows(_report(capsys, str(NSYS_A100)))
    assert {n: r["count"] for n, r in rows.items()} == dict(want)
    assert "saxpy(double *, double *, double *, double, int)" in rows  # what nsys stats prints
    assert rows["saxpy(double *, double *, double *, double, int)"]["op_class"] == "elementwise"  # a*x + y
    short = _kernel_rows(_report(capsys, str(NSYS_A100), "--names", "short"))
    assert {n: r["count"] for n, r in short.items()} == {"saxpy": sum(want.values())}


def _with_template_instances(tmp_path: Path) -> Path:
    """The fixture plus two instances of one template (one shortName, two demangled names), launched
    inside an emit_nvtx-style `aten::mm` range and a `nn.Module: LlamaRMSNorm` range, one kernel with a
    negative duration and one module range without kernels."""
    p = tmp_path / "templates.sqlite"
    shutil.copyfile(NSYS_A100, p)
    with sqlite3.connect(p) as db:
        db.row_factory = sqlite3.Row
        kern = dict(db.execute("SELECT * FROM CUPTI_ACTIVITY_KIND_KERNEL LIMIT 1").fetchone())
        rt = dict(db.execute("SELECT * FROM CUPTI_ACTIVITY_KIND_RUNTIME LIMIT 1").fetchone())
        nv = dict(db.execute("SELECT * FROM NVTX_EVENTS WHERE text = 'saxpy' LIMIT 1").fetchone())
        sid = db.execute("SELECT max(id) FROM StringIds").fetchone()[0]
        strings = {"par_ranged2d_kernel": sid + 1,
                   "void par_ranged2d_kernel<float, 1>(float *, int)": sid + 2,
                   "void par_ranged2d_kernel<float, 2>(float *, int)": sid + 3}
        db.executemany("INSERT INTO StringIds (id, value) VALUES (?, ?)",
                       [(i, v) for v, i in strings.items()])
        t0 = 3_000_000_000
        one, two = (strings[f"void par_ranged2d_kernel<float, {i}>(float *, int)"] for i in (1, 2))
        launches = [(one, "aten::mm, seq = 7, sizes = []"), (two, "nn.Module: LlamaRMSNorm_0")] * 3
        for i, (dem, rng) in enumerate(launches):
            corr = 100_000 + i
            start = t0 + i * 1_000_000
            nvtx = (start, start + 50_000, nv["eventType"], rng, nv["globalTid"])
            db.execute("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid) "
                       "VALUES (?, ?, ?, ?, ?)", nvtx)
            row = {**rt, "start": start + 10_000, "end": start + 20_000, "correlationId": corr}
            db.execute(f"INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME ({', '.join(row)}) VALUES "
                       f"({', '.join('?' * len(row))})", list(row.values()))
            end = start + 100_000 + 1000 * i if i != 5 else start + 10  # the last one: end before start
            k = {**kern, "start": start + 30_000, "end": end, "correlationId": corr, "demangledName": dem,
                 "shortName": strings["par_ranged2d_kernel"]}
            db.execute(f"INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL ({', '.join(k)}) VALUES "
                       f"({', '.join('?' * len(k))})", list(k.values()))
    return p


def test_template_instances_stay_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _with_template_instances(tmp_path)
    with sqlite3.connect(f"file:{p}?mode=ro", uri=True) as db:
        bad = db.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE end < start").fetchone()[0]
    kept = _demangled_counts(p, "WHERE k.end >= k.start")
    rep = _report(capsys, str(p))
    rows = _kernel_rows(rep)
    assert {n: r["count"] for n, r in rows.items()} == dict(kept)
    assert len(rows) == len(kept) == 3  # saxpy and both par_ranged2d_kernel instances
    # the class comes from the innermost NVTX range around the launch: the CPU op, then the module
    assert rows["void par_ranged2d_kernel<float, 1>(float *, int)"]["op_class"] == "matmul"
    assert rows["void par_ranged2d_kernel<float, 2>(float *, int)"]["op_class"] == "norm"
    assert rep["skipped"] == {"negative_duration": bad} and bad == 1
    assert any("negative duration" in w for w in rep["warnings"])

    short = _kernel_rows(_report(capsys, str(p), "--names", "short"))
    assert short["par_ranged2d_kernel"]["count"] == sum(v for n, v in kept.items() if "par_ranged2d" in n)
    # the merged instances had two classes: a name has the class of most of its time (3 matmul launches
    # against 2 norm launches of about the same length)
    assert short["par_ranged2d_kernel"]["op_class"] == "matmul"


def test_import_result_names_and_classes(tmp_path: Path) -> None:
    p = _with_template_instances(tmp_path)
    for style, n_names, want in (("demangled", 3, {"matmul", "norm", "elementwise", "memcpy"}),
                                 ("short", 2, {"matmul", "elementwise", "memcpy"})):
        res = open_trace(p, kernel_names=style)
        ks = [b.kernels for b in res.batches]
        names = {res.names[int(i)] for k in ks for i in k["name"]}
        kernels = {n for n in names if not n.startswith("Memcpy")}
        assert len(kernels) == n_names, (style, kernels)
        assert res.skipped == 1 and res.skipped_by == {"negative_duration": 1}
        classes = {OP_CLASSES[int(c)] for k in ks for c in k["op_class"]}
        assert classes == want, style
    assert OP_CLASS_ID["comm"] == 9 and OP_CLASSES[-1] == "npu"  # classes are appended: ids never move


def test_names_flag_on_other_formats_warns(capsys: pytest.CaptureFixture[str]) -> None:
    from fixture_paths import DOPPLER_LOG

    rep = _report(capsys, str(DOPPLER_LOG), "--names", "short")
    assert any("--names short" in w for w in rep["warnings"])
    rc = main(["report", str(NSYS_A100), "--names", "mangled"])
    assert rc == 2 and "llmtop: error:" in capsys.readouterr().err
