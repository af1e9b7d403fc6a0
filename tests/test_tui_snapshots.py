"""Visual regression tests: SVG snapshots of each pane and of the whole screen (pytest-textual-snapshot).

Every snapshot is drawn from fixed input, so it depends only on that input and the drawing code:

* `trace`: the SGLang Qwen3-8B decode Kineto trace in tests/fixtures (36 layers, real kernel names),
  folded by `load_into`, the plumbing of `llmtop report`. It holds a single decode step, so the token
  plot and the attention fit stay empty there;
* `loop`: a small decode loop generated below with integer arithmetic only (no RNG, no clock), which
  fills the token-rate plot and the attention fit.

Nothing time-dependent reaches the screen: process/GPU counters are fixed dicts (no collector runs),
the aggregator's wall clock is a constant, and the app's refresh timer is far too slow to tick during
a test (each frame is shown by `refresh_now` / the panes' own `show`). No GPU or Vulkan driver is used.

After an intended visual change, regenerate and review (failures also write snapshot_report.html):
    .venv/bin/python -m pytest -p no:cacheprovider tests/test_tui_snapshots.py --snapshot-update
The SVGs live in tests/__snapshots__/test_tui_snapshots/.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest
from fixture_paths import MI300X_SGLANG
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widget import Widget

from llmtop.collectors.replay import load_into
from llmtop.events import DECODE, KERNEL_DTYPE, NO_LAYER, PREFILL, STEP_DTYPE, EventBatch, SourceInfo
from llmtop.kernels.base import KernelRecorder
from llmtop.stats.aggregator import Aggregator
from llmtop.tui import view
from llmtop.tui.app import LlmtopApp
from llmtop.tui.panes import (
    AttentionPane,
    DeviceStrip,
    ErrorBar,
    HeaderBar,
    KernelTable,
    LayerPane,
    TokenPane,
)
from llmtop.tui.provider import AggregatorProvider, Counters, ProviderStatus

# The snap_compare fixture comes from the plugin (the `dev` extra); without it these tests skip.
pytest.importorskip("pytest_textual_snapshot", reason="pip install pytest-textual-snapshot (the dev extra)")

WINDOW_S = 3600.0  # nothing ages out of the window
CPU_ONLY: Counters = {
    "process": {"cpu_pct": 97.0, "rss_bytes": 3.2e8, "threads": 7.0},
    "gpu_absent": "no NVIDIA GPU found",
}
WITH_GPU: Counters = {
    "process": {"cpu_pct": 12.5, "rss_bytes": 2.1e9, "threads": 23.0},
    "gpu": {"util_pct": 87.0, "mem_used_bytes": 61.5 * 2**30, "mem_total_bytes": 80 * 2**30,
            "power_w": 412.0, "sm_clock_mhz": 1755.0, "temp_c": 64.0},
}

# -- fixed input --------------------------------------------------------------------------------------
LOOP_LAYER = [  # (kernel, µs per decode token); attention is computed from the context
    ("rmsnorm:attn_norm", 40), ("matmul:q_proj", 180), ("matmul:k_proj", 60), ("matmul:v_proj", 60),
    ("rope", 25), ("memcpy:kv_write", 15), ("attention", 0), ("matmul:o_proj", 170),
    ("add:attn_residual", 20), ("rmsnorm:ffn_norm", 40), ("matmul:gate_proj", 420),
    ("matmul:up_proj", 420), ("silu_mul", 35), ("matmul:down_proj", 430), ("add:ffn_residual", 20),
]
LOOP_EDGES = [("embedding", NO_LAYER, 30), ("rmsnorm:final_norm", NO_LAYER, 40),
              ("matmul:lm_head", NO_LAYER, 900), ("sampling", NO_LAYER, 60)]


def decode_loop_events(n_layers: int = 4, prompt: int = 48, new: int = 600) -> tuple[SourceInfo, EventBatch]:
    """One prefill and `new` decode steps of a small model, every number from integer arithmetic.

    Attention grows linearly with the context (plus a bounded wobble), layer 2's down_proj is 3x slow
    (an outlier), and host time between kernels varies, so the token rate moves over the ~9 s run.
    """
    rec = KernelRecorder()
    kernels: list[tuple] = []
    steps: list[tuple] = []
    t = 1_000_000_000_000
    wobble = 12345
    for step in range(new + 1):
        phase, ntok = (PREFILL, prompt) if step == 0 else (DECODE, 1)
        ctx = prompt + step
        t0 = t
        seq = LOOP_EDGES[:1] + [(name, li, us) for li in range(n_layers) for name, us in LOOP_LAYER]
        seq += LOOP_EDGES[1:]
        for name, layer, us in seq:
            wobble = (wobble * 1103515245 + 12345) % 2**31  # a fixed LCG: deterministic jitter
            if name == "attention":
                name = "attention:decode" if phase == DECODE else "attention:prefill"
                dur = 120_000 + 350 * ctx + wobble % 15_000
            else:
                dur = us * 1000 * (ntok if phase == PREFILL else 1) + wobble % 4_000
            if layer == 2 and name == "matmul:down_proj":
                dur *= 3
            nid, oc = rec.ids[name]
            mnk = (ntok, 576, 1536) if name.startswith("matmul") else (0, 0, 0)
            kernels.append((nid, oc, phase, layer, 0, step, 1, ctx, t, dur, *mnk))
            t += dur + 2_000 + wobble % 6_000
        wall = t - t0 + 1_500_000 + (step * 7919) % 4_000_000
        kern = sum(k[9] for k in kernels[-len(seq):])
        steps.append((phase, 0, step, ntok, 1, ctx, t0, wall, kern, 0, 0))
        t = t0 + wall + 50_000
    source = SourceInfo(kind="replay", backend="cpu", device="test cpu (4 threads)", model="loop-4L",
                        dtype="f32", timing="perf_counter_ns", max_context=8192, n_layers=n_layers)
    batch = EventBatch(kernels=np.array(kernels, KERNEL_DTYPE), steps=np.array(steps, STEP_DTYPE),
                       names_base=0, new_names=list(rec.names.names))
    return source, batch


def aggregator(which: str) -> Aggregator:
    agg = Aggregator(window_s=WINDOW_S, clock=lambda: 0.0)
    if which == "trace":
        load_into(MI300X_SGLANG, agg)
    else:
        source, batch = decode_loop_events()
        agg.set_source(source)
        agg.ingest(batch)
    return agg


@cache
def snapshot(which: str) -> Any:
    """The default view of the app (window, by kernel, sort total); built once per input."""
    return aggregator(which).snapshot(mode="window", group="kernel", sort="total", filter="")


# -- a bare app around one pane, styled by llmtop.tcss ---------------------------------------------------
class PaneApp(App[None]):
    CSS_PATH = LlmtopApp.CSS_PATH
    TITLE = "llmtop"

    def __init__(self, *widgets: Widget) -> None:
        super().__init__()
        self._widgets = widgets

    def compose(self) -> ComposeResult:
        yield from self._widgets


def filled(feed: Callable[[App[Any]], None]) -> Callable[[Pilot[Any]], Any]:
    """A run_before that feeds the panes once the app has its size, then lets the frame settle."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        feed(pilot.app)
        await pilot.pause()

    return run_before


