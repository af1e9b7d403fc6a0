"""The collector base: a named thread that pushes items into the pipeline queue.

A collector that raises is not fatal: it records its error (the pane shows it) and the rest of the
pipeline keeps running. Each collector measures its own CPU cost with time.thread_time in its own
thread, so the header can show what profiling costs (py-spy style "falling behind").
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from llmtop.collectors.queue import BoundedQueue
from llmtop.events import EventBatch, Marker

# Collector states shown in the UI.
IDLE, RUNNING, DONE, STOPPED = "idle", "running", "done", "stopped"
ERROR, UNAVAILABLE = "error", "unavailable"


@dataclass(slots=True, frozen=True)
class CollectorStatus:
    name: str
    state: str
    error: str | None  # one line; set for ERROR and UNAVAILABLE
    cpu_s: float  # this collector's own thread CPU time so far
    dropped_events: int
    emitted_events: int
    activity: str = ""  # what it is doing now, one line (the engine's current prompt); "" when nothing


class Collector:
    """Subclasses implement `run()` (called in the collector thread) and use `emit` / `wait`."""

    name: str = "collector"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.state = IDLE
        self.error: str | None = None
        self._queue: BoundedQueue[Any] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cpu: dict[int, float] = {}  # thread ident -> CPU seconds, written by that thread only
        self.dropped_events = 0
        self.emitted_events = 0
        self._pending_names: EventBatch | None = None
        # emit runs on more than one thread (the engine thread's markers, the drain thread's batches)
        self._emit_lock = threading.Lock()

    # -- lifecycle (pipeline thread) ------------------------------------------------------
    def start(self, queue: BoundedQueue[Any]) -> None:
        if self.state == UNAVAILABLE:
            return
        self._queue = queue
        self.state = RUNNING
        self._spawn(self.run, self.name)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(left)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def status(self) -> CollectorStatus:
        return CollectorStatus(self.name, self.state, self.error, self.cpu_s, self.dropped_events,
                               self.emitted_events, self.activity())

    def activity(self) -> str:
        """One line on what the collector is doing now, for the header; "" by default."""
        return ""

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    # -- collector threads ----------------------------------------------------------------
    def run(self) -> None:
        raise NotImplementedError

    def _spawn(self, target: Any, name: str, *, measured: bool = True) -> threading.Thread:
        t = threading.Thread(target=self._guard, args=(target, measured), name=f"llmtop-{name}", daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def _guard(self, target: Any, measured: bool) -> None:
        ident = threading.get_ident()
        t0 = time.thread_time()
        try:
            target()
            if self.state == RUNNING:
                self.state = STOPPED if self._stop.is_set() else DONE
        except Exception as e:  # a dying collector must not take the pipeline down
            self.fail(e)
        finally:
            if measured:
                self._cpu[ident] = time.thread_time() - t0

    def fail(self, e: BaseException | str) -> None:
        if isinstance(e, BaseException):
            where = traceback.extract_tb(e.__traceback__)
            loc = f" ({where[-1].filename.rsplit('/', 1)[-1]}:{where[-1].lineno})" if where else ""
            msg = f"{type(e).__name__}: {e}{loc}".replace("\n", " ")
        else:
            msg = e
        self.error = msg
        self.state = ERROR
        self._stop.set()

    def account_cpu(self, t0: float) -> None:
        """Called in a measured thread's loop with that thread's start thread_time."""
        self._cpu[threading.get_ident()] = time.thread_time() - t0

    def wait(self, seconds: float) -> bool:
        """Sleep unless stopped; True when asked to stop."""
        return self._stop.wait(seconds)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def emit(self, item: Any) -> bool:
        """Non-blocking push; on overflow count the drop but keep the name table consistent."""
        assert self._queue is not None, "collector not started"
        with self._emit_lock:
            if isinstance(item, EventBatch) and self._pending_names is not None:
                item = _merge_names(self._pending_names, item)
                self._pending_names = None
            if self._queue.put(item):
                self.emitted_events += len(item)
                return True
            self.dropped_events += len(item)
            if isinstance(item, EventBatch) and item.new_names:
                # Dropping names would leave a gap every later batch trips on: carry them forward.
                self._pending_names = EventBatch(names_base=item.names_base, new_names=list(item.new_names))
            return False

    def flush_pending(self) -> None:
        """Deliver carried-over names even when the queue is still full (they are tiny)."""
        with self._emit_lock:
            if self._pending_names is not None and self._queue is not None:
                self._queue.put_force(self._pending_names)
                self._pending_names = None


def _merge_names(carried: EventBatch, batch: EventBatch) -> EventBatch:
    names = list(carried.new_names)
    end = carried.names_base + len(names)
    if batch.new_names:
        # batch.names_base == end normally; tolerate overlap (NameTable.extend accepts re-sent names)
        names.extend(batch.new_names[max(0, end - batch.names_base):])
    return EventBatch(batch.kernels, batch.steps, carried.names_base, names)


class Rewind(Marker):
    """A replay seeking backwards: the pipeline forgets what it folded when this reaches it in the queue
    (so items queued before the seek can never land after the reset), then the replay refills it."""
