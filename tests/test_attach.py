"""`attach` over several agents: one pipeline, one name table, rows per target plus a total, --once."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

import llmtop.agent as agent_mod
from llmtop.attach import attach_once, build_attach_pipeline, link_summary, target_rows
from llmtop.collectors.synthetic import SyntheticEngine
from llmtop.errors import LlmtopError
from llmtop.stats import Aggregator


def _run(engine: SyntheticEngine, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            engine.generate(["x"], 8, stop_event=stop)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_two_agents_once_report() -> None:
    e1 = SyntheticEngine(n_layers=2, step_time_s=0.005)
    e2 = SyntheticEngine(n_layers=3, step_time_s=0.005)
    # a name only the second process knows, so the two remote tables differ
    e2.ops.recorder.kernel_id("custom:only_here", "other")
    a1, a2 = agent_mod.start("127.0.0.1:0", engine=e1), agent_mod.start("127.0.0.1:0", engine=e2)
    stop = threading.Event()
    threads = [_run(e1, stop), _run(e2, stop)]
    try:
        rep = attach_once([f"llmtop://{a1.address}", f"tcp://{a2.address}"], Aggregator(30.0), duration_s=1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        a1.close()
        a2.close()
    rows = rep["attach"]
    assert [r["kind"] for r in rows] == ["agent", "agent", "total"]
    assert all(r["link"] == "connected" for r in rows[:2]) and rows[2]["link"] == "2/2 connected"
    assert rows[0]["gen_tokens"] > 0 and rows[1]["gen_tokens"] > 0
    assert rows[2]["gen_tokens"] == rows[0]["gen_tokens"] + rows[1]["gen_tokens"]
    assert rep["source"]["kind"] == "attach" and len(rep["source"]["extra"]["targets"]) == 2
    names = {k["name"] for k in rep["kernels"]}
    assert "matmul:lm_head" in names
    assert rep["events"] > 0


def test_bad_targets() -> None:
    with pytest.raises(LlmtopError, match="at least one"):
        build_attach_pipeline([], Aggregator())
    with pytest.raises(LlmtopError, match="cannot attach"):
        build_attach_pipeline(["ftp://x"], Aggregator())
    with pytest.raises(LlmtopError, match="twice"):
        build_attach_pipeline(["llmtop://127.0.0.1:1", "llmtop://127.0.0.1:1"], Aggregator())


def test_unreachable_target_reports_disconnected() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = build_attach_pipeline(
        [f"llmtop://127.0.0.1:{port}", f"http://127.0.0.1:{port}/metrics"], Aggregator()
    )
    p.start()
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end and not all(r.link == "disconnected" for r in target_rows(p)[:2]):
            time.sleep(0.05)
        rows = target_rows(p)
        assert [r.link for r in rows[:2]] == ["disconnected", "disconnected"]
        assert np.isnan(rows[1].gen_tok_s)
        line = link_summary(p)
        assert line is not None and line.count("disconnected") == 2 and "retrying" in line
    finally:
        p.stop()


def test_drilling_into_one_of_two_agents_shows_its_events_alone() -> None:
    """`attach A B`, `enter` on A's row in the Servers pane: every pane shows A's events only (its own
    fold, AgentCollector.own), the kernel title says so, and `escape` brings back both merged."""
    import asyncio

    from llmtop.cli import attach_parser, build_attach_session
    from llmtop.tui.panes import KernelTable, LayerPane, ServersPane

    e1 = SyntheticEngine(n_layers=2, step_time_s=0.005)
    e2 = SyntheticEngine(n_layers=5, step_time_s=0.005)
    a1, a2 = agent_mod.start("127.0.0.1:0", engine=e1), agent_mod.start("127.0.0.1:0", engine=e2)
    stop = threading.Event()
    threads = [_run(e1, stop), _run(e2, stop)]
    sess = build_attach_session(attach_parser().parse_args(
        [f"llmtop://{a1.address}", f"llmtop://{a2.address}", "--interval", "0.2", "--window", "3600"]))
    app, p = sess.app, sess.pipeline
    c1 = next(c for c in p.collectors if getattr(c, "url", "") == f"llmtop://{a1.address}")

    def layers() -> set[int]:
        return {int(r["layer"]) for r in app.snapshot.report["layers"]}

    async def main() -> None:
        async with app.run_test(size=(140, 44)) as pilot:
            end = time.monotonic() + 20
            while time.monotonic() < end and not (app.snapshot is not None and layers() == set(range(5))
                                                  and c1.steps_seen > 3):
                await pilot.pause(0.1)
            assert layers() == set(range(5))  # merged: the larger model's five layers
            pane = app.query_one(ServersPane)
            pane.focus()
            pane.cursor_label = c1.label
            await pilot.press("enter")
            await pilot.pause(0.3)
            app.refresh_now()
            assert app.server_focus == c1.label
            assert layers() == {0, 1}  # the two-layer engine alone
            assert f"{c1.label} alone" in str(app.query_one(KernelTable).border_title)
            axis = [ln for ln in app.query_one(LayerPane).text().splitlines() if ln.startswith("0 ")]
            assert axis and axis[0].split() == ["0", "1"]  # the pane draws two layers
            stop.set()
            for t in threads:
                t.join(5)

            def folded() -> int:
                app.refresh_now()
                tok = app.snapshot.report["tokens"]
                return app.snapshot.report["events"] + tok["prefills"] + tok["decode_steps"]

            # The agent may still be flushing its backlog (a loaded machine): wait until nothing more
            # arrives for half a second, then everything it delivered must have been folded.
            end, last, still = time.monotonic() + 20, -1, 0
            while time.monotonic() < end and still < 3:
                n = c1.emitted_events
                still = still + 1 if n == last else 0
                last = n
                await pilot.pause(0.2)
            assert folded() == c1.emitted_events  # exactly the first agent's events and steps, every one
            own = app.snapshot.report
            assert own["tokens"]["decode_steps"] > 0
            await pilot.press("escape")
            await pilot.pause(0.3)
            app.refresh_now()
            assert app.server_focus is None and layers() == set(range(5))
            assert app.snapshot.report["events"] > own["events"]

    p.start()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        p.stop()
        a1.close()
        a2.close()
