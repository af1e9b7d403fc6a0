"""The views a snapshot can take, defined once for the aggregator, the CLI flags and the TUI keys.

The first entry of each is the TUI's starting view; `w`, `g` and `s` cycle through them in this order.
"""

from __future__ import annotations

from llmtop.errors import LlmtopError

MODES = ("window", "cumulative")  # statistics over the last --window seconds, or over everything
GROUPS = ("kernel", "op_class", "layer")  # what one kernel-table row is
SORTS = ("total", "count", "mean", "p95", "max", "name")  # kernel-table order


def check_view(mode: str, group: str, sort: str) -> None:
    """LlmtopError naming the choices when a view is unknown."""
    for what, value, choices in (("mode", mode, MODES), ("group", group, GROUPS), ("sort key", sort, SORTS)):
        if value not in choices:
            raise LlmtopError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")


__all__ = ["GROUPS", "MODES", "SORTS", "check_view"]
