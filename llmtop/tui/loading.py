"""The loading screen: what llmtop is doing, and for how long, while the TUI's source is being built.

Building a live session (starting the engine worker, reading the model, dequantizing, the first prefill)
or opening a large trace takes seconds with nothing else on screen. `run_loading(build, title)` runs
`build(say)` on a thread while a small Textual app shows the stages `build` reports through `say(text)`,
each with its elapsed time, and returns `build`'s result once it finishes (its exception, re-raised, when
it fails). The main app starts right after, on the same terminal.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Static

T = TypeVar("T")


class LoadingApp(App[None]):
    """Shows `title`, the stages so far with their times, and the time since the start; exits when the
    build thread is done."""

    CSS = """
    Screen { align: center middle; }
    #loading-box { width: auto; min-width: 60; max-width: 100; height: auto; border: round $primary;
                   padding: 1 2; }
    #loading-title { text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q,ctrl+c", "cancel", "cancel")]

    def __init__(self, title: str, build: Callable[[Callable[[str], None]], Any]) -> None:
        super().__init__()
        self.loading_title = title
        self._build = build
        self.t0 = time.monotonic()
        self.stages: list[tuple[float, str]] = []  # (seconds since the start, what began then)
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._started = False

    def compose(self) -> ComposeResult:
        with Vertical(id="loading-box"):
            yield Static(self.loading_title, id="loading-title")
            yield Static(id="loading-stages")

    def on_mount(self) -> None:
        self.set_interval(0.25, self._tick)
        self._tick()
        self.start_build()

    def start_build(self) -> None:
        """Start the build thread (once): before the app runs, so a quick build needs no screen at all."""
        if self._started:
            return
        self._started = True
        threading.Thread(target=self._run, name="llmtop-loading", daemon=True).start()

    def say(self, text: str) -> None:
        """A new stage (from the build thread)."""
        with self._lock:
            self.stages.append((time.monotonic() - self.t0, text))

    def _run(self) -> None:
        try:
            self.result = self._build(self.say)
        except BaseException as e:  # handed to the caller, who raises it once the screen is gone
            self.error = e
        finally:
            self._done.set()
            if not self.cancelled:
                # the app may have closed first (its loop already ended): nothing left to exit then
                with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                    self.call_from_thread(self.exit)

    def stage_text(self) -> str:
        with self._lock:
            stages = list(self.stages)
        now = time.monotonic() - self.t0
        lines = []
        for i, (t, text) in enumerate(stages):
            end = stages[i + 1][0] if i + 1 < len(stages) else now
            mark = "✓" if i + 1 < len(stages) else "…"
            lines.append(f"{mark} {text}  {end - t:4.1f} s")
        lines.append(f"\n{now:.1f} s since start   (q cancels)")
        return "\n".join(lines)

    def _tick(self) -> None:
        self.query_one("#loading-stages", Static).update(self.stage_text())
        if self._done.is_set() and not self.cancelled:
            self.exit()  # the build ended before this app's loop could take its exit call

    def action_cancel(self) -> None:
        self.cancelled = True
        self.exit()


def run_loading(build: Callable[[Callable[[str], None]], T], title: str, *, show_after_s: float = 0.0) -> T:
    """Run `build(say)` behind the loading screen and return its result; KeyboardInterrupt when the user
    cancels (the build is left to finish on its thread and its result is closed if it has `stop`).
    `show_after_s`: a build done within this time returns without the screen ever being drawn (a small
    file opens without a flash of the loading screen before the TUI)."""
    app = LoadingApp(title, build)
    if show_after_s > 0:
        app.start_build()
        app._done.wait(show_after_s)
    if not app._done.is_set():
        app.run()
    if app.cancelled and not app._done.is_set():
        def close_when_built() -> None:
            app._done.wait()
            stop = getattr(app.result, "stop", None)
            if stop is not None:
                stop()

        threading.Thread(target=close_when_built, daemon=True).start()
        raise KeyboardInterrupt
    app._done.wait()
    if app.error is not None:
        raise app.error
    return app.result


__all__ = ["LoadingApp", "run_loading"]
