"""The one-line device strip: the profiled process (CPU, RSS, threads) and the GPU or WebGPU adapter."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text

from llmtop.tui import view
from llmtop.tui.panes.base import _TextBar
from llmtop.tui.provider import Counters, ProviderStatus


class DeviceStrip(_TextBar):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"strip--label", "strip--warn"}

    def show(self, counters: Counters, status: ProviderStatus) -> None:
        label = self.cs("strip--label")
        warn = self.cs("strip--warn")
        errors = status.get("errors") or {}
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("proc ", label)
        proc = counters.get("process") or {}
        perr = counters.get("process_error") or errors.get("process")
        if perr:
            t.append(f"✖ {perr}", warn)
        elif proc:
            t.append(
                f"CPU {view.fmt_rate(proc.get('cpu_pct'))}%  RSS {view.fmt_bytes(proc.get('rss_bytes'))}  "
            )
            t.append(f"{view.fmt_count(proc.get('threads'))} thr")
            if (proc.get("processes") or 1) > 1:  # `llmtop run`: COMMAND and its children, summed
                t.append(f"  {view.fmt_count(proc.get('processes'))} processes")
        else:
            t.append("–")
        t.append("  │  GPU ", label)
        gpu = counters.get("gpu") or {}
        gerr = errors.get("gpu")
        if gerr:
            t.append(f"✖ {gerr}", warn)
        elif gpu:
            used, total = gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes")
            t.append(
                f"{view.fmt_rate(gpu.get('util_pct'))}%  mem {view.fmt_bytes(used)}/{view.fmt_bytes(total)}  "
            )
            t.append(
                f"{view.fmt_rate(gpu.get('power_w'))} W  {view.fmt_count(gpu.get('sm_clock_mhz'))} MHz  "
            )
            t.append(f"{view.fmt_rate(gpu.get('temp_c'))}°C")
        elif counters.get("adapter"):
            t.append(view.adapter_line(counters["adapter"]))
        else:
            t.append(f"absent: {counters.get('gpu_absent') or 'no GPU collector'}", label)
        self.show_text(t)
