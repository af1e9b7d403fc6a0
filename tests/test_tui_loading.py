"""The loading screen (issue 17, no blank waits): it is up before the build finishes, shows each stage with
its time, hands the build's result (or its exception) back, and `q` cancels."""

from __future__ import annotations

import threading

import pytest

from llmtop.tui.loading import LoadingApp


async def test_stages_show_while_building_and_the_result_comes_back() -> None:
    go = threading.Event()

    def build(say):
        say("starting the engine worker")
        go.wait(10)
        say("engine ready")
        return "the pipeline"

    app = LoadingApp("llmtop · loading", build)
    async with app.run_test(size=(100, 20)) as pilot:
        for _ in range(40):
            await pilot.pause(0.05)
            if app.stages:
                break
        app._tick()
        shown = str(app.query_one("#loading-stages").content)
        assert "… starting the engine worker" in shown and "since start" in shown  # up before the build ends
        go.set()
        for _ in range(100):
            await pilot.pause(0.05)
            if app._done.is_set():
                break
    assert app.result == "the pipeline" and app.error is None and not app.cancelled
    assert [s for _, s in app.stages] == ["starting the engine worker", "engine ready"]
    assert "✓ starting the engine worker" in app.stage_text()


async def test_a_failing_build_hands_its_error_back_and_q_cancels() -> None:
    def broken(say):
        say("reading the model")
        raise ValueError("no such model")

    app = LoadingApp("loading", broken)
    async with app.run_test() as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if app._done.is_set():
                break
    assert isinstance(app.error, ValueError) and app.result is None

    hold = threading.Event()
    slow = LoadingApp("loading", lambda say: hold.wait(10))
    async with slow.run_test() as pilot:
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
    assert slow.cancelled
    hold.set()


def test_run_loading_raises_what_the_build_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_loading outside a terminal: the app is stubbed to run the build inline, the contract stays."""
    from llmtop.tui import loading

    def fake_run(self):  # what App.run does here, minus the terminal: mount, build, exit
        self._run_inline = True
        try:
            self.result = self._build(self.say)
        except BaseException as e:
            self.error = e
        finally:
            self._done.set()

    monkeypatch.setattr(loading.LoadingApp, "run", fake_run)
    assert loading.run_loading(lambda say: 42, "t") == 42
    with pytest.raises(RuntimeError, match="boom"):
        loading.run_loading(lambda say: (_ for _ in ()).throw(RuntimeError("boom")), "t")
