"""Process gauges of the process running the engine (this one, or the engine worker) via psutil, ~1/s."""

from __future__ import annotations

import time

import psutil

from llmtop.collectors.base import Collector
from llmtop.events import CounterSample


class ProcessCollector(Collector):
    name = "process"

    def __init__(self, interval: float = 1.0, pid: int | None = None) -> None:
        super().__init__()
        self.interval = interval
        self.proc = psutil.Process(pid)

    def sample(self) -> CounterSample:
        p = self.proc
        with p.oneshot():
            cpu = p.cpu_percent(None)  # % of one core since the previous call (can exceed 100)
            mem = p.memory_info()
            threads = p.num_threads()
        return CounterSample(
            self.name,
            time.perf_counter_ns(),
            {"cpu_pct": float(cpu), "rss_bytes": float(mem.rss), "threads": float(threads),
             "sys_cpu_pct": float(psutil.cpu_percent(None))},
        )

    def run(self) -> None:
        t0 = time.thread_time()
        self.proc.cpu_percent(None)  # the first call only primes the counters
        psutil.cpu_percent(None)
        while not self.wait(self.interval):
            try:
                sample = self.sample()
            except psutil.NoSuchProcess:  # the engine worker finished: nothing left to sample
                return
            self.emit(sample)
            self.account_cpu(t0)
