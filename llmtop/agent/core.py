"""The in-process agent: publishes a process's EventBatches to any number of viewers over TCP.

Threads: one publisher drains the recorders every `interval` seconds and encodes each batch once;
one acceptor reads every pending handshake with a selector (a bounded number at once, each with a
deadline: silent connections never cost threads); one sender per viewer writes that viewer's frames.
The decode loop only ever appends to a recorder, so a slow, stuck or absent viewer can never block it:
each viewer has a bounded buffer, and what does not fit is dropped, counted and reported to that viewer.

Kernel-name ids come from one NameTable shared by every recorder the agent drains. Each viewer is
sent the names it has not seen yet right before a batch goes out, so a viewer that joins late, or
misses batches, still resolves every id.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from llmtop.agent import wire
from llmtop.errors import LlmtopError
from llmtop.events import DECODE, NO_LAYER, OP_CLASS_ID, PHASES, PREFILL, EventBatch, NameTable, SourceInfo
from llmtop.kernels.base import KernelRecorder

DEFAULT_ADDR = "127.0.0.1:7070"


def parse_addr(addr: str) -> tuple[str, int]:
    """ "host:port", ":port" or "port" -> (host, port); LlmtopError on anything else."""
    s = str(addr).strip()
    for scheme in ("llmtop://", "tcp://"):
        if s.startswith(scheme):
            s = s[len(scheme) :]
    s = s.rstrip("/")
    host, sep, port_s = s.rpartition(":")
    if not sep:
        host, port_s = "", s
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise LlmtopError(f"bad agent address {addr!r} (expected host:port)") from None
    if not 0 <= port <= 65535:
        raise LlmtopError(f"bad agent port {port} in {addr!r}")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The hello's fixed part (magic, version, token length); the token length is its last two bytes.
_HELLO_HEAD = len(wire.encode_hello(None))
# A welcome status this agent sends when it has `max_viewers` viewers already; a viewer shows its message.
_BUSY = 3


def _hello_size(buf: bytes | bytearray) -> int:
    """How many bytes the hello starting `buf` has in all (its fixed part, until that has arrived)."""
    if len(buf) < _HELLO_HEAD:
        return _HELLO_HEAD
    return _HELLO_HEAD + int.from_bytes(buf[_HELLO_HEAD - 2 : _HELLO_HEAD], "little")


class _Pending:
    """A connection whose hello has not arrived whole yet."""

    __slots__ = ("buf", "deadline", "peer")

    def __init__(self, peer: str, deadline: float) -> None:
        self.peer = peer
        self.deadline = deadline
        self.buf = bytearray()


class _Received:
    """The bytes of a whole hello, read back through `recv` by wire.read_hello."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def recv(self, n: int) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        return out


class _Viewer:
    __slots__ = ("closed", "cond", "dropped", "events", "items", "names_sent", "peer", "sent_frames", "sock")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.items: deque[tuple[int, Any]] = deque()  # (events, item)
        self.events = 0
        self.dropped = 0
        self.names_sent = 0
        self.cond = threading.Condition()
        self.closed = False
        self.sent_frames = 0


