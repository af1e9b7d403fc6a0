"""The viewer side of the agent protocol: a Collector that connects, reconnects and re-maps names.

Each connection has its own remote name table; ids are re-mapped into one local table shared by every
attach collector of the pipeline, so a server restart (new ids) or several agents feeding one
Aggregator never mix names up. Agent clocks are shifted onto this process's perf_counter_ns by the
offset measured at the handshake (zero on the same host, up to network latency elsewhere).
Everything the agent sends as text (kernel names, the source, counter names, refusals) has its control
characters escaped on arrival, so no view can hand a remote escape sequence to the terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from llmtop.agent import wire
from llmtop.agent.core import parse_addr
from llmtop.attach.link import LinkLog, safe_text
from llmtop.collectors.base import Collector
from llmtop.events import DECODE, CounterSample, EventBatch, Marker, NameTable, SourceInfo
from llmtop.numfmt import printable

CONNECTING, CONNECTED, DISCONNECTED, REFUSED = "connecting", "connected", "disconnected", "refused"


class NameStream:
    """One local name table + the count of names already sent downstream, shared by all collectors.

    Interning and queueing happen under one lock so the queue sees names in id order.
    """

    def __init__(self) -> None:
        self.names = NameTable()
        self.sent = 0
        self.lock = threading.Lock()


class AgentCollector(Collector):
    """Stream EventBatches from an llmtop agent at `url` (llmtop://host:port, tcp://host:port, host:port)."""

    name = "agent"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        stream: NameStream | None = None,
        label: str | None = None,
        on_source: Callable[[SourceInfo], None] | None = None,
        backoff: tuple[float, float] = (0.2, 5.0),
        connect_timeout: float = 2.0,
        max_frame: int = wire.MAX_FRAME,
        rate_window_s: float = 5.0,
    ) -> None:
        super().__init__(label or f"agent {url}")
        self.url = url
        self.host, self.port = parse_addr(url)
        self.token = token
        self.stream = stream or NameStream()
        self.label = label or f"{self.host}:{self.port}"
        self.on_source = on_source
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self.rate_window_s = rate_window_s
        self.link = CONNECTING
        self.link_error: str | None = None
        # This target's events alone, folded as they arrive (set by AttachFleet when several targets are
        # attached): the Servers pane's drill-in shows them on every pane. An Aggregator.
        self.own: Any = None
        self.links = LinkLog()  # first answer and outages, for the --once report
        self.source: SourceInfo | None = None
        self.connects = 0
        self.rejected_frames = 0  # malformed / oversized / unknown frames (each closes the connection)
        self.remote_dropped = 0  # events the agent dropped for us (buffer full), as last reported
        self._remote_dropped_before = 0  # sum over earlier connections
        self.gen_tokens = 0  # generated tokens seen (decode tokens + one per prefilled sequence)
        self.prompt_tokens = 0
        self.steps_seen = 0
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic, gen tokens) for the rate
        self._sock: socket.socket | None = None

    # -- per-target numbers (read by the UI thread) ---------------------------------------------
    @property
    def dropped_remote_total(self) -> int:
        return self._remote_dropped_before + self.remote_dropped

    def tok_per_s(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= self.rate_window_s]
        return sum(n for _, n in recent) / self.rate_window_s if recent else 0.0

    # -- thread ------------------------------------------------------------------------------
    def run(self) -> None:
        t_cpu = time.thread_time()
        delay = self.backoff[0]
        while not self.stopping:
            try:
                self._session(t_cpu)
                delay = self.backoff[0]  # a session that got going resets the backoff
            except _Refused as e:
                self.link, self.link_error = REFUSED, safe_text(e)
                delay = self.backoff[1]  # a refusal will not fix itself quickly
                self._lost()
            except wire.WireError as e:
                self.rejected_frames += 1
                self.link, self.link_error = DISCONNECTED, safe_text(f"bad frame: {e}")
                self._lost()
            except (OSError, ConnectionError) as e:
                was = self.link
                self.link = DISCONNECTED
                self.link_error = safe_text(str(e) or type(e).__name__)
                self._lost()
                if was == CONNECTED:
                    delay = self.backoff[0]
                    self._mark(f"{self.label}: disconnected")
            finally:
                self._close_sock()
            self.account_cpu(t_cpu)
            if self.wait(delay):
                break
            delay = min(delay * 2, self.backoff[1])

    def activity(self) -> str:
        """What the link is doing until the first step arrives (the TUI's waiting note); "" after."""
        if self.steps_seen:
            return ""
        where = f"{self.host}:{self.port}"
        if self.link == CONNECTED:
            return f"connected to the agent at {where}: waiting for its model's first forward"
        if self.link in (DISCONNECTED, REFUSED) and self.link_error:
            tail = "" if self.link == REFUSED else (
                "; retrying" if self.connects else "; retrying (is the agent started? llmtop.agent.start())")
            return f"{where}: {self.link_error}{tail}"
        return f"connecting to the agent at {where}"

    def _lost(self) -> None:
        if not self.stopping:  # stop() closing the socket is no outage
            self.links.down()

    def fail(self, e: BaseException | str) -> None:
        super().fail(e)
        self.error = safe_text(self.error or "")

    def stop(self) -> None:
        super().stop()
        self._close_sock()

    def close(self) -> None:
        self._close_sock()

    def _close_sock(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.close()

    def _mark(self, text: str) -> None:
        if self._queue is not None:
            self._queue.put(Marker(time.perf_counter_ns(), text))

    def _session(self, t_cpu: float) -> None:
        if self.link != CONNECTED and self.connects == 0:
            self.link = CONNECTING
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        self._sock = sock
        sock.settimeout(self.connect_timeout)
        sock.sendall(wire.encode_hello(self.token))
        version, status, clock, msg = wire.read_welcome(sock)
        msg = safe_text(msg)
        if status == wire.BAD_TOKEN:
            raise _Refused(f"agent refused the token ({msg or 'wrong token'})")
        if status != wire.OK or version != wire.VERSION:
            raise _Refused(f"agent refused the connection: {msg or f'status {status}'}")
        offset = time.perf_counter_ns() - clock
        sock.settimeout(1.0)  # a read timeout only lets us notice stop(); it does not end the session
        self.connects += 1
        self._remote_dropped_before += self.remote_dropped
        self.remote_dropped = 0
        self.link, self.link_error = CONNECTED, None
        self.links.up()
        if self.connects > 1:
            self._mark(f"{self.label}: reconnected")
        remote = NameTable()
        remap = np.zeros(0, dtype=np.uint32)
        reader = wire.FrameReader(sock, self.max_frame)
        while not self.stopping:
            got = reader.next()
            if got is None:
                continue
            ftype, payload = got
            if ftype == wire.BATCH:
                b = wire.decode_batch(payload)
                try:
                    remote.extend(b.names_base, b.new_names)
                except ValueError as e:
                    raise wire.WireError(str(e)) from None
                if len(remote) > len(remap):
                    with self.stream.lock:
                        extra = [self.stream.names.intern(printable(n)) for n in remote.names[len(remap) :]]
                    remap = np.concatenate([remap, np.array(extra, dtype=np.uint32)])
                self._deliver(b, remap, offset)
            elif ftype in (wire.SOURCE, wire.STATUS, wire.COUNTER):
                self._json_frame(ftype, payload, offset)
            self.account_cpu(t_cpu)

    def _json_frame(self, ftype: int, payload: bytes, offset: int) -> None:
        """A SOURCE, STATUS or COUNTER frame; a value of the wrong type is a bad frame, not a crash."""
        try:
            d = printable(wire.decode_json(payload))
            if ftype == wire.SOURCE:
                self._set_source(SourceInfo.from_dict(d))
            elif ftype == wire.STATUS:
                self.remote_dropped = int(d.get("dropped", 0))
            else:
                vals = {str(k): float(v) for k, v in dict(d.get("values") or {}).items()}
                sample = CounterSample(
                    f"{self.label}:{d.get('source', 'agent')}", int(d.get("t_ns", 0)) + offset, vals
                )
                if self._queue is not None:
                    self._queue.put(sample)
        except (ValueError, TypeError, AttributeError, OverflowError) as e:
            what = {wire.SOURCE: "source", wire.STATUS: "status"}.get(ftype, "counter")
            raise wire.WireError(f"bad {what} frame: {type(e).__name__}") from None

    def _set_source(self, src: SourceInfo) -> None:
        extra = {**src.extra, "url": self.url, "remote_kind": src.kind, "link": CONNECTED}
        self.source = dataclasses.replace(src, kind="attach", extra=extra)
        if self.own is not None:
            self.own.set_source(self.source)
        if self.on_source is not None:
            self.on_source(self.source)

    def _deliver(self, b: EventBatch, remap: np.ndarray, offset: int) -> None:
        k, s = b.kernels, b.steps
        if len(k):
            if int(k["name"].max()) >= len(remap):
                raise wire.WireError("kernel name id beyond the names sent")
            k["name"] = remap[k["name"]]
            k["start_ns"] += offset
        if len(s):
            s["start_ns"] += offset
            dec = s["phase"] == DECODE
            gen = int(s["tokens"][dec].sum()) + int(s["batch"][~dec].sum())
            self.gen_tokens += gen
            self.prompt_tokens += int(s["tokens"][~dec].sum())
            self.steps_seen += len(s)
            now = time.monotonic()
            self._recent.append((now, gen))
            while self._recent and now - self._recent[0][0] > self.rate_window_s:
                self._recent.popleft()
        assert self._queue is not None
        own_base, own_new = 0, []
        with self.stream.lock:
            new = self.stream.names.since(self.stream.sent)
            out = EventBatch(k, s, self.stream.sent, list(new))
            self.stream.sent += len(new)
            if self._queue.put(out):
                self.emitted_events += len(out)
            else:
                self.dropped_events += len(out)
                if new:  # names must reach the aggregator even when the events cannot
                    self._queue.put_force(EventBatch(names_base=out.names_base, new_names=out.new_names))
            if self.own is not None:  # its own table catches up with every name interned so far
                own_base = len(self.own.names)
                own_new = list(self.stream.names.names[own_base:])
        if self.own is not None:
            # The same arrays (nothing folds them in place), with this target's name table caught up: a
            # name another target interned first reaches this aggregator here.
            self.own.ingest(EventBatch(k, s, own_base, own_new))


class _Refused(Exception):
    pass


def agent_url(url: str) -> bool:
    """True for llmtop://, tcp:// and bare host:port targets."""
    u = url.strip()
    return u.startswith(("llmtop://", "tcp://")) or ("://" not in u and ":" in u)


__all__ = ["CONNECTED", "CONNECTING", "DISCONNECTED", "REFUSED", "AgentCollector", "NameStream", "agent_url"]
