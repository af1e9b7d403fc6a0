"""Every Textual message the TUI's own widgets post (the app and screens handle them).

Messages are defined here, not inside the widgets, so panes, screens and the app share them without
importing each other. Each keeps the handler name it had as a nested class (`namespace`): a handler
such as `on_kernel_table_row_selected`, or `@on(KernelTable.RowSelected)`, keeps working.

A message that can be posted faster than it is handled (key repeat, a burst of clicks) coalesces
with `can_replace`, as toolong does: a newer one of the same kind from the same sender replaces the
one still waiting in the queue, so a backlog never replays stale events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from llmtop.tui.panes.kernels import KernelTable


class RowSelected(Message, namespace="kernel_table"):
    """Enter (or a click on the selected row) on a row of the top-kernels table.

    Also reachable as `KernelTable.RowSelected`; handled by `on_kernel_table_row_selected`.
    """

    def __init__(self, table: KernelTable, key: str) -> None:
        super().__init__()
        self.table = table
        self.key = key

    @property
    def control(self) -> KernelTable:
        return self.table

    def can_replace(self, message: Message) -> bool:
        # Only the latest selection matters: a held enter key opens one detail screen, not a queue of them.
        return isinstance(message, RowSelected) and message.table is self.table


__all__ = ["RowSelected"]
