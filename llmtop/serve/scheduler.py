"""The serving loop: a scheduler thread that batches queued requests through `Engine.generate`.

Batches are formed at the start of a generation (static batching): up to max_batch waiting requests
with the same sampling parameters run together, prefill then decode. The engine's per-step `on_tokens`
callback hands every generated token to its request as it is sampled and stops rows whose client went
away, so the engine's own loop (and its recorder steps, which the agent and the TUI read) is the only
decode loop. Requests that arrive meanwhile wait for the next batch; finished or cancelled rows stop
counting but keep the batch shape.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmtop.errors import LlmtopError
from llmtop.kernels.base import SamplingParams

_ids = itertools.count(1)


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

    # -- API (any thread) ------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        ctx = self.engine.max_context
        if len(req.prompt_ids) >= ctx:
            raise LlmtopError(f"prompt is {len(req.prompt_ids)} tokens; the context is {ctx}")
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise LlmtopError("server overloaded: too many waiting requests")
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
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- scheduler thread ------------------------------------------------------------------
    def _take(self) -> list[Request]:
        with self._cond:
            while not self._waiting and not self._stop.is_set():
                self._cond.wait(0.5)
            while self._waiting and self._waiting[0].cancelled:
                self._waiting.popleft()
            if not self._waiting:
                return []
            end = time.monotonic() + self.gather_s
            while len(self._waiting) < self.max_batch and not self._stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            first = self._waiting[0]
            batch, rest = [], deque()
            while self._waiting:
                r = self._waiting.popleft()
                if r.cancelled:
                    continue
                if len(batch) < self.max_batch and r.sampling == first.sampling:
                    batch.append(r)
                else:
                    rest.append(r)
            self._waiting = rest
            return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                continue
            self.running = len(batch)
            self._gauges()
            try:
                self._run(batch)
            except Exception as e:  # one bad batch must not kill the server
                self.error = f"{type(e).__name__}: {e}"
                for r in batch:
                    if r.finish_reason is None:
                        r.finish_reason = "error"
                        r.sink("error", self.error)
            finally:
                self.running = 0
                self._kv_used = 0
                self.batches += 1
                self._gauges(force=True)

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
        r.sink("token", (tok, delta))

    def _finish(self, r: Request, reason: str) -> None:
        r.finish_reason = reason
        if self.metrics is not None:
            self.metrics.finished(r, time.perf_counter() - r.arrival)
        r.sink("done", reason)

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
                if r.cancelled:  # the client went away: drop this token, free the row
                    live[b] = False
                    stop.append(b)
                    self._finish(r, "abort")
                    continue
                self._emit(r, tok, now)
                used[b] += 1
                if finished[b] is not None:
                    live[b] = False
                    self._finish(r, reasons[finished[b]])
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