class Agent:
    """Publish EventBatches to viewers. Use `llmtop.agent.start(...)` rather than building one directly.

    engine: an llmtop Engine (its `ops.recorder` is drained and its `source_info()` sent).
    model: a torch nn.Module, timed op by op (agent/torch_hooks.py: matmuls, attention, norms, rope).
    Neither: use the manual API (`step`, `layer`, `kernel`) from your own loop.
    """

    max_pending = 64  # handshakes read at once; a new connection past this drops the oldest
    handshake_timeout = 5.0  # seconds a connection has to send its whole hello
    max_viewers = 64  # viewers at once; one more is refused with a message

    def __init__(
        self,
        addr: str = DEFAULT_ADDR,
        token: str | None = None,
        *,
        engine: Any = None,
        model: Any = None,
        source: SourceInfo | None = None,
        interval: float = 0.05,
        viewer_buffer_events: int = 2_000_000,
        viewer_buffer_items: int = 4096,
        send_timeout: float = 5.0,
        backlog_events: int = 1_000_000,
    ) -> None:
        self.host, self.port = parse_addr(addr)
        if not is_loopback(self.host) and not token:
            raise LlmtopError(
                f"the agent binds {self.host}, which is not loopback: a token is required "
                "(LLMTOP_AGENT_TOKEN or token=...)"
            )
        self.token = token.encode("utf-8") if token else None
        self.interval = interval
        self.viewer_buffer_events = viewer_buffer_events
        self.viewer_buffer_items = viewer_buffer_items
        self.send_timeout = send_timeout
        self.names = NameTable()
        self._recorders: list[KernelRecorder] = []
        self._lock = threading.Lock()
        self._viewers: list[_Viewer] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.refused = 0  # handshakes refused (bad token, version, garbage)
        self.published_events = 0
        self.connections = 0
        self.engine = None
        self.metrics_url: str | None = None  # set when llmtop's metrics are served beside the agent
        self._source = source or SourceInfo(kind="live", backend="python", timing="perf_counter_ns")
        self._source_frame = wire.json_frame(wire.SOURCE, self._source.to_dict())
        # the manual API's recorder (and the torch hooks'); its track is 1 when an engine owns track 0
        self.recorder = KernelRecorder(self.names)
        self._recorders.append(self.recorder)
        self._manual_step = 0
        self._layer = NO_LAYER  # the open `layer(i)`: kernels (and XRT calls) inside it are in layer i
        self._rows_added = 0  # kernel rows the manual API and XRT calls added (brackets around them see it)
        self.xrt: Any = None  # the pyxrt tracker (agent/xrt_hooks.py), made on the first XRT call
        self.before_first_step: list[Callable[[], None]] = []  # run once as the first manual step closes
        self._instrumentations: list[Any] = []
        self._sock: socket.socket | None = None
        # The most recent batches (up to `backlog_events` events), replayed to every viewer that connects,
        # so a viewer that arrives after the prefill (llmtop run attaching to a script) still sees it.
        self.backlog_events = backlog_events
        self._backlog: deque[tuple[int, Any]] = deque()
        self._backlog_n = 0
        self._recording: Any = None  # a RecordingWriter every drained batch is also written to
        self._taps: list[Callable[[EventBatch], None]] = []  # in-process consumers of every drained batch
        self.tap_errors = 0
        self._close_hooks: list[Callable[[], None]] = []
        if engine is not None:
            self.attach_engine(engine)
        if model is not None:
            self.instrument(model)

    # -- sources -------------------------------------------------------------------------------
    def attach_engine(self, engine: Any) -> None:
        """Drain an llmtop Engine's recorder (and adopt its name table for every recorder)."""
        rec = engine.ops.recorder
        with self._lock:
            if self.names is not rec.names:
                # one table for every recorder, so a name id means one thing on the wire
                self.names = rec.names
                self.recorder = KernelRecorder(self.names, track=1)
                self._recorders = [rec, self.recorder]
            elif rec not in self._recorders:
                self._recorders.insert(0, rec)
            self.engine = engine
        self.set_source(engine.source_info())

    def instrument(self, model: Any, ops: str = "all") -> Any:
        """Time a torch model op by op (ops="all") or per decoder layer (ops="layers"), no change to its
        code; returns the handle (`.remove()`, `.close_step()`)."""
        from llmtop.agent.torch_hooks import TorchInstrumentation

        for inst in self._instrumentations:
            if inst.model is model and inst.active:  # autostart(model=...) after the finder found it
                return inst
        inst = TorchInstrumentation(self, model, ops=ops)
        self._instrumentations.append(inst)
        self.set_source(inst.source_info())
        return inst

    def close_steps(self) -> None:
        """End every instrumented model's open step now (a step stays open until the next forward), and
        hand over the XRT calls still waiting for their step to be inferred."""
        for inst in list(self._instrumentations):
            with contextlib.suppress(Exception):
                inst.close_step()
        if self.xrt is not None:
            with contextlib.suppress(Exception):
                self.xrt.flush()

    def xrt_tracker(self) -> Any:
        """The tracker pyxrt's wrapped calls report to (agent/xrt_hooks.py); None once the agent closed."""
        if self._stop.is_set():
            return None
        if self.xrt is None:
            from llmtop.agent.xrt_hooks import XrtTracker

            with self._lock:
                if self.xrt is None:
                    self.xrt = XrtTracker(self)
        return self.xrt

    def watch_xrt(self) -> None:
        """Time pyxrt's calls (BO write / NPU run / BO read per invocation) in this process: now if pyxrt is
        imported, else as soon as it is. `llmtop.agent.start()` calls this."""
        from llmtop.agent.xrt_hooks import watch

        watch(self.xrt_tracker)

    def _next_step(self) -> int:
        n = self._manual_step
        self._manual_step += 1
        return n

    def add_recorder(self, recorder: KernelRecorder) -> None:
        """Drain another recorder; it must share `agent.names` (pass names=agent.names)."""
        if recorder.names is not self.names:
            raise ValueError("the recorder must use the agent's name table (KernelRecorder(agent.names))")
        with self._lock:
            self._recorders.append(recorder)

    def remove_recorder(self, recorder: KernelRecorder) -> None:
        """Stop draining a recorder (an engine's, when it is handed to another consumer)."""
        with self._lock:
            if recorder in self._recorders:
                self._recorders.remove(recorder)

    def set_source(self, source: SourceInfo) -> None:
        self._source = source
        self._source_frame = wire.json_frame(wire.SOURCE, source.to_dict())
        for v in self._viewer_list():
            self._enqueue(v, 0, self._source_frame, force=True)

    @property
    def source(self) -> SourceInfo:
        return self._source

    # -- manual API (call from the decode loop's thread) -----------------------------------------
    @contextlib.contextmanager
    def step(
        self, phase: str | int = "decode", tokens: int = 1, batch: int = 1, ctx: int = 0
    ) -> Iterator[None]:
        """Bracket one prefill or decode step; `tokens` counts the whole batch (like the engine)."""
        ph = phase if isinstance(phase, int) else PHASES.index(phase)
        if ph not in (PREFILL, DECODE):
            raise ValueError(f"phase must be prefill or decode, got {phase!r}")
        xrt = self.xrt
        if xrt is not None:
            xrt.step_opening()
        self.recorder.begin_step(ph, self._next_step(), tokens, batch, ctx)
        try:
            yield
        finally:
            xrt = self.xrt  # made inside this step when its first XRT call was
            if xrt is not None:
                xrt.step_closing()  # the step's last XRT invocation joins it; its layers inferred if unmarked
            hooks, self.before_first_step = self.before_first_step, []
            for fn in hooks:  # `llmtop run`: the recording opens before the first step's rows can drain
                with contextlib.suppress(Exception):
                    fn()
            self.recorder.end_step()

    def _inside(self) -> tuple[int, int]:
        """What the manual API and XRT calls have added so far: a bracket that saw it change holds finer
        events and is not recorded itself (its time would be counted twice)."""
        xrt = self.xrt
        return self._rows_added, xrt.calls if xrt is not None else 0

    @contextlib.contextmanager
    def kernel(
        self, name: str, op_class: str = "other", layer: int = NO_LAYER, m: int = 0, n: int = 0, k: int = 0
    ) -> Iterator[None]:
        """Time one kernel or CPU host op (host clock), in layer `layer` (default: the open `layer(i)`).

        Inside a `step`, or, with pyxrt instrumented, anywhere (its step is inferred with the XRT calls).
        A bracket around other marked kernels or XRT calls is not recorded itself: they carry its time."""
        if op_class not in OP_CLASS_ID:
            raise ValueError(f"unknown op class {op_class!r}")
        nid, opc = self.recorder.kernel_id(name, op_class)
        lay = self._layer if layer == NO_LAYER else layer
        xrt = self.xrt
        if xrt is not None:  # before the clock starts: closing the previous invocation is not this op's time
            xrt.host_start(time.perf_counter_ns())
        before = self._inside()
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            t1 = time.perf_counter_ns()
            if self._inside() == before:
                row = (nid, opc, lay, t0, t1 - t0, m, n, k)
                if xrt is not None:
                    xrt.host_end(t0, t1)
                if xrt is not None and not self.recorder.in_step:
                    xrt.add_host(row, name)
                else:
                    self.recorder.rows.append(row)
                self._rows_added += 1

    @contextlib.contextmanager
    def layer(self, i: int, name: str = "decoder_layer") -> Iterator[None]:
        """Decoder layer `i`: kernels, host ops and XRT calls inside it are in layer i. A layer with none of
        them inside is timed as one kernel `name` (class other)."""
        prev, self._layer = self._layer, i
        before = self._inside()
        try:
            with self.kernel(name, "other", i):
                yield
        finally:
            self._layer = prev
            if self._inside() != before and self.xrt is not None:
                self.xrt.layers_marked = True

    def publish_counters(self, source: str, values: dict[str, float]) -> None:
        """Send gauges (request counts, memory) to every viewer; they arrive as CounterSamples."""
        f = wire.json_frame(
            wire.COUNTER,
            {
                "source": source,
                "t_ns": time.perf_counter_ns(),
                "values": {k: float(v) for k, v in values.items()},
            },
        )
        for v in self._viewer_list():
            self._enqueue(v, 1, f)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Agent:
        if self._sock is not None:
            return self
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except OSError as e:
            s.close()
            raise LlmtopError(f"agent cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        s.listen(128)  # a burst of connections waits in the kernel, not in SYN retries, while accepted
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        for target, name in ((self._accept_loop, "accept"), (self._publish_loop, "publish")):
            t = threading.Thread(target=target, name=f"llmtop-agent-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def viewers(self) -> int:
        return len(self._viewer_list())

    @property
    def dropped_events(self) -> int:
        return sum(v.dropped for v in self._viewer_list())

    def add_tap(self, fn: Callable[[EventBatch], None]) -> None:
        """Also hand every drained batch to `fn`, on the draining thread (the metrics endpoint folds them).

        Its kernel name ids index `agent.names`, which holds every id the batch uses when `fn` runs.
        `fn` must be quick and must not call back into the agent; what it raises is counted in
        `tap_errors` and otherwise ignored, so a consumer can never stop the publisher."""
        with self._lock:
            self._taps.append(fn)

    def add_close_hook(self, fn: Callable[[], None]) -> None:
        """Call `fn` when the agent closes (after its last flush): servers started beside it."""
        self._close_hooks.append(fn)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        for inst in self._instrumentations:
            inst.remove()
        if self.xrt is not None:  # XRT calls still waiting for their step to be inferred
            with contextlib.suppress(Exception):
                self.xrt.flush()
        self.flush()
        for fn in self._close_hooks:
            with contextlib.suppress(Exception):
                fn()
        with self._lock:
            if self._recording is not None:
                self._recording.close()
                self._recording = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        for v in self._viewer_list():
            self._close_viewer(v)
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads -------------------------------------------------------------------------------
    def _viewer_list(self) -> list[_Viewer]:
        with self._lock:
            return list(self._viewers)

    def _accept_loop(self) -> None:
        """Accept viewers and read their hellos on this one thread, with a selector: a handshake in progress
        costs a socket and a few bytes, never a thread. At most `max_pending` wait at once (a new one
        drops the oldest) and each has `handshake_timeout` seconds, so a flood of silent connections
        costs bounded threads and memory and a real viewer (it sends its hello at once) still gets in."""
        assert self._sock is not None
        lsock = self._sock
        sel = selectors.DefaultSelector()
        pending: dict[socket.socket, _Pending] = {}  # oldest first
        try:
            lsock.setblocking(False)
            sel.register(lsock, selectors.EVENT_READ)
        except (OSError, ValueError):  # closed before this thread ran
            sel.close()
            return
        try:
            while not self._stop.is_set():
                try:
                    ready = sel.select(0.2)
                except OSError:
                    return
                for key, _ in ready:
                    if key.fileobj is lsock:
                        if not self._accept_ready(lsock, sel, pending):
                            return
                    else:
                        self._hello_ready(key.fileobj, sel, pending)  # type: ignore[arg-type]
                now = time.monotonic()
                for conn, p in list(pending.items()):
                    if now >= p.deadline:  # pending is oldest first: the rest are younger
                        self._drop_pending(conn, sel, pending)
                    else:
                        break
        finally:
            for conn in list(pending):
                self._drop_pending(conn, sel, pending, refused=False)
            sel.close()

    def _accept_ready(self, lsock: socket.socket, sel: selectors.BaseSelector,
                      pending: dict[socket.socket, _Pending]) -> bool:
        """Accept what is waiting (a bounded number per round); False when the listening socket is gone."""
        for _ in range(64):
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError, TimeoutError):
                return True
            except OSError as e:
                if self._stop.is_set() or e.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                    return False
                # out of descriptors (EMFILE) or the like: free one, or pause, and keep serving
                if pending:
                    self._drop_pending(next(iter(pending)), sel, pending)
                else:
                    self._stop.wait(0.05)
                return True
            while len(pending) >= max(1, self.max_pending):
                self._drop_pending(next(iter(pending)), sel, pending)
            try:
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
            except (OSError, ValueError):
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            pending[conn] = _Pending(f"{peer[0]}:{peer[1]}", time.monotonic() + self.handshake_timeout)
        return True

    def _drop_pending(self, conn: socket.socket, sel: selectors.BaseSelector,
                      pending: dict[socket.socket, _Pending], refused: bool = True) -> None:
        pending.pop(conn, None)
        if refused:
            self.refused += 1
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def _hello_ready(self, conn: socket.socket, sel: selectors.BaseSelector,
                     pending: dict[socket.socket, _Pending]) -> None:
        """Read what the viewer sent; once its hello is whole, answer it (off the selector)."""
        p = pending.get(conn)
        if p is None:
            return
        try:
            chunk = conn.recv(max(1, _hello_size(p.buf) - len(p.buf)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        p.buf += chunk
        whole = len(p.buf) >= _hello_size(p.buf)
        if (not chunk or not wire.MAGIC.startswith(bytes(p.buf[: len(wire.MAGIC)]))
                or _hello_size(p.buf) > _HELLO_HEAD + wire.MAX_TOKEN):
            self._drop_pending(conn, sel, pending)  # closed early, not our protocol, or a token too long
            return
        if whole:
            pending.pop(conn, None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                sel.unregister(conn)
            self._handshake(conn, p.peer, bytes(p.buf))

    def _handshake(self, conn: socket.socket, peer: str, hello: bytes) -> None:
        """Answer a whole hello; a viewer that passes gets its own sender thread."""
        try:
            conn.setblocking(True)
            conn.settimeout(self.send_timeout)  # a welcome is a few bytes: it fits any socket buffer
            version, token = wire.read_hello(_Received(hello))
            if version != wire.VERSION:
                conn.sendall(
                    wire.encode_welcome(
                        wire.BAD_VERSION,
                        time.perf_counter_ns(),
                        f"agent speaks version {wire.VERSION}, viewer {version}",
                    )
                )
                raise wire.WireError("version")
            # constant-time compare, so response timing does not leak the token
            expected = self.token or b""
            if not hmac.compare_digest(token, expected):
                conn.sendall(wire.encode_welcome(wire.BAD_TOKEN, time.perf_counter_ns(), "wrong token"))
                raise wire.WireError("token")
            if self.viewers >= max(1, self.max_viewers):
                conn.sendall(wire.encode_welcome(
                    _BUSY, time.perf_counter_ns(), f"{self.viewers} viewers connected already (the most)"))
                raise wire.WireError("busy")
            conn.sendall(wire.encode_welcome(wire.OK, time.perf_counter_ns()))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:  # whatever a stranger sends: refuse it and go on
            self.refused += 1
            with contextlib.suppress(OSError):
                conn.close()
            return
        v = _Viewer(conn, peer)
        self._enqueue(v, 0, self._source_frame, force=True)
        with self._lock:  # flush() publishes under this lock too: the backlog and live batches stay in order
            for n, item in self._backlog:
                self._enqueue(v, n, item, force=True)
            self._viewers.append(v)
            self.connections += 1
        try:
            threading.Thread(target=self._sender, args=(v,), name="llmtop-agent-viewer", daemon=True).start()
        except RuntimeError:  # no thread to be had: let this viewer go rather than the accept loop
            self._close_viewer(v)

    def _enqueue(self, v: _Viewer, n: int, item: Any, force: bool = False) -> None:
        with v.cond:
            if v.closed:
                return
            if not force and (
                v.events + n > self.viewer_buffer_events or len(v.items) >= self.viewer_buffer_items
            ):
                v.dropped += n
                return
            v.items.append((n, item))
            v.events += n
            v.cond.notify()

    def _sender(self, v: _Viewer) -> None:
        last_status = 0.0
        try:
            while not self._stop.is_set():
                with v.cond:
                    if not v.items:
                        v.cond.wait(0.5)
                    items = list(v.items)
                    v.items.clear()
                    v.events = 0
                    if v.closed:
                        return
                out = bytearray()
                for _, item in items:
                    if isinstance(item, tuple):  # (n_kernels, n_steps, body, names_end)
                        nk, ns, body, names_end = item
                        names = self.names.names[v.names_sent : names_end] if names_end > v.names_sent else []
                        out += wire.batch_frame(v.names_sent, names, nk, ns, body)
                        v.names_sent += len(names)
                    else:
                        out += item
                now = time.monotonic()
                if now - last_status >= 0.5:
                    last_status = now
                    out += wire.json_frame(
                        wire.STATUS, {"dropped": v.dropped, "t_ns": time.perf_counter_ns()}
                    )
                if out:
                    v.sock.sendall(out)
                    v.sent_frames += len(items)
        except OSError:
            pass
        finally:
            self._close_viewer(v)

    def _close_viewer(self, v: _Viewer) -> None:
        with v.cond:
            v.closed = True
            v.cond.notify()
        with self._lock:
            if v in self._viewers:
                self._viewers.remove(v)
        with contextlib.suppress(OSError):
            v.sock.close()

    def _publish_loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self.flush()
            if stopping:
                return
            self._stop.wait(self.interval)

    def record_to(self, path: str) -> None:
        """Also write every drained batch (and the source) to a llmtop recording at `path` (`llmtop run`)."""
        from llmtop.traces.recording import RecordingWriter

        with self._lock:
            self._recording = RecordingWriter(path, self._source)

    def flush(self) -> int:
        """Drain every recorder now and queue the batches for the viewers; returns events published."""
        with self._lock:
            recorders = list(self._recorders)
        total = 0
        for rec in recorders:
            b = rec.drain()
            if b is None:
                continue
            n = len(b)
            total += n
            # ids in this batch are all below the table's current length: send names up to there
            item = (len(b.kernels), len(b.steps), wire.encode_batch_body(b.kernels, b.steps), len(self.names))
            with self._lock:
                if self._recording is not None:
                    self._recording.write(b)
                self._backlog.append((n, item))
                self._backlog_n += n
                while self._backlog_n > self.backlog_events and len(self._backlog) > 1:
                    self._backlog_n -= self._backlog.popleft()[0]
                viewers = list(self._viewers)
                taps = list(self._taps)
            for v in viewers:
                self._enqueue(v, n, item)
            for fn in taps:
                try:
                    fn(b)
                except Exception:
                    self.tap_errors += 1
        self.published_events += total
        return total

    def drained(self) -> bool:
        """Every viewer's queue is empty (what was published has been handed to the socket)."""
        for v in self._viewer_list():
            with v.cond:
                if v.items:
                    return False
        return True