INPUTS = ["trace", "loop"]


# The three plot panes: (pane class, widget id as in the app, border title), each from the same snapshot.
PLOT_PANES = {
    "token": (TokenPane, "tokens", "Token rate"),
    "layer": (LayerPane, "layers", "Per layer · ms / decode step"),
    "attention": (AttentionPane, "attention", "Attention growth"),
}


@pytest.mark.parametrize("which", INPUTS)
@pytest.mark.parametrize("kind", sorted(PLOT_PANES))
def test_plot_pane(snap_compare: Any, kind: str, which: str) -> None:
    cls, widget_id, title = PLOT_PANES[kind]
    pane = cls(id=widget_id)
    pane.border_title = title
    assert snap_compare(PaneApp(pane), terminal_size=(60, 12),
                        run_before=filled(lambda app: pane.set_snapshot(snapshot(which))))


@pytest.mark.parametrize("which", INPUTS)
def test_kernel_table(snap_compare: Any, which: str) -> None:
    table = KernelTable(id="kernels")
    table.border_title = "Top kernels · by kernel · sort total · window"

    def feed(app: App[Any]) -> None:
        table.focus()
        table.show(view.rows(snapshot(which), "kernels"), "total")

    assert snap_compare(PaneApp(table), terminal_size=(120, 24), run_before=filled(feed))


@pytest.mark.parametrize(
    ("counters", "status"),
    [
        (CPU_ONLY, {"kind": "import", "state": "running"}),
        (WITH_GPU, {"kind": "replay", "state": "finished", "speed": 2.0, "progress": 1.0,
                    "errors": {"engine": "RuntimeError: source went away"},
                    "behind": "falling behind: 120 events dropped in 1.0s"}),
    ],
    ids=["cpu-only", "gpu-errors"],
)
def test_header_and_strip(snap_compare: Any, counters: Counters, status: ProviderStatus) -> None:
    header, strip, errors = HeaderBar(id="header"), DeviceStrip(id="strip"), ErrorBar(id="errors")

    def feed(app: App[Any]) -> None:
        header.show(snapshot("trace"), status, mode="window", paused=False)
        strip.show(counters, status)
        errors.show(dict(status.get("errors") or {}))

    assert snap_compare(PaneApp(header, strip, errors), terminal_size=(120, 5), run_before=filled(feed))


def provider(which: str) -> AggregatorProvider:
    return AggregatorProvider(aggregator(which), kind="replay", counters=CPU_ONLY)


async def refreshed(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    pilot.app.refresh_now()  # type: ignore[attr-defined]
    await pilot.pause()


@pytest.mark.parametrize("which", INPUTS)
def test_whole_screen(snap_compare: Any, which: str) -> None:
    app = LlmtopApp(provider(which), refresh_hz=0.01)  # no timer tick during the test
    assert snap_compare(app, terminal_size=(120, 40), run_before=refreshed)


def test_whole_screen_compact(snap_compare: Any) -> None:
    """80×24: the compact layout (shorter top row, panes without padding, fewer table columns)."""
    app = LlmtopApp(provider("trace"), refresh_hz=0.01)
    assert snap_compare(app, terminal_size=(80, 24), run_before=refreshed)
