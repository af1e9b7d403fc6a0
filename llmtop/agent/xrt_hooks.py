"""pyxrt (AMD XRT's Python binding) in the agent: every XRT invocation as BO write / NPU run / BO read.

What is wrapped (the surface of XRT's pyxrt.cpp bindings as mlir-air and mlir-aie call them; nothing here
imports pyxrt itself): on the binding's classes, so every `import pyxrt as xrt` alias sees it,
`instrument_pyxrt` replaces
- bo (and ext.bo where it has its own): `map`, `write`, `read`, `sync` (its direction decides the side);
- run: `__init__` (a run built for a kernel), `set_arg`, `start`, `state`, `wait`, `wait2`;
- kernel / ext.kernel: `__init__` (the name, and a set-up call: it loads the kernel), `__call__`
  (builds and starts a run);
- runlist: `__init__`, `add`, `execute`, `wait`;
- the set-up calls: xclbin / elf / hw_context construction, device.register_xclbin / load_xclbin.
Each wrapper reads time.perf_counter_ns before and after the call on the calling thread and hands both to
the `XrtTracker` of the agent. The real binding holds the GIL through sync, wait and wait2 (and releases it
only in the set-up calls), so no other thread can run meanwhile: nothing here needs one to.

An invocation is the run of calls on one thread from its first write-side call to the last read-side call
after its wait, and becomes three kernel events of op class `npu` (llmtop/events.py: `xrt:<name>/<part>`):
- `bo_write`: from the `map()` of the first buffer synced to the device (the copy into the mapped view
  happens between the two and is otherwise invisible) or from the first TO_DEVICE sync / `bo.write`, to the
  end of the last write-side call; m = bytes synced to the device (per buffer the larger of its syncs and
  writes), n = buffers;
- `npu_run`: from there to the end of the wait (run construction and set_arg included, as mlir-air's own
  timer has them), shortened by any host op marked while the run was in flight;
- `bo_read`: from the wait to the end of the last FROM_DEVICE sync, `bo.read`, or `map()` of an output
  before the next invocation, host op or step end; m = bytes synced from the device, n = buffers.
The three are back to back, so their sum is the invocation's host time and never exceeds a step's wall.
Host ops marked between an invocation's writes and its run belong to neither part. Buffer traffic with no
run around it (a read with no run before it, writes not followed by a run before the step ends) forms an
invocation named `bo_only`.

Steps and layers. Inside a manual `agent.step(...)` (or a torch-instrumented step) the events join that
step. Without one, steps are inferred from the repeating sequence of XRT kernels (`_Steps`): once the
whole sequence has repeated twice (`...S S` with S holding a kernel at least twice: the layers) each S is
a decode step, and later steps are recognised as they complete; what came before is one prefill step (its
trailing layered run of calls) and set-up (the rest, e.g. weight preloads: named `xrt-setup:`, outside
every step). Within a step without `agent.layer` marks, layers are inferred from the longest run of one
repeated block of kernels (`infer_layers`). The source says which were inferred (extra.npu).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from llmtop.events import (
    DECODE,
    I32_MAX,
    NO_LAYER,
    OP_CLASS_ID,
    PREFILL,
    XRT_LOAD,
    SourceInfo,
    parse_xrt_name,
    xrt_name,
)

_now = time.perf_counter_ns
_NPU = OP_CLASS_ID["npu"]
_WRITE, _RUN, _READ = 1, 2, 3
_XRT, _HOST, _LOAD = 0, 1, 2
NO_RUN = "bo_only"  # the kernel name of buffer traffic with no run around it
MAX_MAPS = 64  # map() calls remembered per thread between invocations (the next write claims its own)
# A map() counts as the start of a write only this close before its sync: a view kept from set-up time (a
# tensor over the BO, synced call after call) must not stretch the first write back to its creation.
MAP_GAP_NS = 1_000_000_000
MAX_RUN_NAMES = 4096  # run object id -> kernel name (runs are built per call; ids get reused)
MAX_PENDING_UNITS = 50_000  # calls held while learning the step pattern before giving up on it
MAX_INFER_UNITS = 2048  # a step with more XRT calls than this is not searched for layers
HOST_GAP_NS = 50_000_000  # host ops more than this before a prefill's first call are not part of it
SYNC_TO = (0, 2)  # xclBOSyncDirection: BO_TO_DEVICE, GMIO_TO_AIE (1, 3 come back from the device)


# -- the pattern searches ----------------------------------------------------------------------------------
def square_suffix(keys: list[str]) -> int:
    """The smallest P with keys ending in the same P keys twice (0: none)."""
    n = len(keys)
    last = keys[-1] if keys else None
    for p in range(1, n // 2 + 1):
        if keys[n - 1 - p] == last and keys[n - 2 * p : n - p] == keys[n - p :]:
            return p
    return 0


def repeated_block(keys: list[str]) -> tuple[int, int, int]:
    """(start, P, L): the longest run of one block of P keys repeated L >= 2 times (most keys covered; the
    shorter block on a tie), or (0, 0, 0). The decoder layers of a step are that run."""
    n = len(keys)
    best = (0, 0, 0)
    best_cover = 1
    for p in range(1, n // 2 + 1):
        run = 0  # consecutive i with keys[i] == keys[i + p], ending just before the current i
        for i in range(n - p + 1):
            if i < n - p and keys[i] == keys[i + p]:
                run += 1
                continue
            reps = (run + p) // p  # keys[i - run : i + p] is p-periodic: whole blocks from i - run
            if reps >= 2 and reps * p > best_cover:
                best, best_cover = (i - run, p, reps), reps * p
            run = 0
    return best


def infer_layers(kinds: list[int], keys: list[str]) -> tuple[list[int], int]:
    """Layer per unit of one step (`kinds[i]` _XRT for an XRT invocation keyed by its kernel, else a host op
    or set-up call keyed by its name) and the layer count L (0: no repeated block, every unit NO_LAYER).

    Layer l is the l-th repetition of the repeated block of XRT kernels; host ops between two XRT calls of a
    layer, or between a layer and the next, are in that layer (decode attention on the CPU, a KV-cache copy);
    after the last layer only those named like a host op inside the layers are (the last layer's KV copy),
    the rest (final norm, sampling) and everything before the first layer are NO_LAYER."""
    xi = [i for i, k in enumerate(kinds) if k == _XRT]
    out = [NO_LAYER] * len(kinds)
    if len(xi) < 2 or len(xi) > MAX_INFER_UNITS:
        return out, 0
    start, p, reps = repeated_block([keys[i] for i in xi])
    if reps < 2:
        return out, 0
    firsts = [xi[start + j * p] for j in range(reps)]
    last = xi[start + reps * p - 1]
    inner: set[str] = set()
    for j in range(reps):
        hi = firsts[j + 1] if j + 1 < reps else last + 1
        for i in range(firsts[j], hi):
            out[i] = j
            if kinds[i] != _XRT:
                inner.add(keys[i])
    nxt = xi[start + reps * p] if start + reps * p < len(xi) else len(kinds)
    for i in range(last + 1, nxt):
        if kinds[i] != _XRT and keys[i] in inner:
            out[i] = reps - 1
        else:
            break
    return out, reps


# -- what the tracker collects -------------------------------------------------------------------------------
class _Unit:
    """One XRT invocation, host op or set-up call, held until its step is known."""

    __slots__ = ("host", "key", "kind", "layer", "parts", "t0", "t1")

    def __init__(self, kind: int, key: str, layer: int, t0: int, t1: int) -> None:
        self.kind = kind
        self.key = key
        self.layer = layer
        self.t0 = t0
        self.t1 = t1
        self.parts: list[tuple[str, int, int, int, int]] = []  # XRT: (part, start, dur, m, n)
        self.host: tuple = ()  # a host op's recorder row


class _Inv:
    """The invocation in progress on one thread."""

    __slots__ = ("br", "bw", "host_r", "host_w", "layer", "name", "phase", "r0", "r1", "ran", "rd1", "w0",
                 "w1")

    def __init__(self, w0: int | None, layer: int) -> None:
        self.phase = _WRITE
        self.name = ""
        self.w0 = w0  # start of the write side (None: the invocation began with its run)
        self.w1 = w0 or 0  # end of the last write-side call
        self.r0 = 0  # start of the run side
        self.r1 = 0  # end of the last run-side call (the wait)
        self.rd1 = 0  # end of the last read-side call
        self.bw: dict[int, int] = {}  # buffer id -> bytes to the device
        self.br: dict[int, int] = {}  # buffer id -> bytes from the device
        self.host_w = 0  # host ops marked inside the write side / while the run was in flight (ns)
        self.host_r = 0
        self.layer = layer
        self.ran = False  # a run was submitted or waited for


class XrtTracker:
    """Turns the wrapped calls of one process into kernel events on its agent's recorder."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.calls = 0  # wrapped calls seen: the manual API's check for events inside its brackets
        self._tls = threading.local()
        self._lock = threading.RLock()
        self._kernels: dict[int, str] = {}  # id(kernel object) -> display name (kernel objects live long)
        self._runs: OrderedDict[int, str] = OrderedDict()  # id(run) -> kernel name, bounded
        self._lists: OrderedDict[int, list[str]] = OrderedDict()  # id(runlist) -> its runs' names, bounded
        self.steps = _Steps(self)
        self.before_first_emit: list[Callable[[], None]] = []  # bootstrap announces the run's recording here
        self._emitted = False
        self._deferred: list[tuple[list[_Unit], int]] = []  # set-up rows held until the first step
        self._outside: list[_Unit] = []  # units between the user's steps, pushed as set-up
        self.units = 0  # units emitted (rows or inferred steps)
        self.layers_marked = False
        self.steps_marked = False
        self.n_layers = 0

    # -- names ------------------------------------------------------------------------------------------
    def kernel_made(self, kernel: Any, args: tuple) -> None:
        names = [a for a in args if isinstance(a, str)]
        if names:
            self._kernels[id(kernel)] = display_name(names[-1])

    def run_made(self, run: Any, kernel: Any) -> str:
        name = self._kernels.get(id(kernel), "")
        self._runs[id(run)] = name
        self._runs.move_to_end(id(run))
        while len(self._runs) > MAX_RUN_NAMES:
            self._runs.popitem(last=False)
        return name

    def run_name(self, run: Any) -> str:
        return self._runs.get(id(run), "")

    def list_add(self, rl: Any, run: Any) -> None:
        names = self._lists.setdefault(id(rl), [])
        self._lists.move_to_end(id(rl))
        while len(self._lists) > MAX_RUN_NAMES:
            self._lists.popitem(last=False)
        n = self.run_name(run)
        if n and n not in names:
            names.append(n)

    def list_name(self, rl: Any) -> str:
        return "+".join(self._lists.get(id(rl), [])) or "runlist"

    # -- the calls (each on the thread that made it) -------------------------------------------------------
    def _inv(self) -> _Inv | None:
        return getattr(self._tls, "inv", None)

    def _maps(self) -> list[tuple[int, int, int]]:
        m = getattr(self._tls, "maps", None)
        if m is None:
            m = self._tls.maps = []
        return m

    def on_map(self, bo: Any, t0: int, t1: int) -> None:
        self.calls += 1
        inv = self._inv()
        if inv is None or inv.phase == _READ:  # a view of an output, or the start of the next write
            maps = self._maps()
            maps.append((id(bo), t0, t1))
            if len(maps) > MAX_MAPS:
                del maps[0]

    def on_write(self, bo: Any, t0: int, t1: int, nbytes: int) -> None:
        self.calls += 1
        inv = self._inv()
        if inv is not None and inv.phase == _RUN:  # written while a run is in flight: its time is the run's
            inv.bw[id(bo)] = max(inv.bw.get(id(bo), 0), nbytes)
            return
        if inv is None or inv.phase == _READ:
            start = t0
            maps = self._maps()
            for j in range(len(maps) - 1, -1, -1):  # the map() this buffer's copy went through
                if maps[j][0] == id(bo):
                    if t0 - maps[j][2] <= MAP_GAP_NS:
                        start = maps[j][1]
                    break
            if inv is not None:
                self._finish(inv, start)
            self._maps().clear()
            inv = self._tls.inv = _Inv(start, self.agent._layer)
        inv.w1 = max(inv.w1, t1)
        inv.bw[id(bo)] = max(inv.bw.get(id(bo), 0), nbytes)

    def on_submit(self, name: str, t0: int, t1: int, force: bool = False) -> None:
        """A run built, its args set, started (or a kernel called, a runlist executed: `force`, its runs'
        names together name the invocation)."""
        self.calls += 1
        inv = self._inv()
        if inv is not None and inv.phase == _READ:
            self._finish(inv, t0)
            inv = None
        if inv is None:
            inv = self._tls.inv = _Inv(None, self.agent._layer)
            inv.phase, inv.r0 = _RUN, t0
        elif inv.phase == _WRITE:
            # Python between the last write and the run counts as the run, as mlir-air's timer has it
            inv.phase, inv.r0 = _RUN, inv.w1
        if name and (force or not inv.name):
            inv.name = name
        inv.layer = self.agent._layer
        inv.r1 = max(inv.r1, t1)
        inv.ran = True

    def on_poll(self, t1: int) -> None:
        """run.state(): a polling loop's time is the run's."""
        self.calls += 1
        inv = self._inv()
        if inv is not None and inv.phase == _RUN:
            inv.r1 = max(inv.r1, t1)

    def on_wait(self, name: str, t0: int, t1: int) -> None:
        self.calls += 1
        inv = self._inv()
        if inv is None:  # a run submitted before the tracker saw it
            inv = self._tls.inv = _Inv(None, self.agent._layer)
            inv.phase, inv.r0 = _RUN, t0
        elif inv.phase == _WRITE:
            inv.phase, inv.r0 = _RUN, inv.w1
        if name and not inv.name:
            inv.name = name
        inv.r1 = max(inv.r1, t1)
        inv.rd1 = inv.r1
        inv.phase = _READ
        inv.ran = True

    def on_read(self, bo: Any, t0: int, t1: int, nbytes: int) -> None:
        self.calls += 1
        inv = self._inv()
        if inv is None:  # read back with no run before it on this thread
            inv = self._tls.inv = _Inv(None, self.agent._layer)
            inv.phase, inv.r0, inv.r1 = _READ, t0, t0
        inv.br[id(bo)] = max(inv.br.get(id(bo), 0), nbytes)
        if inv.phase == _READ:
            inv.rd1 = max(inv.rd1, t1)
        elif inv.phase == _RUN:
            inv.r1 = max(inv.r1, t1)
        else:
            inv.w1 = max(inv.w1, t1)

    def on_load(self, call: str, t0: int, t1: int) -> None:
        """A set-up call (hw_context, register_xclbin, kernel construction, ...)."""
        self.calls += 1
        inv = self._inv()
        if inv is not None:
            if inv.phase == _READ:
                self._finish(inv, t0)
            elif inv.phase == _WRITE:
                inv.host_w += t1 - t0
            else:
                inv.host_r += t1 - t0
        self._maps().clear()
        u = _Unit(_LOAD, call, self.agent._layer, t0, t1)
        self._emit(u)

    # -- the manual API ---------------------------------------------------------------------------------
    def host_start(self, t0: int) -> None:
        """A host op (agent.kernel) begins on this thread: it ends the read side of the invocation before,
        and the map() calls before it belong to no later write."""
        inv = self._inv()
        if inv is not None and inv.phase == _READ:
            self._finish(inv, t0)
        self._maps().clear()

    def host_end(self, t0: int, t1: int) -> None:
        """A host op ended inside an invocation (between its writes, or while its run was in flight): the
        invocation's events leave its time out, so nothing is counted twice."""
        inv = self._inv()
        if inv is None:
            return
        if inv.phase == _WRITE:
            inv.host_w += t1 - t0
            inv.w1 = max(inv.w1, t1)
        elif inv.phase == _RUN:
            inv.host_r += t1 - t0

    def add_host(self, row: tuple, name: str) -> None:
        """A host op outside any step: held with the XRT calls until its step is inferred."""
        u = _Unit(_HOST, name, row[2], row[3], row[3] + row[4])
        u.host = row
        self._emit(u)

    def step_opening(self) -> None:
        """A manual step opens. From the first one on, steps are the user's: what ran before it and between
        steps (set-up, weight preloads) stays outside every step instead of being inferred into one."""
        inv = self._inv()
        if inv is not None:
            self._finish(inv, _now())
        self._maps().clear()  # a write in the step starts in the step
        with self._lock:
            self.steps_marked = True
            self._push_outside()

    def step_closing(self) -> None:
        """A manual (or torch) step closes: its last invocation joins it, and its layers are inferred when
        it has XRT events and no marked layers."""
        inv = self._inv()
        if inv is not None:
            self._finish(inv, _now())
        self.steps_marked = True
        rec = self.agent.recorder
        rows = rec.rows
        if not rows or not any(r[1] == _NPU for r in rows):
            return
        top = max(r[2] for r in rows)
        if top != NO_LAYER:
            self.layers_marked = True
            self.n_layers = max(self.n_layers, top + 1)
            self._first_emit()
            return
        kinds: list[int] = []
        keys: list[str] = []
        owner: list[int] = []  # row -> unit index
        names = self.agent.names
        for r in rows:
            parsed = parse_xrt_name(names[r[0]]) if r[1] == _NPU else None
            if parsed is not None and parsed[0] != XRT_LOAD:
                if parsed[1] == "bo_write" or not kinds or kinds[-1] != _XRT:
                    kinds.append(_XRT)
                    keys.append(parsed[0])
            else:
                kinds.append(_HOST if parsed is None else _LOAD)
                keys.append(names[r[0]])
            owner.append(len(kinds) - 1)
        layers, n = infer_layers(kinds, keys)
        if n:
            rec.rows = [(r[0], r[1], layers[owner[i]], *r[3:]) for i, r in enumerate(rows)]
            self._inferred_layers(n)
        self._first_emit()

    def flush(self) -> None:
        """At exit (agent.close_steps): finish this thread's invocation and whatever steps are pending."""
        inv = self._inv()
        if inv is not None:
            self._finish(inv, _now())
        with self._lock:
            self.steps.flush()
            self._push_outside()
            if self._deferred:
                self._first_emit()

    # -- emitting ---------------------------------------------------------------------------------------
    def _finish(self, inv: _Inv, limit: int) -> None:
        """Close the invocation: its read side ends at its last read-side call or at the last map() that
        came before `limit` (the next invocation's first write, a host op, a step's end)."""
        self._tls.inv = None
        maps = self._maps()
        rd = max(inv.rd1, inv.r1)
        if inv.phase == _READ:
            for _, _a, b in maps:
                if b <= limit:
                    rd = max(rd, b)
        maps.clear()
        if inv.phase == _WRITE:  # writes never followed by a run
            inv.r0 = inv.r1 = rd = inv.w1
        w0 = inv.w0 if inv.w0 is not None else inv.r0
        u = _Unit(_XRT, inv.name or ("kernel" if inv.ran else NO_RUN), inv.layer, w0, rd)
        bw, br = sum(inv.bw.values()), sum(inv.br.values())
        u.parts = [
            ("bo_write", w0, max(0, inv.r0 - w0 - inv.host_w), min(bw, I32_MAX), len(inv.bw)),
            ("npu_run", inv.r0, max(0, inv.r1 - inv.r0 - inv.host_r), 0, 0),
            ("bo_read", inv.r1, max(0, rd - inv.r1), min(br, I32_MAX), len(inv.br)),
        ]
        self._emit(u)

    def _emit(self, u: _Unit) -> None:
        with self._lock:
            rec = self.agent.recorder
            if rec.in_step:  # rows wait in the open step: the recording is announced when it closes
                rec.rows.extend(self.rows_of(u, False, u.layer))
                self.agent._rows_added += 1
                self.units += 1
            elif self.steps_marked:
                self._outside.append(u)
            else:
                self.steps.add(u)

    def _push_outside(self) -> None:
        """Units outside the user's steps (and what step inference held before the first one): set-up."""
        units = self.steps.take() + self._outside
        self._outside = []
        if units:
            self.push(units, None, units[0].t0, units[0].t0)

    def _first_emit(self) -> None:
        """Before the first rows reach the recorder: the source (now knowing the layers) and the run's
        recording (so the publisher can never drain rows the recording would miss), then the held set-up."""
        if self._emitted:
            return
        self._emitted = True
        self.update_source()
        for fn in self.before_first_emit:
            with contextlib.suppress(Exception):
                fn()
        self._push_deferred()

    def rows_of(self, u: _Unit, setup: bool, layer: int) -> list[tuple]:
        rec = self.agent.recorder
        if u.kind == _HOST:
            r = u.host
            return [(r[0], r[1], layer, *r[3:])]
        if u.kind == _LOAD:
            nid, opc = rec.kernel_id(xrt_name(XRT_LOAD, u.key, setup), "npu")
            return [(nid, opc, layer, u.t0, u.t1 - u.t0, 0, 0, 0)]
        out = []
        for part, start, dur, m, n in u.parts:
            nid, opc = rec.kernel_id(xrt_name(u.key, part, setup), "npu")
            out.append((nid, opc, layer, start, dur, m, n, 0))
        return out

    def push(self, units: list[_Unit], phase: int | None, t0: int, t1: int) -> None:
        """Units as one step of `phase` spanning [t0, t1] (layers inferred unless marked), or as set-up
        rows outside every step (phase None)."""
        if not units:
            return
        rec = self.agent.recorder
        rows: list[tuple] = []
        if phase is None:
            if not self._emitted:  # held until the first step says what the source is (layers)
                self._deferred.append((units, t0))
                return
            for u in units:
                rows.extend(self.rows_of(u, True, u.layer))
            rec.push_step((PREFILL, -1, 0, 0, 0), rows, t0, 0)
        else:
            layers = [u.layer for u in units]
            if any(v != NO_LAYER for v in layers):
                self.layers_marked = True
                self.n_layers = max(self.n_layers, max(layers) + 1)
            else:
                layers, n = infer_layers([u.kind for u in units], [u.key for u in units])
                if n:
                    self._inferred_layers(n)
            # The recording is opened (and the source sent) before the first rows reach the recorder, so
            # the publisher can never drain them first; by now the source knows the layers.
            self._first_emit()
            for u, lay in zip(units, layers, strict=True):
                rows.extend(self.rows_of(u, False, lay))
            tokens = 1 if phase == DECODE else 0
            rec.push_step((phase, self.agent._next_step(), tokens, 1, 0), rows, t0, max(0, t1 - t0))
        self.units += len(units)

    def _push_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for units, t0 in deferred:
            self.push(units, None, t0, t0)

    def _inferred_layers(self, n: int) -> None:
        if n != self.n_layers:
            self.n_layers = n
            if self._emitted:
                self.update_source()

    def update_source(self) -> None:
        """The agent's source names the NPU and says what was inferred (unless a torch model owns it)."""
        cur = self.agent.source
        if cur.backend not in ("python", "npu"):
            return
        extra = dict(cur.extra)
        extra["npu"] = {
            "binding": "pyxrt",
            "steps": "marked" if self.steps_marked else "inferred",
            "layers": "marked" if self.layers_marked else ("inferred" if self.n_layers else "none"),
            "unpatched": sorted({m for v in _patched.values() for m in v}),
        }
        self.agent.set_source(SourceInfo(
            kind=cur.kind, backend="npu",
            device=cur.device if cur.backend == "npu" else "NPU (XRT via pyxrt)",
            model=cur.model, dtype=cur.dtype, timing="perf_counter_ns around each pyxrt call (host clock)",
            max_context=cur.max_context, n_layers=self.n_layers or cur.n_layers, extra=extra))


class _Steps:
    """Step inference over the units emitted outside any manual step (see the module docstring)."""

    def __init__(self, tracker: XrtTracker) -> None:
        self.tr = tracker
        self.units: list[_Unit] = []  # not yet in a step
        self.keys: list[str] = []  # their XRT kernels, while learning
        self.cycle: tuple[str, ...] | None = None  # the decode step's kernels, once learned
        self.pos = 0  # XRT units of the open step matched against the cycle
        self.known: list[tuple[str, ...]] = []
        self.last_end: int | None = None  # end of the last step, while the next one continues it

    def add(self, u: _Unit) -> None:
        self.units.append(u)
        if u.kind != _XRT:
            return
        c = self.cycle
        if c is not None:
            if u.key == c[self.pos]:
                self.pos += 1
                if self.pos == len(c):
                    self._step(self.units, DECODE)
                    self.units, self.pos = [], 0
                return
            self.cycle, self.last_end = None, None  # the pattern broke (a new prompt): learn again
            self.keys = [x.key for x in self.units if x.kind == _XRT]
        else:
            self.keys.append(u.key)
        self._learn()

    def _learn(self) -> None:
        keys = self.keys
        for c in self.known:  # a step seen before, completed: the new prompt's prefill came before it
            if len(keys) >= len(c) and tuple(keys[-len(c):]) == c:
                self._resolve(c, 1)
                return
        p = square_suffix(keys)
        if p and len(set(keys[-p:])) < p:  # one step twice in a row, with layers in it
            c = tuple(keys[-p:])
            self.known.append(c)
            self._resolve(c, 2)
        elif len(self.units) > MAX_PENDING_UNITS:
            self.tr.push(self.units, None, self.units[0].t0, self.units[-1].t1)
            self.units, self.keys = [], []

    def _resolve(self, c: tuple[str, ...], copies: int) -> None:
        """The last `copies` runs of `c` are decode steps; what precedes them is prefill and set-up."""
        xi = [i for i, u in enumerate(self.units) if u.kind == _XRT]
        prev_x = xi[len(xi) - copies * len(c) - 1] if len(xi) > copies * len(c) else -1
        cut = prev_x + 1  # host ops after the preamble's last call open the first decode step
        pre, rest = self.units[:cut], self.units[cut:]
        self._preamble(pre)
        for _ in range(copies):
            rx = [i for i, u in enumerate(rest) if u.kind == _XRT]
            end = rx[len(c) - 1] + 1
            self._step(rest[:end], DECODE)
            rest = rest[end:]
        self.units, self.keys, self.cycle, self.pos = rest, [], c, 0

    def _preamble(self, units: list[_Unit]) -> None:
        """Set-up rows, then the prefill: the trailing repeated run of calls (the layers) and its tail."""
        self.last_end = None
        if not units:
            return
        xi = [i for i, u in enumerate(units) if u.kind == _XRT]
        keys = [units[i].key for i in xi]
        found = -1
        for tail in range(min(4, max(0, len(keys) - 1))):
            head = keys[: len(keys) - tail]
            p = square_suffix(head)
            if p:
                reps, j = 2, len(head) - 3 * p
                while j >= 0 and head[j : j + p] == head[len(head) - p :]:
                    reps, j = reps + 1, j - p
                found = xi[len(head) - reps * p]
                break
        if found < 0:
            self.tr.push(units, None, units[0].t0, units[-1].t1)
            return
        start = found
        # tokenize, embed lookup: the prefill's own host ops right before its first call (not the previous
        # generation's last ones, before the user typed the next prompt)
        while (start > 0 and units[start - 1].kind != _XRT
               and units[start].t0 - units[start - 1].t1 <= HOST_GAP_NS):
            start -= 1
        self.tr.push(units[:start], None, units[0].t0, units[0].t0)
        self._step(units[start:], PREFILL)

    def _step(self, units: list[_Unit], phase: int) -> None:
        if not units:
            return
        t0 = self.last_end if self.last_end is not None else units[0].t0
        t1 = max(u.t1 for u in units)
        self.tr.push(units, phase, min(t0, units[0].t0), t1)
        self.last_end = t1

    def take(self) -> list[_Unit]:
        """Everything held, and forget the pattern (the user marks steps from now on)."""
        units = self.units
        self.units, self.keys, self.cycle, self.pos, self.last_end = [], [], None, 0, None
        return units

    def flush(self) -> None:
        units = self.units
        self.units, self.keys = [], []
        if not units:
            return
        if self.cycle is not None:
            if any(u.kind == _XRT for u in units):
                self._step(units, DECODE)  # a step cut short
            else:
                self.tr.push(units, None, units[0].t0, units[0].t0)  # host ops after the last step
            return
        self._preamble(units)


# -- names and patching --------------------------------------------------------------------------------------
def display_name(kernel_name: str) -> str:
    """'main:rms_gemv_rope' (an ELF's entry: mlir-air's `main:<instance_name>`) -> 'rms_gemv_rope'."""
    return kernel_name[5:] if kernel_name.startswith("main:") and len(kernel_name) > 5 else kernel_name


_provider: Callable[[], XrtTracker | None] | None = None
_patched: dict[int, list[str]] = {}  # id(module) -> what could not be wrapped
_watching = False


def _tracker() -> XrtTracker | None:
    p = _provider
    if p is None:
        return None
    try:
        return p()
    except Exception:  # instrumentation must never break the user's call
        return None


def set_provider(fn: Callable[[], XrtTracker | None] | None) -> None:
    """Where the wrapped calls report: a function returning the tracker (it may start an agent lazily)."""
    global _provider
    _provider = fn


def _direction_to_device(args: tuple) -> bool:
    d = args[0] if args else 0
    try:
        return int(d) in SYNC_TO
    except (TypeError, ValueError):
        name = str(getattr(d, "name", d))
        return "TO_DEVICE" in name or "TO_AIE" in name


def _size(bo: Any) -> int:
    try:
        return int(bo.size())
    except Exception:
        return 0


def _nbytes(buf: Any) -> int:
    try:
        return memoryview(buf).nbytes
    except TypeError:
        try:
            return len(buf)
        except TypeError:
            return 0


def _wrap(cls: Any, attr: str, make: Callable[[Any], Callable[..., Any]], missing: list[str]) -> None:
    orig = cls.__dict__.get(attr)
    if orig is None or getattr(orig, "__llmtop_xrt__", False):
        return
    w = make(orig)
    w.__llmtop_xrt__ = True  # type: ignore[attr-defined]
    w.__wrapped__ = orig  # type: ignore[attr-defined]
    w.__doc__ = getattr(orig, "__doc__", None)
    try:
        setattr(cls, attr, w)
    except (TypeError, AttributeError):  # a binding that does not allow it: say so in the source
        missing.append(f"{getattr(cls, '__name__', cls)}.{attr}")


_inside = threading.local()  # a wrapped call in progress on this thread: calls it makes are its own


def _timed(report: Callable[[XrtTracker, Any, tuple, Any, int, int], None]) -> Callable[[Any], Callable]:
    """A wrapper maker: time the call, then `report(tracker, self, args, result, t0, t1)`. A call made from
    inside another wrapped call (a Python subclass calling its base; the binding never does) passes
    straight through, and whatever goes wrong in the report is ignored: the user's call always happens."""

    def make(orig: Any) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any) -> Any:
            if getattr(_inside, "on", False):
                return orig(self, *args)
            tr = _tracker()
            if tr is None:
                return orig(self, *args)
            _inside.on = True
            res = None
            t0 = _now()
            try:
                res = orig(self, *args)
                return res
            finally:
                t1 = _now()
                _inside.on = False
                with contextlib.suppress(Exception):
                    report(tr, self, args, res, t0, t1)
        return wrapper
    return make


