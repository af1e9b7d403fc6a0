"""What a TUI mode runs: the app, the pipeline feeding it, and what happens around them.

Every TUI mode (`llmtop`, `replay`, `attach`, `run`) builds a `TuiSession`; tests drive
`session.app.run_test()` over exactly what the CLI builds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from llmtop.collectors.pipeline import Pipeline
from llmtop.errors import LlmtopError
from llmtop.events import SourceInfo
from llmtop.tui.app import LlmtopApp
from llmtop.tui.provider import SnapshotProvider

NOT_A_TTY = ("the TUI needs an interactive terminal (stdin/stdout is not a TTY); use --once for a "
             "headless run, or `llmtop report FILE` for a recording")


@dataclass
class TuiSession:
    """What a TUI mode runs: the app, the pipeline feeding it, and cleanups after both stop.

    `with session:` starts the pipeline and stops it (closing any recording) on the way out, so
    tests can drive `session.app.run_test()` over exactly what the CLI builds.
    """

    app: LlmtopApp
    pipeline: Pipeline
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)  # messages printed once the TUI is gone
    exit_code: Callable[[], int] = lambda: 0  # what `llmtop` exits with once the TUI is gone (run: COMMAND's)

    def __enter__(self) -> TuiSession:
        self.pipeline.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.pipeline.stop()
        finally:
            for fn in self.cleanups:
                fn()

    def run(self) -> int:
        require_tty()
        with self:
            self.app.run()
        for fn in self.after:
            fn()
        for line in self.pipeline.status().errors:
            print(f"llmtop: warning: {line}", file=sys.stderr, flush=True)
        return self.exit_code()


def require_tty() -> None:
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise LlmtopError(NOT_A_TTY)


def make_app(provider: SnapshotProvider, refresh: float, title: str) -> LlmtopApp:
    return LlmtopApp(provider, refresh_hz=refresh, title=title)


def window_title(src: SourceInfo | None, what: str) -> str:
    if src is None:
        return f"llmtop · {what}"
    parts = [p for p in (src.model, src.backend, src.device) if p]
    return "llmtop · " + " · ".join([what, *parts])


__all__ = ["NOT_A_TTY", "TuiSession", "make_app", "require_tty", "window_title"]
