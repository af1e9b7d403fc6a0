"""The Textual app: pulls one Snapshot per refresh tick from its provider and swaps it into the panes.

Like nvitop, the display never handles per-event messages: collectors and the aggregator run in
their own threads, and the UI thread only reads a finished snapshot at a fixed rate (--refresh), so
the cost of the UI is bounded by the frame rate, not by the event rate.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Input, Static

from llmtop.errors import LlmtopError, UsageError
from llmtop.stats.views import GROUPS, MODES, SORTS
from llmtop.tui import view
from llmtop.tui.footer import LlmtopFooter, replay_position_text
from llmtop.tui.panes import (
    AttentionPane,
    DeviceStrip,
    ErrorBar,
    HeaderBar,
    KernelTable,
    LayerPane,
    NpuPane,
    ServersPane,
    SourceNote,
    TokenPane,
    row_key,
)
from llmtop.tui.panes.npu import npu_section
from llmtop.tui.provider import Counters, ProviderStatus, SnapshotProvider
from llmtop.tui.screens import FilterInput, HelpScreen, KernelDetailScreen

# Below this the panes cannot show anything useful; the app says so instead of drawing garbage.
MIN_WIDTH, MIN_HEIGHT = 60, 16
# Below this (but above the minimum) the layout switches to compact: shorter top row, 1-line header.
COMPACT_WIDTH, COMPACT_HEIGHT = 110, 32
MAX_REFRESH_HZ = 60.0
# Young-generation allocation budget while the app runs (CPython's default is 700); see on_mount.
GC_GEN0_THRESHOLD = 20_000
GROUP_LABEL = {"kernel": "by kernel", "op_class": "by op class", "layer": "by layer"}


@dataclass(slots=True)
class FrameTiming:
    """Where one refresh spent its time (ms): asking for the snapshot vs updating the panes."""

    snapshot_ms: float
    update_ms: float

    @property
    def total_ms(self) -> float:
        return self.snapshot_ms + self.update_ms


def _guarded(fn: Any, default: Any) -> tuple[Any, str | None]:
    """(fn(), None), or (default, one line) if it raises: counters/status are decoration, shown not raised."""
    try:
        return fn(), None
    except Exception as e:
        return default, f"{getattr(fn, '__name__', 'provider')} failed: {type(e).__name__}: {e}"


@dataclass(slots=True, frozen=True)
class _Taken:
    """Everything one refresh shows, gathered off the UI thread."""

    snapshot: Any  # None when the provider failed (snapshot_error says why)
    snapshot_error: str | None
    counters: Counters
    status: ProviderStatus
    error: str | None  # counters or status failed: shown, the frame still goes up
    snapshot_ms: float
    version: Any = None  # the provider's version when this was taken (None: it has none)


class LlmtopApp(App[None]):
    CSS_PATH: ClassVar[list[str | Path]] = [Path(__file__).with_name("llmtop.tcss")]
    TITLE = "llmtop"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        # help and theme early: a narrow terminal crops the footer's end (issue 17: 80x24 keeps them)
        Binding("question_mark", "help", "help"),
        Binding("t", "toggle_theme", "theme"),
        Binding("left_square_bracket", "seek(-10)", "-10s"),  # replay only (check_action)
        Binding("right_square_bracket", "seek(10)", "+10s"),
        Binding("home", "restart", "restart", priority=True),  # over the table's home (first row)
        Binding("space", "toggle_pause", "pause"),
        Binding("s", "cycle_sort", "sort"),
        Binding("g", "cycle_group", "group"),
        Binding("w", "toggle_window", "window"),
        Binding("r", "reset", "reset"),
        Binding("slash", "filter", "filter"),
        Binding("enter", "detail", "detail"),
        Binding("escape", "all_servers", "all targets", show=False),
        Binding("plus,equals_sign", "speed(2.0)", "faster", show=False),
        Binding("minus", "speed(0.5)", "slower", show=False),
    ]

    def __init__(self, provider: SnapshotProvider, refresh_hz: float = 4.0, title: str | None = None) -> None:
        super().__init__()
        if not (0 < refresh_hz <= MAX_REFRESH_HZ):
            raise UsageError(f"--refresh must be in (0, {MAX_REFRESH_HZ:g}] Hz, got {refresh_hz:g}")
        self.provider = provider
        self.resets = 0  # `r` presses: the cumulative scope is then "since reset"
        self.refresh_hz = refresh_hz
        if title:
            self.title = title
        self.mode = MODES[0]
        self.group = GROUPS[0]
        self.sort_key = SORTS[0]
        self.filter_text = ""
        self.paused = False
        self.snapshot: Any = None
        self.counters: Counters = {}
        self.status: ProviderStatus = {}
        self.frames: deque[FrameTiming] = deque(maxlen=256)  # recent refresh costs, for benchmarks
        self._error: str | None = None
        self._taking = False  # a snapshot worker is running
        self._epoch = 0  # bumped by every synchronous refresh; older worker snapshots are dropped
        self._gc_frozen = False
        self._gc_threshold: tuple[int, ...] = gc.get_threshold()
        self.server_focus: str | None = None  # the attach target drilled into (Servers pane), None: all
        self._drawn_version: Any = None  # the provider's version of the frame on screen
        self._servers_shown = False
        self._metrics_only = False
        self._waiting = True  # no event has arrived yet: the note says how long and what the source is doing
        self._started = time.monotonic()

    # -- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield DeviceStrip(id="strip")
        yield ErrorBar(id="errors")
        with Horizontal(id="top"):
            yield TokenPane(id="tokens")
            yield LayerPane(id="layers")
            yield AttentionPane(id="attention")
        yield ServersPane(id="servers")
        yield NpuPane(id="npu")  # XRT calls (pyxrt); shown only when the source has them
        yield SourceNote(id="source-note")
        yield KernelTable(id="kernels")
        yield FilterInput(placeholder="filter rows (substring) · enter keeps · esc clears", id="filter")
        yield Static(id="too-small")
        yield LlmtopFooter()

    def on_mount(self) -> None:
        # Looked up once: refreshes touch these every frame, and keep working during shutdown.
        self.tokens_pane = self.query_one(TokenPane)
        self.layers_pane = self.query_one(LayerPane)
        self.attention_pane = self.query_one(AttentionPane)
        self.table = self.query_one(KernelTable)
        self.servers_pane = self.query_one(ServersPane)
        self.source_note = self.query_one(SourceNote)
        self.header_bar = self.query_one(HeaderBar)
        self.strip = self.query_one(DeviceStrip)
        self.error_bar = self.query_one(ErrorBar)
        self.filter_box = self.query_one(FilterInput)
        self.footer_bar = self.query_one(LlmtopFooter)
        self._set_pane_titles()
        self.npu_pane = self.query_one(NpuPane)
        self.npu_pane.border_title = "NPU · XRT calls: BO write / NPU run / BO read"
        self._apply_size()
        self._set_kernel_title()
        self.table.focus()
        self.refresh_now()
        # Everything alive now (Textual's DOM, CSS, imported modules) lives as long as the app: move it
        # out of the cyclic GC's reach, so the full collections that per-frame garbage eventually
        # triggers do not walk it (a 20-100 ms pause in the middle of a frame otherwise). Garbage already
        # unreachable is collected first, and on_unmount gives the frozen objects back to the collector.
        gc.collect()
        gc.freeze()
        self._gc_frozen = True
        # A frame allocates tens of thousands of short-lived containers (strips, segments, report dicts):
        # with the default gen0 threshold (700) that is dozens of young collections plus several gen1
        # ones per frame, each re-walking the survivors. A larger gen0 budget collects the same garbage
        # in far fewer passes (bench_tui: GC time roughly halved, fewer frame-time spikes).
        self._gc_threshold = gc.get_threshold()
        gc.set_threshold(GC_GEN0_THRESHOLD, *self._gc_threshold[1:])
        self.set_interval(1.0 / self.refresh_hz, self._tick)

    def on_unmount(self) -> None:
        if self._gc_frozen:
            gc.unfreeze()
            gc.set_threshold(*self._gc_threshold)
            self._gc_frozen = False

    def on_resize(self, event: events.Resize) -> None:
        self._apply_size(event.size.width, event.size.height)
        if self.snapshot is not None:
            # The name column's width follows the terminal: re-apply the current snapshot at the new size.
            self.call_after_refresh(self._show_kernels)

    def _apply_size(self, w: int | None = None, h: int | None = None) -> None:
        if w is None or h is None:
            w, h = self.size
        screen = self.screen if not self.screen_stack else self.screen_stack[0]
        too_small = w < MIN_WIDTH or h < MIN_HEIGHT
        screen.set_class(too_small, "-too-small")
        screen.set_class(w < COMPACT_WIDTH or h < COMPACT_HEIGHT, "-compact")
        for footer in screen.query(LlmtopFooter):  # less space between keys: more of them fit
            footer.compact = w < COMPACT_WIDTH
        if too_small:
            self.query_one("#too-small", Static).update(
                f"Terminal too small: {w}×{h}.\nllmtop needs at least {MIN_WIDTH}×{MIN_HEIGHT} "
                "(80×24 or larger recommended).\nResize the window, or press q to quit."
            )

    # -- refresh loop ---------------------------------------------------------------------
    def _tick(self) -> None:
        if self._waiting and not self.paused:
            # Nothing has been folded, so no new snapshot comes: the wait's seconds and the source's
            # account of itself still move on every tick.
            self.status = self._safe(self.provider.status, {})
            self._show_waiting()
        if self.paused:
            # Frozen panes, but the header keeps saying what the pipeline is doing (errors, behind).
            self.status = self._safe(self.provider.status, {})
            self._show_header()
            return
        if self._taking:
            return  # the previous snapshot is still being built: skip a tick rather than queue frames
        version = self._version()
        if version is not None and version == self._drawn_version:
            return  # nothing new since the frame on screen (a /metrics-only source between scrapes)
        self._taking = True
        self._snapshot_worker(self._view(), self._epoch)

    def _view(self) -> tuple[str, str, str, str]:
        return (self.mode, self.group, self.sort_key, self.filter_text)

    @work(thread=True, group="snapshot", exit_on_error=False)
    def _snapshot_worker(self, view: tuple[str, str, str, str], epoch: int) -> None:
        """Build the snapshot off the UI thread (statistics, counters, status); the UI only swaps it in."""
        taken = self._take(view)
        try:
            self.call_from_thread(self._apply_taken, epoch, taken)
        except RuntimeError:  # the app stopped while the snapshot was being built
            self._taking = False

    def _apply_taken(self, epoch: int, taken: _Taken) -> None:
        self._taking = False
        # Every view change (sort, group, filter, window) and reset refreshes at once on this thread and
        # starts a new epoch: a snapshot begun before it is stale (after a reset it would bring the old
        # numbers back), and so is one that lands after a pause.
        if epoch == self._epoch and not self.paused:
            self._apply(taken)

    def refresh_now(self) -> FrameTiming | None:
        """Take one snapshot on this thread and show it (key presses, tests). Returns where the time went."""
        self._epoch += 1  # whatever a worker is building now predates this
        return self._apply(self._take(self._view()))

    def _version(self) -> Any:
        fn = getattr(self.provider, "version", None)
        return _guarded(fn, None)[0] if fn is not None else None

    def _take(self, view: tuple[str, str, str, str]) -> _Taken:
        t0 = time.perf_counter()
        version = self._version()  # before the numbers: anything folded meanwhile makes the next tick draw
        try:
            snap, snap_error = self.provider.snapshot(*view), None
        except Exception as e:  # a failing source must not kill the UI; say why and keep the last frame
            snap, snap_error = None, f"snapshot failed: {type(e).__name__}: {e}"
        counters, e1 = _guarded(self.provider.counters, {})
        status, e2 = _guarded(self.provider.status, {})
        return _Taken(snap, snap_error, counters, status, e1 or e2, (time.perf_counter() - t0) * 1e3, version)

    def _apply(self, taken: _Taken) -> FrameTiming | None:
        if not self.table.is_attached:
            return None  # shutting down: the widgets are being torn down
        t1 = time.perf_counter()
        self.counters, self.status = taken.counters, taken.status
        if taken.snapshot_error is not None:
            self._error = taken.snapshot_error
            self._show_header()
            return None
        self._error = taken.error
        self.snapshot = taken.snapshot
        self._drawn_version = taken.version
        self._show_all()
        timing = FrameTiming(taken.snapshot_ms, (time.perf_counter() - t1) * 1e3)
        self.frames.append(timing)
        if self._gc_frozen:
            # Collect this frame's cyclic garbage (Textual's Strips cache themselves: every painted line
            # leaves a cycle) once the frame is on screen, in the idle time before the next tick, instead
            # of letting an automatic collection land in the middle of a later frame.
            self.call_after_refresh(self._collect_garbage)
        return timing

    def _collect_garbage(self) -> None:
        # Young generations every frame; the old one (where cycles that outlived a frame end up, e.g.
        # strips a pane kept until its next repaint) as often as CPython's own policy would (every
        # threshold[2] young collections), so it stays bounded now that automatic collections are rare.
        gc.collect(2 if gc.get_count()[2] >= gc.get_threshold()[2] else 1)

    def _safe(self, fn: Any, default: Any) -> Any:
        value, error = _guarded(fn, default)
        if error is not None:
            self._error = error
        return value

    def _show_all(self) -> None:
        snap = self.snapshot
        tokens_changed = self._show_servers(snap)
        self._show_waiting()
        # A /metrics-only source hides the op-level panes (nothing to show): they are not refilled.
        for pane in (self.tokens_pane,) if self._metrics_only else (self.tokens_pane, self.layers_pane,
                                                                       self.attention_pane):
            if pane is not self.tokens_pane or tokens_changed:
                pane.set_snapshot(snap)
        self._show_npu(snap)
        if not self._metrics_only:
            self._show_kernels()
        self._show_header()
        if isinstance(self.screen, KernelDetailScreen):
            self.screen.reload()

    def _show_waiting(self) -> None:
        """The waiting note until the first event, step or server row (then never again: a reset's empty
        panes are not a wait)."""
        if not self._waiting:
            return
        snap = self.snapshot
        tok = view.section(snap, "tokens")
        arrived = (view.num(view.report(snap).get("events")) or 0) > 0 or any(
            (view.num(tok.get(k)) or 0) > 0 for k in ("generated", "prefills", "step_index")) or \
            self._servers_shown or self.status.get("state") == "finished"
        screen = self.screen_stack[0] if self.screen_stack else self.screen
        if arrived:
            self._waiting = False
            screen.set_class(False, "-waiting")
            return
        screen.set_class(True, "-waiting")
        if not self._metrics_only:
            waited = time.monotonic() - self._started
            self.source_note.show_waiting(waited, str(self.status.get("prompt") or ""))

    def _show_npu(self, snap: Any) -> None:
        """The NPU pane, only while the source has XRT calls (its `npu` report section)."""
        shown = npu_section(snap) is not None
        self.npu_pane.set_class(shown, "-shown")
        if shown:
            self.npu_pane.set_snapshot(snap)

    def _show_servers(self, snap: Any) -> bool:
        """The Servers pane when the source has targets with server numbers, and, for a /metrics-only
        source, the token pane filled from them and one line in place of the op-level panes. False when
        the token pane shows server numbers that did not change (it need not be redrawn)."""
        rows = self.counters.get("servers") or []
        missing = view.source_missing(snap)
        metrics_only = bool(rows) and "kernels" in missing
        shown = bool(rows) and (metrics_only or len(rows) > 1 or rows[0].get("kind") != "agent")
        screen = self.screen_stack[0] if self.screen_stack else self.screen
        if shown != self._servers_shown or metrics_only != self._metrics_only:
            self._servers_shown, self._metrics_only = shown, metrics_only
            screen.set_class(shown, "-servers")
            screen.set_class(metrics_only, "-metrics-only")
        if metrics_only and self.focused in (None, self.table) and screen is self.screen:
            # The kernel table is hidden: keys go to the servers. After the refresh, since the pane
            # only becomes focusable once the `-servers` class has been styled (set_focus skips it before).
            self.call_after_refresh(self._focus_servers_pane)
        if shown:
            self.servers_pane.show(rows)
        if metrics_only:
            self.source_note.show(missing)
        tok = view.section(snap, "tokens")
        if shown and (metrics_only or not (view.num(tok.get("generated")) or 0)):
            pick = next((r for r in rows if r.get("label") == self.server_focus), None) \
                if self.server_focus else rows[-1]
            changed = self.tokens_pane.set_server(pick, self.counters.get("servers_rate"))
            title = "Token rate · " + (
                str(pick.get("label")) if pick is not None and pick.get("kind") != "total" else "all targets")
            self.tokens_pane.set_title([title])
            return changed
        if self.tokens_pane.server is not None:
            self.tokens_pane.set_server(None)
            self._set_pane_titles()
        return True

    def _focus_servers_pane(self) -> None:
        if self._metrics_only and self.focused in (None, self.table) and self.screen is self.screen_stack[0]:
            self.screen.set_focus(self.servers_pane)

    @on(ServersPane.Drill)
    def _drill(self, event: ServersPane.Drill) -> None:
        self._focus_server(event.label)

    def action_all_servers(self) -> None:
        if self.server_focus is not None:
            self._focus_server(None)

    def _focus_server(self, label: str | None) -> None:
        """Show one target alone (its row, its rate and latencies in the token pane), or all again."""
        self.server_focus = label
        self.servers_pane.focus_label = label
        set_focus = getattr(self.provider, "set_server_focus", None)
        if set_focus is not None:
            set_focus(label)
        self._set_kernel_title()
        self.refresh_now()

    def _show_kernels(self) -> None:
        compare = getattr(self.provider, "compare", None)
        if compare is not None:  # `replay --against B`: each row's change against the baseline
            self.table.set_compare(compare(self.snapshot))
        self.table.show(view.rows(self.snapshot, "kernels"), self.sort_key)
        self._set_kernel_title()  # the window's length is known from the first snapshot on

    def _show_header(self) -> None:
        if not self.header_bar.is_attached:
            return
        self.header_bar.show(self.snapshot, self.status, mode=self.mode, paused=self.paused)
        self.footer_bar.show_position(replay_position_text(
            {**self.status, "state": "paused" if self.paused else self.status.get("state")}))
        self.strip.show(self.counters, self.status)
        errors = dict(self.status.get("errors") or {})
        if self._error:
            errors["ui"] = self._error
        self.error_bar.show(errors)

    def scope(self) -> str:
        """What the statistics cover, named on every pane title (issue 17: no unnamed scopes)."""
        if self.mode == "window":
            w = view.num(view.report(self.snapshot).get("window_s")) if self.snapshot is not None else None
            return f"last {w:g} s" if w else "window"
        return self.since()

    def since(self) -> str:
        """What cumulative numbers cover (attention growth, a kernel's shapes), whatever the view."""
        return "since reset" if self.resets else "since start"

    def _set_pane_titles(self) -> None:
        scope = self.scope()
        # attention growth spans context, so it is always since the start (stats/aggregator.py _freeze)
        since = self.since()
        titles = (
            (self.tokens_pane, [f"Token rate · {scope}", f"Tokens · {scope}", f"tok/s · {scope}"]),
            (self.layers_pane, [f"Per layer · ms / decode step · {scope}", f"Per layer · ms/step · {scope}",
                                f"Layer ms/step · {scope}", f"Layer ms · {scope}", f"Layer ms, {scope}"]),
            (self.attention_pane, [f"Attention growth · {since}", f"Attention · {since}", f"Attn · {since}"]),
        )
        for pane, variants in titles:
            if pane is self.tokens_pane and getattr(pane, "server", None) is not None:
                continue  # a server's rate: its own title (see _show_servers)
            pane.set_title(variants)

    def _set_kernel_title(self) -> None:
        self._set_pane_titles()
        parts = [
            "Top kernels",
            GROUP_LABEL[self.group],
            f"sort {self.sort_key}",
            self.scope(),
        ]
        if self.filter_text:
            parts.append(f"filter “{self.filter_text}”")
        alone = getattr(self.provider, "target_alone", None)
        if self.server_focus is not None and alone is not None and alone():
            parts.append(f"{self.server_focus} alone")  # every pane shows this target's events only
        title = " · ".join(parts)
        if self.table.border_title != title:
            self.table.border_title = title

    def _changed(self) -> None:
        """A view setting changed: re-query now (also while paused, so keys answer at once)."""
        self._set_kernel_title()
        self.refresh_now()

    # -- actions --------------------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            self.provider.pause()
        else:
            self.provider.resume()
            self.refresh_now()
        self._show_header()

    def action_cycle_sort(self) -> None:
        self.sort_key = SORTS[(SORTS.index(self.sort_key) + 1) % len(SORTS)]
        self._changed()

    def action_cycle_group(self) -> None:
        self.group = GROUPS[(GROUPS.index(self.group) + 1) % len(GROUPS)]
        self.table.clear_rows()  # different row identities: start the table afresh
        self._changed()

    def action_toggle_window(self) -> None:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        self._changed()

    def action_reset(self) -> None:
        self.resets += 1
        self.provider.reset()
        self.notify("statistics reset", timeout=2)
        self._changed()

    def action_filter(self) -> None:
        box = self.filter_box
        box.value = self.filter_text
        box.add_class("-active")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._changed()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        box = self.filter_box
        box.remove_class("-active")
        self.table.focus()
        self._changed()

    def action_detail(self) -> None:
        key = self.table.cursor_key()
        if key is not None:
            self._open_detail(key)

    @on(KernelTable.RowSelected, "#kernels")
    def _row_selected(self, event: KernelTable.RowSelected) -> None:
        self._open_detail(event.key)

    def _open_detail(self, name: str) -> None:
        if not isinstance(self.screen, KernelDetailScreen):
            self.push_screen(KernelDetailScreen(name, self.kernel_detail, self.scope, self.since))

    def kernel_detail(self, name: str) -> tuple[Mapping[str, Any] | None, Mapping[str, Any]]:
        """(detail from the current snapshot, the row's report entry) for one table row."""
        row = next((r for r in view.rows(self.snapshot, "kernels") if row_key(r) == name), {})
        detail = None
        fetch = getattr(self.snapshot, "kernel_detail", None)
        if fetch is not None:
            try:
                detail = fetch(name)
            except LlmtopError:
                detail = None  # the row left the window or the filter since the screen opened
        return detail, row

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"
        # Colours baked into rendered cells come from CSS component styles: re-read them after the
        # new stylesheet has been applied.
        self.call_after_refresh(self._restyle)

    def _restyle(self) -> None:
        for pane in (self.tokens_pane, self.layers_pane, self.attention_pane, self.servers_pane):
            pane.refresh()
        self.table.restyle()
        if self.snapshot is not None:
            self._show_kernels()
            self._show_header()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Seek keys exist only where the source can seek (a replay): elsewhere they leave the footer."""
        if action in ("seek", "restart"):
            return bool(getattr(self.provider, "can_seek", False))
        return True

    def action_seek(self, delta_s: float) -> None:
        self.provider.seek_by(float(delta_s))  # type: ignore[attr-defined]
        self.notify(f"seek {'+' if delta_s > 0 else '−'}{abs(float(delta_s)):g} s", timeout=1.5)
        self.refresh_now()

    def action_restart(self) -> None:
        self.provider.restart()  # type: ignore[attr-defined]
        self.notify("replay restarted", timeout=1.5)
        self.refresh_now()

    def action_speed(self, factor: float) -> None:
        if self.status.get("kind") != "replay":
            self.notify("speed keys only apply to replay", timeout=2)
            return
        current = float(self.status.get("speed") or 1.0)
        speed = self.provider.set_speed(min(64.0, max(1 / 64, current * factor)))
        self.status = self._safe(self.provider.status, {})
        self.notify(f"replay speed {speed:g}×", timeout=2)
        self._show_header()


def run_app(provider: SnapshotProvider, *, refresh_hz: float = 4.0, title: str | None = None) -> None:
    """Run the TUI until the user quits. Raises UsageError for a bad --refresh."""
    LlmtopApp(provider, refresh_hz=refresh_hz, title=title).run()
