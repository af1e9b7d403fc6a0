"""No blank waits (issue 17): before the first event the screen says how long it has waited and what the
source is doing (a user's command under `llmtop run`: its pid and its last line of output), and the note
goes once events arrive; a replay shows its position in the footer; a quick replay open draws no
loading screen at all."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from test_tui import generation, make_provider  # noqa: F401 - `generation` is a module-scoped fixture

from llmtop.attach.run import CommandRun, RunWatcher, last_line
from llmtop.collectors.pipeline import Pipeline, replay_pipeline
from llmtop.stats.aggregator import Aggregator
from llmtop.tui.app import LlmtopApp
from llmtop.tui.footer import LlmtopFooter, replay_position_text
from llmtop.tui.panes import SourceNote
from llmtop.tui.provider import AggregatorProvider, PipelineProvider

KINETO = Path(__file__).parent / "fixtures" / "kineto" / "vllm_cpu_0.32_worker_rank0.pt.trace.json.gz"


def test_last_line_reads_the_latest_progress_update(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    assert last_line(log) == ""  # not there yet
    log.write_bytes(b"importing torch\nLoading checkpoint shards:  10%\r"
                    b"\x1b[32mLoading checkpoint shards:  50%\x1b[0m\r\n\n  \n")
    assert last_line(log) == "Loading checkpoint shards:  50%"
    log.write_bytes(b"x" * 10_000 + b"\n" + b"\x07bell " + "é".encode() * 300)
    got = last_line(log, width=40)
    assert got.startswith("\\x07bell") and got.endswith("…") and len(got) == 40


async def test_a_run_waiting_for_its_model_says_so_then_the_note_goes(tmp_path: Path,
                                                                      generation: Any) -> None:  # noqa: F811
    script = tmp_path / "slow_start.py"
    script.write_text("import time\nprint('Loading checkpoint shards: 50%', flush=True)\ntime.sleep(60)\n")
    run = CommandRun([sys.executable, str(script)], log=tmp_path / "run.log", new_session=True, viewer=True)
    p = Pipeline(Aggregator())
    p.add(RunWatcher(run, p))
    p.start()
    try:
        app = LlmtopApp(PipelineProvider(p, kind="run"), refresh_hz=10)
        async with app.run_test(size=(120, 40)) as pilot:
            note = app.query_one(SourceNote)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "last output" not in note.content.plain:
                await pilot.pause(0.1)
            text = note.content.plain
            assert note.display and "waiting for the first events" in text, text
            assert f"pid {run.pid}" in text and "no model hooked yet" in text, text
            assert "last output: Loading checkpoint shards: 50%" in text, text
            first = int(text.split("·", 1)[1].split("s", 1)[0])
            await pilot.pause(1.3)  # the seconds move on although nothing is folded
            assert int(note.content.plain.split("·", 1)[1].split("s", 1)[0]) > first
    finally:
        p.stop()
        run.stop(grace_s=2)
        run.cleanup()

    # events arrive: the note goes, and a reset's empty panes do not bring it back
    batch, source, _ = generation
    agg = Aggregator(window_s=3600.0)
    prov = AggregatorProvider(agg)
    app = LlmtopApp(prov)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.query_one(SourceNote).display
        with prov.lock:
            agg.set_source(source)
            agg.ingest(batch)
        app.refresh_now()
        await pilot.pause()
        assert not app.query_one(SourceNote).display
        await pilot.press("r")
        await pilot.pause()
        assert not app.query_one(SourceNote).display


def test_the_replay_position_is_worded_for_the_footer() -> None:
    assert replay_position_text({"kind": "live", "position_s": 3.0}) == ""
    assert replay_position_text({"kind": "replay", "position_s": 12.34, "state": "running"}) == "▶ 12.3 s"
    assert replay_position_text({"kind": "replay", "position_s": 12.34, "end_s": 45.6,
                                 "state": "paused"}) == "⏸ 12.3 / 45.6 s"
    assert replay_position_text({"kind": "replay", "position_s": 45.6, "end_s": 45.6,
                                 "at_end": True}) == "■ end 45.6 s"


async def test_a_replay_shows_its_position_in_the_footer_and_seeks_from_it() -> None:
    p, src = replay_pipeline(str(KINETO), Aggregator(), speed=0, keep_open=True)
    p.start()
    try:
        app = LlmtopApp(PipelineProvider(p, kind="replay", control=src), refresh_hz=10)
        async with app.run_test(size=(80, 24)) as pilot:
            footer = app.query_one(LlmtopFooter)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not footer.position.startswith("■ end"):
                await pilot.pause(0.1)
            assert src.end_ns is not None
            assert footer.position == f"■ end {src.end_ns / 1e9:.1f} s"
            label = app.query_one("#footer-position")
            assert label.display and label.region.right <= 80 and label.region.width > 0
            assert not footer.show_command_palette  # the palette hint gave its place
            await pilot.press("space")  # pause, then back to the start: the position says so
            await pilot.press("home")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not footer.position.startswith("⏸ 0.0"):
                await pilot.pause(0.1)
            assert footer.position == f"⏸ 0.0 / {src.end_ns / 1e9:.1f} s"
    finally:
        p.stop()


def test_a_quick_build_draws_no_loading_screen(monkeypatch: Any) -> None:
    from llmtop.tui import loading

    def no_screen(self: Any) -> None:
        raise AssertionError("the loading screen was drawn for a build that took milliseconds")

    monkeypatch.setattr(loading.LoadingApp, "run", no_screen)
    assert loading.run_loading(lambda say: (say("reading"), 7)[1], "t", show_after_s=5.0) == 7


def test_an_agent_link_says_what_it_is_waiting_for() -> None:
    """The waiting note's words for `attach llmtop://…`: connecting, then the refusal and that it retries."""
    import socket

    from llmtop.attach.agent_client import AgentCollector

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = AgentCollector(f"llmtop://127.0.0.1:{port}", backoff=(0.05, 0.2))
    assert c.activity() == f"connecting to the agent at 127.0.0.1:{port}"
    p = Pipeline(Aggregator())
    p.add(c)
    p.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "retrying" not in c.activity():
            time.sleep(0.05)
        assert c.activity().startswith(f"127.0.0.1:{port}: ") and "is the agent started?" in c.activity()
        assert "retrying" in p.status().activity
    finally:
        p.stop()
