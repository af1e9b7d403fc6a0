"""The panes of the llmtop screen, one per module on a shared base (`panes.base`).

Each pane keeps the latest data handed to it and redraws only what changed; every colour comes from
component classes styled in llmtop.tcss. Import the panes from here.
"""

from llmtop.tui.panes.attention import AttentionPane
from llmtop.tui.panes.base import OP_COMPONENTS, flow, join_lines, op_style
from llmtop.tui.panes.device import DeviceStrip
from llmtop.tui.panes.error import ErrorBar
from llmtop.tui.panes.header import HeaderBar
from llmtop.tui.panes.kernels import KERNEL_COLUMNS, SORT_COLUMN, KernelTable, row_key
from llmtop.tui.panes.layers import LayerPane
from llmtop.tui.panes.npu import NpuPane
from llmtop.tui.panes.servers import ServersPane
from llmtop.tui.panes.source_note import SourceNote
from llmtop.tui.panes.token import TokenPane

__all__ = [
    "KERNEL_COLUMNS",
    "OP_COMPONENTS",
    "SORT_COLUMN",
    "AttentionPane",
    "DeviceStrip",
    "ErrorBar",
    "HeaderBar",
    "KernelTable",
    "LayerPane",
    "NpuPane",
    "ServersPane",
    "SourceNote",
    "TokenPane",
    "flow",
    "join_lines",
    "op_style",
    "row_key",
]
