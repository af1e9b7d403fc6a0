"""The collector-error bar: one line per failing collector, hidden (CSS class) while there are none."""

from __future__ import annotations

from collections.abc import Mapping

from rich.text import Text
from textual.widgets import Static

from llmtop.tui.panes.base import join_lines


class ErrorBar(Static):
    """Collector errors; hidden (CSS class) while there are none."""

    def show(self, errors: Mapping[str, str]) -> None:
        if self.has_class("-active") != bool(errors):
            self.set_class(bool(errors), "-active")
        if errors:
            self.update(
                join_lines(Text(f"✖ {k}: {v}", no_wrap=True, overflow="ellipsis") for k, v in errors.items())
            )
