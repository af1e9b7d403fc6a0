"""One line in place of the kernel, layer and attention panes when the source cannot fill them.

A server's Prometheus /metrics carries request-level numbers only; rather than three empty panes the
screen says what is missing and how to get it (the op-level sources: `llmtop run -- …`, or the agent).
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


class SourceNote(_TextBar):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"note--label"}

    def show(self, missing: Sequence[str]) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("ⓘ ", self.cs("note--label"))
        t.append(note_text(missing))
        self.show_text(t)
