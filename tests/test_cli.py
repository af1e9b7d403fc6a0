"""The `llmtop` command line end to end: --once on the real model, record -> report, the trace
fixtures through `report`/`export`, replay in the real Textual app, and one-line errors."""

from __future__ import annotations

import _thread
import contextlib
import gzip
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fixture_paths import KINETO_DIR, NSYS_DIR

from llmtop.cli import PARSERS, build_replay_session, main

KINETO = sorted(KINETO_DIR.glob("*.json.gz"))
NSYS = sorted(NSYS_DIR.glob("*.sqlite"))
GPU_TRACES = {p.name for p in KINETO + NSYS if "cpu" not in p.name}  # the vLLM CPU trace has no GPU kernels
NSYS_COLUMNS = ["Time (%)", "Total Time (ns)", "Instances", "Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)",
                "StdDev (ns)", "p95 (ns)", "p99 (ns)", "Op Class", "Layer", "Name"]
GEN = 6


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def once_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One real --once generation (JSON), recorded: (its printed JSON, the recording)."""
    rec = tmp_path_factory.mktemp("rec") / "run.llmtop"
    rc, out, err = run_cli("--once", "--backend", "cpu", "--prompt", "Name three colors.", "--max-new-tokens",
                           str(GEN), "--format", "json", "--record", str(rec))
    assert rc == 0, err
    return json.loads(out), rec


def test_once_json_has_engine_and_profiler_keys(once_run: tuple[dict[str, Any], Path]) -> None:
    d, _ = once_run
    assert isinstance(d["text"], str) and d["text"]
    assert {"backend", "device", "model"} <= set(d["source"]) and d["source"]["backend"] == "cpu"
    t = d["tokens"]
    assert {"ttft_ms", "decode_tok_s", "prefill_tok_s", "generated", "tpot_ms_p50", "tpot_ms_p95"} <= set(t)
    assert 1 <= t["generated"] <= GEN and t["ttft_ms"] > 0
    kernel_keys = {"name", "op_class", "count", "total_ms", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms",
                   "pct", "cum_pct"}
    assert d["kernels"] and all(kernel_keys <= set(k) for k in d["kernels"])
    assert {"layers", "attention", "attribution", "trend", "dropped"} <= set(d)
    assert len(d["layers"]) == d["source"]["n_layers"]
    assert {"layer", "ms_per_step", "by_op_class"} <= set(d["layers"][0])
    assert {"slope_us_per_1k", "intercept_ms", "r2", "projection"} <= set(d["attention"])
    # one decoder layer is 15 kernel events per step: the counts are exact, not sampled
    steps = t["prefills"] + t["decode_steps"]
    qproj = next(k for k in d["kernels"] if k["name"] == "matmul:q_proj")
    assert qproj["count"] == steps * d["source"]["n_layers"]
    assert sum(k["count"] for k in d["kernels"]) == d["events"]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return bool(a == b)


def test_record_then_report_equals_live(once_run: tuple[dict[str, Any], Path]) -> None:
    live, rec = once_run
    rc, out, err = run_cli("report", str(rec), "--format", "json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["source"] == live["source"] and rep["events"] == live["events"]
    assert rep["tokens"]["generated"] == live["tokens"]["generated"]
    for key in ("ttft_ms", "tpot_ms_p50", "tpot_ms_p95", "decode_tok_s", "prefill_tok_s"):
        assert _close(rep["tokens"][key], live["tokens"][key]), key
    assert [k["name"] for k in rep["kernels"]] == [k["name"] for k in live["kernels"]]
    for a, b in zip(rep["kernels"], live["kernels"], strict=True):
        assert a["count"] == b["count"] and _close(a["total_ms"], b["total_ms"]) and _close(a["p95_ms"],
                                                                                          b["p95_ms"])
    assert len(rep["layers"]) == len(live["layers"])
    for a, b in zip(rep["layers"], live["layers"], strict=True):
        assert a["layer"] == b["layer"] and _close(a["ms_per_step"], b["ms_per_step"])
    for key in ("slope_us_per_1k", "intercept_ms", "r2"):
        assert _close(rep["attention"][key], live["attention"][key])


@pytest.mark.parametrize("path", KINETO + NSYS, ids=lambda p: p.name)
def test_report_on_trace_fixtures(path: Path) -> None:
    rc, out, err = run_cli("report", str(path), "--format", "json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["kernels"] and sum(k["count"] for k in rep["kernels"]) == rep["events"]
    top = rep["kernels"][0]
    kern = next(k for k in rep["kernels"] if k["op_class"] != "memcpy")
    # independent pass over the file: launches of the top compute kernel's name
    if path.suffix == ".sqlite":
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            n = db.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s "
                           "ON s.id = k.shortName OR s.id = k.demangledName WHERE s.value = ?",
                           (kern["name"],)).fetchone()[0]
        assert n == kern["count"]
    elif path.suffix == ".gz" and path.name in GPU_TRACES:
        with gzip.open(path, "rt") as f:
            trace = json.load(f)
        events = trace["traceEvents"] if isinstance(trace, dict) else trace
        n = sum(1 for e in events if e.get("cat") in ("kernel", "Kernel") and e.get("name") == kern["name"])
        assert n == kern["count"]

    rc, text, err = run_cli("report", str(path))
    assert rc == 0, err
    assert all(line.startswith("llmtop: warning: ") for line in err.splitlines())
    header = next(line for line in text.splitlines() if "Instances" in line)
    if path.name in GPU_TRACES:
        cols = header.split()
        assert " ".join(cols) == " ".join(NSYS_COLUMNS), header  # the nsys order, Name last
        assert f"{round(top['total_ms'] * 1e6):,}" in text  # Total Time (ns) of the top kernel
    else:
        assert "Total (ms)" in header and "Total Time (ns)" not in text
    rc, md, _ = run_cli("report", str(path), "--format", "markdown", "--limit", "3")
    assert rc == 0 and md.startswith("# llmtop report") and "Instances |" in md


def test_report_modes_and_groups(once_run: tuple[dict[str, Any], Path]) -> None:
    _, rec = once_run
    rc, out, _ = run_cli("report", str(rec), "--format", "json", "--group", "layer", "--mode", "window",
                         "--window", "3600")
    rep = json.loads(out)
    assert rc == 0 and rep["group"] == "layer" and rep["mode"] == "window"
    assert {k.get("layer") for k in rep["kernels"]} >= {0, None}


def test_export_writes_chrome_json(once_run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    live, rec = once_run
    for src, tracks in ((rec, "layer"), (rec, "phase"), (KINETO[0], "layer")):
        out = tmp_path / f"{src.name}.{tracks}.json"
        rc, _, err = run_cli("export", str(src), "-o", str(out), "--tracks", tracks)
        assert rc == 0 and err.startswith("llmtop: wrote "), err
        doc = json.loads(out.read_text())
        events = doc["traceEvents"] if isinstance(doc, dict) else doc
        complete = [e for e in events if e.get("ph") == "X"]
        assert complete and all("ts" in e and "dur" in e for e in complete)
        if src == rec:
            names = {e["name"] for e in complete}
            assert {k["name"] for k in live["kernels"]} <= names


@pytest.mark.parametrize(
    ("argv", "needle", "code"),
    [
        (["report", "/no/such/file.llmtop"], "no such file", 1),
        (["replay", "/no/such/file.llmtop"], "no such file", 1),
        (["export", "/no/such/file.llmtop", "-o", "/tmp/x.json"], "no such file", 1),
        (["report", "FOREIGN"], "unrecognised trace format", 1),
        (["frobnicate"], "unknown command 'frobnicate'", 2),
        (["--once", "--backend", "tpu"], "unknown backend 'tpu'", 2),
        (["--once", "--model", "no-such-preset", "--max-new-tokens", "1"], "unknown model", 1),
        (["--once", "--max-new-tokens", "-1"], "--max-new-tokens", 2),
        (["report", "FOREIGN", "--format", "xml"], "invalid choice", 2),
        (["replay", "FOREIGN", "--speed", "-1"], "--speed", 2),
        (["export", "FOREIGN"], "-o", 2),
        (["attach", "ftp://x"], "cannot attach", 1),
        (["--window", "0"], "--window", 2),
        ([], "not a TTY", 1),  # stdout is captured here: the TUI refuses before loading anything
        (["replay", "FOREIGN"], "unrecognised trace format", 1),
        (["replay", "KINETO"], "not a TTY", 1),
        (["attach", "http://127.0.0.1:9"], "not a TTY", 1),
    ],
)
def test_bad_input_is_one_line(argv: list[str], needle: str, code: int, tmp_path: Path) -> None:
    foreign = tmp_path / "notes.txt"
    foreign.write_text("just some text\nnot a trace\n")
    argv = [str(foreign) if a == "FOREIGN" else str(KINETO[0]) if a == "KINETO" else a for a in argv]
    rc, _, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("llmtop: error: ") and needle in lines[0], err


def test_process_exit_has_no_traceback() -> None:
    r = subprocess.run([sys.executable, "-m", "llmtop", "report", "/no/such/trace.json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == "llmtop: error: no such file: /no/such/trace.json"


def test_help_lists_everything() -> None:
    rc, out, _ = run_cli("--help")
    assert rc == 0
    for flag in ("--backend", "--model", "--dtype", "--threads", "--adapter", "--version", "--batch",
                 "--prompt", "--prompt-file",
                 "--max-new-tokens", "--loop", "--no-loop", "--temperature", "--top-k", "--top-p", "--seed",
                 "--no-timing", "--record", "--window", "--refresh", "--once", "--format",
                 "replay", "report", "export", "attach", "serve"):
        assert flag in out, flag
    for sub, flags in {"replay": ["--speed", "--window", "--refresh"],
                       "report": ["--format", "--mode", "--group", "--columns"],
                       "export": ["-o", "--tracks"],
                       "attach": ["--token", "--once", "--duration"],
                       "serve": ["--port", "--backend", "--model"]}.items():
        rc, out, _ = run_cli(sub, "--help")
        assert rc == 0 and all(f in out for f in flags), sub


def test_version_everywhere_from_package_metadata() -> None:
    from importlib.metadata import version

    want = f"llmtop {version('llmtop-live')}"
    for sub in ("", *[name for name in PARSERS if name != "llmtop"]):
        argv = [sub] if sub else []
        rc, out, _ = run_cli(*argv, "--version")
        assert rc == 0 and out.strip() == want, sub
        rc, out, _ = run_cli(*argv, "--help")
        assert rc == 0 and "--version" in out, sub
    r = subprocess.run([sys.executable, "-m", "llmtop", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == want


def _replay_args(path: Path) -> Any:
    return PARSERS["replay"]().parse_args([str(path), "--speed", "0", "--window", "3600"])


@pytest.mark.parametrize("which", ["recording", "kineto"])
async def test_replay_fills_the_panes(which: str, once_run: tuple[dict[str, Any], Path]) -> None:
    from llmtop.tui.panes import KernelTable, LayerPane, TokenPane

    live, rec = once_run
    path = rec if which == "recording" else next(p for p in KINETO if "tracelens" in p.name)
    session = build_replay_session(_replay_args(path))
    app = session.app
    with session:
        assert session.pipeline.wait_done(30)
        async with app.run_test(size=(120, 40)) as pilot:
            app.refresh_now()
            await pilot.pause()
            rep = app.snapshot.report
            table = app.query_one(KernelTable)
            assert table.row_count == len(rep["kernels"]) > 0
            assert "decode" in app.query_one(TokenPane).text()
            assert "█" in app.query_one(LayerPane).text()
            assert app.status.get("kind") == "replay" and app.status.get("state") == "finished"
            if which == "recording":
                assert rep["tokens"]["generated"] == live["tokens"]["generated"]
                assert {k["name"]: k["count"] for k in rep["kernels"]} == {
                    k["name"]: k["count"] for k in live["kernels"]}
            await pilot.press("space")  # pause goes to the ReplaySource
            assert app.provider.control.paused


def test_ctrl_c_during_once_keeps_the_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtop.kernels.base import KernelRecorder

    rec = tmp_path / "interrupted.llmtop"
    real_end_step = KernelRecorder.end_step
    calls = {"n": 0}

    def end_step(self: Any, *a: Any, **kw: Any) -> None:
        real_end_step(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 4:  # the user hits ctrl-c after the prefill and three decode steps
            _thread.interrupt_main()  # SIGINT lands in the main thread, as a real ctrl-c does

    monkeypatch.setattr(KernelRecorder, "end_step", end_step)
    rc, out, err = run_cli("--once", "--backend", "cpu", "--prompt", "Count to twenty.", "--max-new-tokens",
                           "30", "--record", str(rec), "--warmup", "0")  # count the timed steps only
    assert rc == 130 and out == "" and err == ""
    monkeypatch.undo()
    rc, out, err = run_cli("report", str(rec), "--format", "json")
    assert rc == 0, err
    t = json.loads(out)["tokens"]
    # every step the engine finished is recorded: the three before ctrl-c, plus the one in flight if any
    assert t["prefills"] == 1 and 3 <= t["decode_steps"] == calls["n"] - 1 < 29


async def test_live_session_fills_the_panes_and_records(tmp_path: Path) -> None:
    from llmtop.cli import build_live_session
    from llmtop.tui.panes import KernelTable, TokenPane

    rec = tmp_path / "live.llmtop"
    args = PARSERS["llmtop"]().parse_args(["--backend", "cpu", "--prompt", "Hi", "--max-new-tokens", "3",
                                           "--no-loop", "--window", "3600", "--record", str(rec)])
    session = build_live_session(args)
    app = session.app
    with session:
        # --no-loop: the engine collector ends after one round (the process collector keeps sampling)
        engine = next(c for c in session.pipeline.collectors if c.name == "engine")
        engine.join(60)
        assert not engine.alive and engine.error is None
        want = len(engine.last_outputs[0].token_ids)
        deadline = time.monotonic() + 10
        while session.pipeline.snapshot(mode="cumulative").report["tokens"]["generated"] < want:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            app.refresh_now()
            await pilot.pause()
            rep = app.snapshot.report
            assert app.status.get("kind") == "live" and rep["tokens"]["generated"] == want
            assert app.query_one(KernelTable).row_count == len(rep["kernels"]) > 0
            assert "TTFT" in app.query_one(TokenPane).text()
    rc, out, err = run_cli("report", str(rec), "--format", "json")
    assert rc == 0, err
    recorded = json.loads(out)
    assert recorded["tokens"]["generated"] == rep["tokens"]["generated"]
    assert recorded["events"] == rep["events"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_once_record_survives_sigterm_and_sigkill(tmp_path: Path, sig: str) -> None:
    """--once --record flushes as it goes (the pipeline's recording, every 0.5 s): SIGTERM is handled like
    ctrl-c (exit 128 + 15, recording closed), and even SIGKILL leaves every step flushed before it."""
    import os
    import signal

    rec = tmp_path / "killed.llmtop"
    p = subprocess.Popen([sys.executable, "-m", "llmtop", "--once", "--backend", "cpu", "--prompt",
                          "Count to one hundred.", "--max-new-tokens", "400", "--ignore-eos", "--record",
                          str(rec)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (rec.exists() and rec.stat().st_size > 20_000):  # well past the header: steps are on disk
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.stderr else ""
        time.sleep(0.1)
    os.kill(p.pid, getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == (128 + signal.SIGTERM if sig == "SIGTERM" else -signal.SIGKILL), err
    rc, out, err = run_cli("report", str(rec), "--format", "json")
    assert rc == 0, err
    assert json.loads(out)["tokens"]["decode_steps"] > 0


def test_once_record_on_a_full_disk_still_prints_the_whole_report(tmp_path: Path) -> None:
    """The recording's file hits a size limit mid-run (RLIMIT_FSIZE: writes fail with EFBIG, as on a full
    disk; Python ignores SIGXFSZ): --once still prints the whole report, names the failure under
    `warnings` and on stderr, exits 1, and the file keeps what was written before."""
    import resource

    rec = tmp_path / "full.llmtop"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    p = subprocess.run([sys.executable, "-m", "llmtop", "--once", "--backend", "cpu", "--prompt",
                        "Count to one hundred.", "--max-new-tokens", "48", "--ignore-eos", "--format", "json",
                        "--record", str(rec)], capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert p.returncode == 1, p.stderr
    rep = json.loads(p.stdout)  # stdout is a pipe: not under the file size limit
    assert rep["tokens"]["generated"] == 48
    assert any("File too large" in w and "report is complete" in w for w in rep["warnings"])
    assert p.stderr.strip().splitlines()[-1].startswith("llmtop: error: recording stopped")
    assert "Traceback" not in p.stderr
    assert 0 < rec.stat().st_size <= 8192
    rc, out, err = run_cli("report", str(rec), "--format", "json")
    assert rc == 0 and json.loads(out)["warnings"], err  # what was written reads, cut short
