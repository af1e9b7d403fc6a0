"""The serving loop: a scheduler thread that batches queued requests through `Engine.generate`.

Batches are formed at the start of a generation (static batching): up to max_batch waiting requests
with the same sampling parameters run together, prefill then decode. The engine's per-step `on_tokens`
callback hands every generated token to its request as it is sampled and stops rows whose client went
away, so the engine's own loop (and its recorder steps, which the agent and the TUI read) is the only
decode loop. Requests that arrive meanwhile wait for the next batch; finished or cancelled rows stop
counting but keep the batch shape.

Isolation: a request can never fail another one. `submit` bounds what a request may ask for (its
max_tokens is clamped to the context, its sampling must be finite and in range); a sink that raises
(its client's side broke) cancels only its own request; and when `Engine.generate` raises for a batch
of several requests before they got tokens, each is rerun alone, so only the request that fails on its
own gets the error. A cancelled request (its client went away, or `abort_all` at shutdown) leaves the
batch at the next step: `on_tokens` runs after every engine step and stops its row.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmtop.errors import LlmtopError
from llmtop.kernels.base import SamplingParams

_ids = itertools.count(1)
log = logging.getLogger("llmtop.serve")


class Overloaded(LlmtopError):
    """Too many waiting requests (HTTP 503)."""


class ShuttingDown(LlmtopError):
    """The server is stopping and takes no new requests (HTTP 503)."""


@dataclass(eq=False)
class Request:
    """One completion. `sink(kind, payload)` is called on the scheduler thread: ("token", (id, text delta))
    per token, then ("done", finish_reason) or ("error", message)."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    sink: Callable[[str, Any], None]
    id: str = field(default_factory=lambda: f"cmpl-{next(_ids)}")
    arrival: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    first_t: float | None = None
    last_t: float | None = None
    finish_reason: str | None = None
    abort_reason: str | None = None  # why it was cancelled: "client disconnected", "shutdown", ...
    error_status: int = 500  # HTTP status of an ("error", message): 400 when the engine refused the request

    def cancel(self, reason: str) -> None:
        """Stop generating for this request at the next engine step (any thread)."""
        if self.abort_reason is None:
            self.abort_reason = reason
        self.cancelled = True