def _r_sync(tr: XrtTracker, bo: Any, args: tuple, _res: Any, t0: int, t1: int) -> None:
    n = int(args[1]) if len(args) >= 2 and isinstance(args[1], int) else _size(bo)
    if _direction_to_device(args):
        tr.on_write(bo, t0, t1, n)
    else:
        tr.on_read(bo, t0, t1, n)


def _r_write(tr: XrtTracker, bo: Any, args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.on_write(bo, t0, t1, _nbytes(args[0]) if args else 0)


def _r_read(tr: XrtTracker, bo: Any, args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.on_read(bo, t0, t1, int(args[0]) if args and isinstance(args[0], int) else 0)


def _r_map(tr: XrtTracker, bo: Any, _args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.on_map(bo, t0, t1)


def _r_run_init(tr: XrtTracker, run: Any, args: tuple, _res: Any, t0: int, t1: int) -> None:
    if args:  # a run built for a kernel starts an invocation's run side; run() alone is nothing yet
        tr.on_submit(tr.run_made(run, args[0]), t0, t1)


def _r_submit(tr: XrtTracker, run: Any, _args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.on_submit(tr.run_name(run), t0, t1)


def _r_state(tr: XrtTracker, _run: Any, _args: tuple, _res: Any, _t0: int, t1: int) -> None:
    tr.on_poll(t1)


def _r_wait(tr: XrtTracker, run: Any, _args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.on_wait(tr.run_name(run), t0, t1)


def _r_kernel_init(tr: XrtTracker, k: Any, args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.kernel_made(k, args)
    tr.on_load("kernel", t0, t1)


def _r_kernel_call(tr: XrtTracker, k: Any, _args: tuple, run: Any, t0: int, t1: int) -> None:
    tr.on_submit(tr.run_made(run, k) if run is not None else tr._kernels.get(id(k), ""), t0, t1)


def _r_list_init(tr: XrtTracker, rl: Any, _args: tuple, _res: Any, _t0: int, _t1: int) -> None:
    tr._lists[id(rl)] = []  # a new runlist (its id may be a dead one's)


def _r_list_add(tr: XrtTracker, rl: Any, args: tuple, _res: Any, _t0: int, _t1: int) -> None:
    if args:
        tr.list_add(rl, args[0])


def _r_list_execute(tr: XrtTracker, rl: Any, _args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.on_submit(tr.list_name(rl), t0, t1, force=True)


def _r_list_wait(tr: XrtTracker, rl: Any, _args: tuple, _res: Any, t0: int, t1: int) -> None:
    tr.on_wait(tr.list_name(rl), t0, t1)


def _r_load(call: str) -> Callable[[XrtTracker, Any, tuple, Any, int, int], None]:
    def report(tr: XrtTracker, _obj: Any, _args: tuple, _res: Any, t0: int, t1: int) -> None:
        tr.on_load(call, t0, t1)
    return report


def instrument_pyxrt(mod: Any) -> list[str]:
    """Wrap the timed calls of a pyxrt module (once per module); returns what could not be wrapped."""
    key = id(mod)
    if key in _patched:
        return _patched[key]
    missing: list[str] = []
    ext = getattr(mod, "ext", None)
    for cls in (getattr(mod, "bo", None), getattr(ext, "bo", None)):
        if isinstance(cls, type):
            _wrap(cls, "sync", _timed(_r_sync), missing)
            _wrap(cls, "write", _timed(_r_write), missing)
            _wrap(cls, "read", _timed(_r_read), missing)
            _wrap(cls, "map", _timed(_r_map), missing)
    run = getattr(mod, "run", None)
    if isinstance(run, type):
        _wrap(run, "__init__", _timed(_r_run_init), missing)
        for m in ("set_arg", "start"):
            _wrap(run, m, _timed(_r_submit), missing)
        _wrap(run, "state", _timed(_r_state), missing)
        for m in ("wait", "wait2"):
            _wrap(run, m, _timed(_r_wait), missing)
    for cls in (getattr(mod, "kernel", None), getattr(ext, "kernel", None)):
        if isinstance(cls, type):
            _wrap(cls, "__init__", _timed(_r_kernel_init), missing)
            _wrap(cls, "__call__", _timed(_r_kernel_call), missing)
    rl = getattr(mod, "runlist", None)
    if isinstance(rl, type):
        _wrap(rl, "__init__", _timed(_r_list_init), missing)
        _wrap(rl, "add", _timed(_r_list_add), missing)
        _wrap(rl, "execute", _timed(_r_list_execute), missing)
        _wrap(rl, "wait", _timed(_r_list_wait), missing)
    for cname in ("xclbin", "elf", "hw_context"):
        cls = getattr(mod, cname, None)
        if isinstance(cls, type):
            _wrap(cls, "__init__", _timed(_r_load(cname)), missing)
    dev = getattr(mod, "device", None)
    if isinstance(dev, type):
        for m in ("register_xclbin", "load_xclbin"):
            _wrap(dev, m, _timed(_r_load(m)), missing)
    _patched[key] = missing
    return missing


def watch(provider: Callable[[], XrtTracker | None]) -> None:
    """Report pyxrt calls to `provider()`: now if pyxrt is imported, else once it is (a post-import hook)."""
    global _watching
    set_provider(provider)
    if "pyxrt" in sys.modules:
        instrument_pyxrt(sys.modules["pyxrt"])
        return
    if _watching:
        return
    _watching = True
    from llmtop.agent.bootstrap import _PostImport

    sys.meta_path.insert(0, _PostImport("pyxrt", lambda: instrument_pyxrt(sys.modules["pyxrt"])))


__all__ = ["NO_RUN", "XrtTracker", "display_name", "infer_layers", "instrument_pyxrt", "repeated_block",
           "set_provider", "square_suffix", "watch"]
