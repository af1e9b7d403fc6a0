"""A note above the kernel table: what the source cannot fill, or what it is doing before its first event.

A server's Prometheus /metrics carries request-level numbers only; rather than three empty panes the
screen says what is missing and how to get it (the op-level sources: `llmtop run -- …`, or the agent).
Before the first event (a user's script importing torch and loading its model under `llmtop run`, an
agent not yet connected) the same place says how long the wait has lasted and what the source is doing,
so the empty panes below it are not mistaken for a hang.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text

from llmtop.tui.panes.base import _TextBar

HOW = ("for op-level numbers run the server under `llmtop run -- vllm serve MODEL --enforce-eager` "
       "(any Python server: `llmtop run -- python server.py`), or start the agent in it "
       "(llmtop.agent.start(\"127.0.0.1:7070\")) and `llmtop attach llmtop://127.0.0.1:7070`")


def note_text(missing: Sequence[str]) -> str:
    """The line's text: what the source cannot provide, then how to get it."""
    what = ", ".join(missing) if missing else "kernels, layers, attention scaling"
    return f"/metrics has no {what}: {HOW}"


def waiting_text(seconds: float, activity: str) -> str:
    """The waiting note's two lines: how long, then what the source says it is doing."""
    what = activity or "the source has not said what it is doing"
    return f"waiting for the first events · {seconds:.0f} s\n{what}"


class SourceNote(_TextBar):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"note--label"}

    def show(self, missing: Sequence[str]) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("ⓘ ", self.cs("note--label"))
        t.append(note_text(missing))
        self.show_text(t)

    def show_waiting(self, seconds: float, activity: str) -> None:
        first, _, second = waiting_text(seconds, activity).partition("\n")
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("⏳ ", self.cs("note--label"))
        t.append(first + "\n" + second)
        self.show_text(t)