class Scheduler:
    def __init__(
        self,
        engine: Any,
        metrics: Any = None,
        *,
        max_batch: int | None = None,
        max_waiting: int = 1024,
        agent: Any = None,
        gather_s: float = 0.02,
    ) -> None:
        self.engine = engine
        # Batches form only when a generation starts, so wait this long for companions of a lone request
        # (clients that fire together rarely land in the same millisecond).
        self.gather_s = gather_s
        self.metrics = metrics
        self.max_batch = max_batch or engine.max_batch
        if self.max_batch > engine.max_batch:
            raise LlmtopError(f"max_batch {self.max_batch} exceeds the engine's {engine.max_batch}")
        self.max_waiting = max_waiting
        self.agent = agent
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = 0
        self._kv_used = 0
        self._last_counters = 0.0
        self.batches = 0
        self.error: str | None = None
        self.aborted = 0  # requests finished with "abort" (client gone, shutdown)
        self._closed = False  # abort_all ran: no new requests, no new batches
        self._current: list[Request] = []

    # -- API (any thread) ------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        """Queue a request; LlmtopError (nothing queued) when it asks for something out of bounds,
        Overloaded or ShuttingDown when the server cannot take it."""
        ctx = self.engine.max_context
        if not isinstance(req.prompt_ids, list) or not req.prompt_ids:
            raise LlmtopError("a prompt needs at least one token")
        if len(req.prompt_ids) >= ctx:
            raise LlmtopError(f"prompt is {len(req.prompt_ids)} tokens; the context is {ctx}")
        mt = req.max_tokens
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 0:
            raise LlmtopError(f"max_tokens must be a non-negative integer, got {mt!r}")
        req.max_tokens = min(mt, ctx)  # the engine stops a row at the context anyway; keep it int64-sized
        _check_sampling(req.sampling)
        with self._cond:
            if self._closed:
                raise ShuttingDown("server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded("server overloaded: too many waiting requests")
            self._waiting.append(req)
            self._cond.notify()
        self._gauges()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmtop-serve-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Abort everything (running rows leave the engine within one step) and join the thread."""
        self.abort_all("shutdown")
        if self._thread is not None:
            self._thread.join(timeout)

    def abort_all(self, reason: str = "shutdown") -> int:
        """Refuse new requests, cancel the running batch (the engine stops within one step) and finish
        every waiting request with "abort". Returns how many requests were cancelled. Any thread."""
        with self._cond:
            self._closed = True
            self._stop.set()
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        running = [r for r in self._current if r.finish_reason is None]
        for r in running:
            r.cancel(reason)
        for r in waiting:
            if r.finish_reason is None:
                r.cancel(reason)
                self._finish(r, "abort")
        self._gauges(force=True)
        return len(running) + len(waiting)

    @property
    def in_flight(self) -> int:
        """Requests accepted and not finished: the running batch's live rows plus the waiting ones."""
        return sum(r.finish_reason is None for r in self._current) + len(self._waiting)

    # -- scheduler thread ------------------------------------------------------------------
    def _take(self) -> list[Request]:
        dropped: list[Request] = []
        batch: list[Request] = []
        with self._cond:
            while not self._waiting and not self._stop.is_set():
                self._cond.wait(0.5)
            if self._waiting and not self._stop.is_set():
                end = time.monotonic() + self.gather_s
                while len(self._waiting) < self.max_batch and not self._stop.is_set():
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if not self._stop.is_set():
                first = next((r for r in self._waiting if not r.cancelled), None)
                rest: deque[Request] = deque()
                while self._waiting:
                    r = self._waiting.popleft()
                    if r.cancelled:
                        dropped.append(r)
                    elif first is not None and len(batch) < self.max_batch and r.sampling == first.sampling:
                        batch.append(r)
                    else:
                        rest.append(r)
                self._waiting = rest
                self._current = batch
        for r in dropped:  # cancelled while waiting: never ran, but counted and answered
            self._finish(r, "abort")
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                continue
            self.running = len(batch)
            self._gauges()
            try:
                self._run_isolated(batch)
            finally:
                self.running = 0
                self._kv_used = 0
                self.batches += 1
                self._current = []
                self._gauges(force=True)
        self.abort_all("shutdown")  # whatever still waits is answered, never left hanging

    def _run_isolated(self, batch: list[Request]) -> None:
        """Run a batch; when it raises, rerun alone each request that got no token yet, so the error lands
        on the request that causes it and not on its batch mates."""
        try:
            self._run(batch)
            return
        except Exception as e:  # one bad batch must not kill the server
            err = e
        retry = [r for r in batch if r.finish_reason is None and not r.token_ids and not r.cancelled]
        if len(batch) == 1 or not retry:
            retry = []
        for r in batch:
            if r.finish_reason is None and r not in retry:
                self._fail(r, err)
        if retry:
            log.warning("a batch of %d failed (%s); rerunning %d request(s) one by one",
                        len(batch), _describe(err), len(retry))
        for r in retry:
            if self._stop.is_set():
                self._finish(r, "abort")
                continue
            self._current = [r]
            try:
                self._run([r])
            except Exception as e:
                self._fail(r, e)

    def _fail(self, r: Request, err: BaseException) -> None:
        msg = _describe(err)
        if isinstance(err, LlmtopError):  # the engine refused this request's input: the client's fault
            r.error_status = 400
        else:
            self.error = msg
            log.warning("request %s failed: %s", r.id, msg)
        r.finish_reason = "error"
        self._send(r, "error", msg)

    def _emit(self, r: Request, tok: int, now: float) -> None:
        eng = self.engine
        r.token_ids.append(tok)
        text = eng.decode_tokens(r.token_ids)
        delta = text[len(r.text) :] if text.startswith(r.text) else text  # decoders may revise a partial char
        r.text = text
        if self.metrics is not None:
            if r.first_t is None:
                self.metrics.first_token(now - r.arrival)
            else:
                self.metrics.inter_token(now - (r.last_t or now))
        if r.first_t is None:
            r.first_t = now
        r.last_t = now
        self._send(r, "token", (tok, delta))

    def _send(self, r: Request, kind: str, payload: Any) -> None:
        """Hand an event to a request's sink; a sink that raises cancels its own request and nothing else."""
        try:
            r.sink(kind, payload)
        except Exception as e:
            r.cancel(f"its sink failed: {_describe(e)}")

    def _finish(self, r: Request, reason: str) -> None:
        r.finish_reason = reason
        if reason == "abort":
            self.aborted += 1
            log.info("request %s aborted after %d token(s): %s", r.id, len(r.token_ids),
                     r.abort_reason or "server stopping")
        if self.metrics is not None:
            self.metrics.finished(r, time.perf_counter() - r.arrival)
        self._send(r, "done", reason)

    def _run(self, reqs: list[Request]) -> None:
        eng = self.engine
        lens = [len(r.prompt_ids) for r in reqs]
        if self.metrics is not None:
            self.metrics.prompt_tokens(sum(lens))
        used = list(lens)  # KV slots each live row holds, for the kv_cache gauge
        live = [True] * len(reqs)
        reasons = {"eos": "stop", "length": "length"}

        def on_tokens(step: int, tokens: list[int | None], finished: list[str | None]) -> list[int]:
            now = time.perf_counter()
            stop: list[int] = []
            for b, tok in enumerate(tokens):
                if tok is None or not live[b]:
                    continue
                r = reqs[b]
                try:
                    if r.cancelled:  # the client went away: drop this token, free the row
                        live[b] = False
                        stop.append(b)
                        self._finish(r, "abort")
                        continue
                    self._emit(r, tok, now)
                    used[b] += 1
                    if r.cancelled and finished[b] is None:  # its sink failed on this token
                        live[b] = False
                        stop.append(b)
                        self._finish(r, "abort")
                        continue
                    if finished[b] is not None:
                        live[b] = False
                        self._finish(r, reasons[finished[b]])
                except Exception as e:  # this row's detokenizing or bookkeeping failed: only this row
                    live[b] = False
                    stop.append(b)
                    if r.finish_reason is None:
                        self._fail(r, e)
            self._kv_used = sum(u for u, alive in zip(used, live, strict=True) if alive)
            self._gauges()
            return stop

        gens = eng.generate(
            [r.prompt_ids for r in reqs],
            [r.max_tokens for r in reqs],
            reqs[0].sampling,
            stop_event=self._stop,
            on_tokens=on_tokens,
        )
        for r, g, alive in zip(reqs, gens, live, strict=True):
            if alive:  # asked for no tokens ("length"), or stopped with the server before finishing
                self._finish(r, "length" if g.finish_reason == "length" else "abort")

    def _gauges(self, force: bool = False) -> None:
        try:
            self._publish_gauges(force)
        except Exception as e:  # a gauge must never fail a request
            log.debug("gauges: %s", _describe(e))

    def _publish_gauges(self, force: bool) -> None:
        cap = self.max_batch * self.engine.max_context
        kv = self._kv_used / cap if cap else 0.0
        if self.metrics is not None:
            self.metrics.gauges(self.running, len(self._waiting), kv)
        now = time.monotonic()
        if self.agent is not None and (force or now - self._last_counters >= 0.25):
            self._last_counters = now
            self.agent.publish_counters(
                "serve", {"running": self.running, "waiting": len(self._waiting), "kv_cache": kv}
            )


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, LlmtopError) else f"{type(e).__name__}: {e}"


def _check_sampling(sp: SamplingParams) -> None:
    t, p, k, seed = sp.temperature, sp.top_p, sp.top_k, sp.seed
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise LlmtopError(f"temperature must be a finite number >= 0, got {t!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise LlmtopError(f"top_p must be in (0, 1], got {p!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise LlmtopError(f"top_k must be an integer >= 0, got {k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise LlmtopError(f"seed must be an integer in [0, 2**64), got {seed!r}")
