"""Replay seek (issue 17): ReplaySource.seek / seek_by / restart on a real recording, through a real
Pipeline and Aggregator; the statistics after a seek equal those of the records up to that point."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmtop.collectors.base import Rewind
from llmtop.collectors.pipeline import Pipeline
from llmtop.collectors.replay import ReplaySource
from llmtop.events import EventBatch
from llmtop.stats.aggregator import Aggregator
from llmtop.traces.open import open_trace_file


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seek") / "r.llmtop"
    cmd = [sys.executable, "-m", "llmtop", "--once", "--max-new-tokens", "24", "--ignore-eos", "--record",
           str(path), "--format", "json"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    return path


def _generated_until(path: Path, seconds: float) -> int:
    """Tokens of the steps in records whose time is within `seconds` of the first record (no long gaps in
    a --once recording, so the replay clock is the recording's)."""
    recs = list(open_trace_file(path).records)
    t0 = recs[0][0]
    agg = Aggregator()
    agg.set_source(open_trace_file(path).source)
    for t, item in recs:
        if isinstance(item, EventBatch) and t - t0 <= seconds * 1e9:
            agg.ingest(item)
    return agg.snapshot(mode="cumulative").report["tokens"]["generated"]


def _settle(p: Pipeline, src: ReplaySource, timeout: float = 20.0) -> int:
    """Wait until the replay and the aggregator are both idle; the generated count then."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        time.sleep(0.3)
        n = p.snapshot(mode="cumulative").report["tokens"]["generated"]
        if n == last and p.queue.fill == 0 and (src.at_end or src.paused):
            return n
        last = n
    raise AssertionError("the replay did not settle")


def test_seek_forward_back_and_restart(recording: Path) -> None:
    total = _generated_until(recording, 1e9)
    src = ReplaySource.open(recording, speed=0, keep_open=True)  # as fast as possible: the end at once
    p = Pipeline(Aggregator(window_s=3600))
    p.set_source(src.source)
    p.add(src)
    with p:
        assert _settle(p, src) == total and src.at_end
        end = src.position_ns / 1e9
        # back to the middle: the pipeline forgets (a Rewind in the queue) and refolds up to there
        src.pause()
        mid = end / 2
        src.seek(mid)
        n = _settle(p, src)
        assert n == _generated_until(recording, mid) and 0 < n < total
        assert any(isinstance(m, Rewind) for m in p.markers)
        assert src.position_ns == pytest.approx(mid * 1e9, abs=1)
        # forward by 10 s: past the end, everything is folded again, once
        src.resume()
        src.seek_by(10.0)
        assert _settle(p, src) == total and src.at_end
        # restart from the beginning (paused at 0: nothing folded yet), then play to the end again
        src.pause()
        src.restart()
        assert _settle(p, src) == _generated_until(recording, 0.0)
        src.resume()
        assert _settle(p, src) == total
    assert not p.errors


def test_a_replay_without_keep_open_still_finishes(recording: Path) -> None:
    src = ReplaySource.open(recording, speed=0)
    p = Pipeline(Aggregator(window_s=3600))
    p.add(src)
    with p:
        p.wait_done()
    assert p.producers_done and not src.at_end


async def test_replay_keys_seek_and_restart(recording: Path) -> None:
    """In the TUI: `[` / `]` / `home` are in the footer of a replay (not of a live run), `]` moves the
    position forward, `home` goes back to 0 and the statistics start over; --start begins later."""
    from textual.widgets import Footer

    from llmtop.cli import PARSERS, build_replay_session
    from llmtop.tui.panes import HeaderBar

    argv = [str(recording), "--speed", "0.05", "--window", "3600", "--start", "0.1"]
    args = PARSERS["replay"]().parse_args(argv)
    session = build_replay_session(args)
    app, p = session.app, session.pipeline
    src = app.provider.control
    with session:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause()
            keys = {fk.key for fk in app.query_one(Footer).query("FooterKey")}
            assert {"left_square_bracket", "right_square_bracket", "home"} <= keys
            assert src.position_ns >= 0.1e9 - 1  # --start
            before = src.position_ns
            await pilot.press("right_square_bracket")
            for _ in range(40):
                await pilot.pause(0.05)
                if src.position_ns >= before + 9e9 or src.at_end:
                    break
            assert src.position_ns >= min(before + 9e9, src.position_ns) and src.position_ns > before
            await pilot.press("home")
            for _ in range(40):
                await pilot.pause(0.05)
                if src.position_ns < 0.05e9:
                    break
            assert src.position_ns < 0.05e9
            app.refresh_now()
            await pilot.pause()
            assert " s" in app.query_one(HeaderBar).content.plain  # the position, in seconds
    assert not p.errors


FIXTURES = Path(__file__).parent / "fixtures"
IMPORTS = sorted(str(p) for d in ("kineto", "nsys") for p in (FIXTURES / d).iterdir())


@pytest.mark.parametrize("path", IMPORTS, ids=lambda p: Path(p).name)
def test_an_imported_trace_replays_in_time_slices_with_the_numbers_of_the_whole(path: str) -> None:
    """Other tools' traces (one batch from the importer) replay in 50 ms slices of trace time, so the
    position moves and seek works; folded to the end they give the report of the whole file."""
    from llmtop.collectors.replay import SLICE_NS, time_sliced

    whole = list(open_trace_file(path).records)
    sliced = list(time_sliced(open_trace_file(path).records))
    n_rows = sum(len(i) for _, i in whole if isinstance(i, EventBatch))
    assert sum(len(i) for _, i in sliced if isinstance(i, EventBatch)) == n_rows
    span = max(t for t, _ in whole) - min(t for t, _ in whole)
    if any(isinstance(i, EventBatch) and len(i.kernels) > 1 and np.ptp(i.kernels["start_ns"]) > SLICE_NS
           for _, i in whole):
        assert len(sliced) > len(whole)  # cut into several records ...
        ts = [t for t, _ in sliced]
        assert max(ts) - min(ts) >= span  # ... spread over the trace's own time

    def report(records: list) -> dict:
        agg = Aggregator()
        agg.set_source(open_trace_file(path).source)
        for _, item in records:
            if isinstance(item, EventBatch):
                agg.ingest(item)
        return agg.snapshot(mode="cumulative").report

    a, b = report(whole), report(sliced)
    def rows(r: dict) -> list:
        return sorted((k["name"], k["op_class"], k["count"], round(k["total_ms"], 6)) for k in r["kernels"])

    assert rows(a) == rows(b)
    assert [(x["layer"], round(x["ms_per_step"], 6)) for x in a["layers"]] == \
        [(x["layer"], round(x["ms_per_step"], 6)) for x in b["layers"]]
    assert a["tokens"]["decode_steps"] == b["tokens"]["decode_steps"]
    assert a["tokens"]["generated"] == b["tokens"]["generated"]
    assert a["attention"].get("points") == b["attention"].get("points")


def test_an_import_replays_over_its_span_and_seeks() -> None:
    """Through a real pipeline: the vLLM-CPU worker trace plays out (position moves with the trace), a
    seek back refolds exactly to the whole file's numbers at the end."""
    path = Path(__file__).parent / "fixtures" / "kineto" / "vllm_cpu_0.32_worker_rank0.pt.trace.json.gz"
    agg = Aggregator()
    src = ReplaySource.open(path, speed=0, keep_open=True)
    p = Pipeline(agg)
    p.set_source(src.source)
    p.add(src)
    p.start()
    try:
        end = _settle(p, src)
        assert src.at_end and src.end_ns is not None and src.end_ns > 0
        total = p.snapshot(mode="cumulative").report["events"]
        src.pause()  # paused, the replay stays where a seek puts it (at speed 0 it would run on at once)
        src.seek(src.end_ns / 2e9)  # back to the middle: fewer events folded
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (p.snapshot(mode="cumulative").report["events"] < total):
            time.sleep(0.1)
        assert p.snapshot(mode="cumulative").report["events"] < total
        assert p.snapshot(mode="cumulative").report["events"] > 0
        src.seek(1e9)  # and on to the end: the whole file again
        src.resume()
        assert _settle(p, src) == end
        assert p.snapshot(mode="cumulative").report["events"] == total
    finally:
        p.stop()


def test_slicing_follows_the_rows_not_the_span() -> None:
    """A hostile import whose two kernels lie 2^62 ns apart is cut into two slices at once (no array over
    the span), with the batch's names on the first."""
    from llmtop.collectors.replay import time_sliced
    from llmtop.events import KERNEL_DTYPE

    k = np.zeros(3, KERNEL_DTYPE)
    k["start_ns"] = [1 << 62, 0, 10]
    k["dur_ns"] = 5
    t0 = time.perf_counter()
    out = list(time_sliced([(7, EventBatch(k, names_base=0, new_names=["a"]))]))
    assert time.perf_counter() - t0 < 1.0
    assert [len(b.kernels) for _, b in out] == [2, 1]
    assert out[0][1].new_names == ["a"] and out[1][1].new_names == [] and out[1][1].names_base == 1
    assert [t for t, _ in out] == [15, (1 << 62) + 5]
