"""Metrics for a process running the llmtop agent (`--metrics-port` on the agent, `llmtop serve` /metrics).

Such a process has no Pipeline: the agent drains its recorders and publishes the batches to viewers.
`AgentFeed` taps that stream (every drained batch, on the agent's publisher thread) into an Aggregator of
its own, so the metrics are the same numbers a viewer would show, and samples this process's gauges
(collectors/process.py, collectors/gpu.py) when scraped. The agent is taken as it is (duck-typed:
`add_tap`, `names`, `source`), so the agent package never imports the statistics.

Cost in the instrumented process: folding batches (~3 M events/s, so ~0.3 % of a core at the decode
loop's ~7 k events/s) and one snapshot per scrape; nothing when no metrics port is asked for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from llmtop.collectors.gpu import GpuCollector
from llmtop.collectors.process import ProcessCollector
from llmtop.events import CounterSample, EventBatch
from llmtop.export.http import MetricsServer
from llmtop.export.options import MetricsOptions
from llmtop.stats.aggregator import Aggregator

WINDOW_S = 10.0  # the aggregator's window (the metrics read its cumulative view only)


class LocalGauges:
    """This process's gauges, sampled when read (at most once per scrape build): psutil, and NVML where
    an NVIDIA GPU is present (the engine's own device when the source names one)."""

    def __init__(self, pid: int | None = None, *, gpu: bool = True) -> None:
        self._proc = ProcessCollector(pid=pid or os.getpid())
        self._gpu: GpuCollector | None = None
        self._gpu_tried = not gpu
        self._lock = threading.Lock()
        self._proc.proc.cpu_percent(None)  # prime: cpu_percent reports the time since the previous call

    def latest(self) -> dict[str, CounterSample]:
        with self._lock:
            out: dict[str, CounterSample] = {}
            with contextlib.suppress(Exception):  # the process is this one: only psutil oddities land here
                out["process"] = self._proc.sample()
            if not self._gpu_tried:  # NVML opened on the first scrape, not when the process starts
                self._gpu_tried = True
                g = GpuCollector()
                self._gpu = g if g.available else None
            if self._gpu is not None:
                with contextlib.suppress(Exception):
                    for s in self._gpu.sample():
                        out[s.source] = s
            return out

    def close(self) -> None:
        if self._gpu is not None:
            self._gpu.close()


class AgentFeed:
    """An Aggregator fed with every batch `agent` drains (taps added before the first drain see it all)."""

    def __init__(self, agent: Any, *, window_s: float = WINDOW_S) -> None:
        self.agent = agent
        self.aggregator = Aggregator(window_s=window_s)
        self.errors = 0
        self._names_sent = 0
        self._lock = threading.Lock()
        agent.add_tap(self._on_batch)

    def _on_batch(self, batch: EventBatch) -> None:
        names = self.agent.names
        with self._lock:
            # The agent's recorders share one name table and each drained batch only uses ids already in
            # it: hand the aggregator the names it has not seen yet, like the agent does for a viewer.
            n = len(names)
            new = list(names.names[self._names_sent:n])
            b = EventBatch(batch.kernels, batch.steps, self._names_sent, new)
            self._names_sent = n
            try:
                self.aggregator.ingest(b)
            except Exception:  # a bad batch must not stop the agent's publisher; the count says it happened
                self.errors += 1

    def snapshot(self, **kw: Any) -> Any:
        """The aggregator's snapshot, with the agent's current source (it changes when a model is found)."""
        self.aggregator.set_source(self.agent.source)
        return self.aggregator.snapshot(**kw)


def serve_agent_metrics(agent: Any, opts: MetricsOptions) -> MetricsServer:
    """Bind opts' port (LlmtopError when taken) and serve the agent's statistics and this process's gauges;
    the agent closes the server when it closes."""
    server = MetricsServer(opts)
    feed = AgentFeed(agent)
    gauges = LocalGauges()
    server.bind(feed, gauges.latest)

    def close() -> None:
        server.close()
        gauges.close()

    agent.add_close_hook(close)
    return server


__all__ = ["AgentFeed", "LocalGauges", "serve_agent_metrics"]
