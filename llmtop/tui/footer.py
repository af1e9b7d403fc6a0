"""The footer: Textual's key bar, plus a replay's position at its right end (issue 17: seek shown in the
footer, beside the `[` `]` `home` keys that move it).

The position line comes from the provider's status (`position_s`, `end_s` once the replay has reached
its end, `state`); `replay_position_text` is the one place it is worded. On a replay the command-palette
hint makes room for it (ctrl+p still opens the palette, and the help screen lists it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.app import ComposeResult
from textual.widgets import Footer, Static


def replay_position_text(status: Mapping[str, Any]) -> str:
    """"▶ 12.3 s", "⏸ 12.3 / 45.6 s", "■ end 45.6 s"; "" when the source has no position (not a replay)."""
    pos = status.get("position_s")
    if status.get("kind") != "replay" or pos is None:
        return ""
    end = status.get("end_s")
    state = status.get("state")
    if status.get("at_end") and end is not None:
        return f"■ end {float(end):.1f} s"
    mark = "⏸" if state == "paused" else ("■" if state == "finished" else "▶")
    return f"{mark} {float(pos):.1f}" + (f" / {float(end):.1f} s" if end is not None else " s")


class LlmtopFooter(Footer):
    """Footer keys, then the replay position (docked right) while there is one."""

    def __init__(self) -> None:
        super().__init__()
        self.position = ""

    def compose(self) -> ComposeResult:
        yield from super().compose()
        # Composed again whenever the keys change (Textual recomposes the footer): the label goes with it.
        yield Static(self.position, id="footer-position", classes="" if self.position else "-empty")

    def show_position(self, text: str) -> None:
        if text == self.position:
            return
        self.position = text
        self.show_command_palette = not text  # the palette hint gives its place to the position
        for label in self.query("#footer-position").results(Static):
            label.update(text)
            label.set_class(not text, "-empty")
