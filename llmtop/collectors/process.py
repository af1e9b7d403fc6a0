"""Process gauges via psutil, ~1/s: the process running the engine (this one, or the engine worker), or
with `tree=True` a command and all its descendants summed (`llmtop run`: vLLM's API server, engine core
and worker are three processes; the model runs in the last)."""

from __future__ import annotations

import time

import psutil

from llmtop.collectors.base import Collector
from llmtop.events import CounterSample


class ProcessCollector(Collector):
    name = "process"

    def __init__(self, interval: float = 1.0, pid: int | None = None, *, tree: bool = False) -> None:
        super().__init__()
        self.interval = interval
        self.proc = psutil.Process(pid)
        self.tree = tree
        self._procs: dict[int, psutil.Process] = {self.proc.pid: self.proc}  # kept: cpu_percent needs its
        # previous reading, so a child seen for the first time counts from the next sample on

    def _members(self) -> list[psutil.Process]:
        if not self.tree:
            return [self.proc]
        try:
            kids = self.proc.children(recursive=True)
        except psutil.Error:
            kids = []
        live = {self.proc.pid: self.proc}
        for k in kids:
            live[k.pid] = self._procs.get(k.pid, k)
        self._procs = live
        return list(live.values())

    def sample(self) -> CounterSample:
        if not self.proc.is_running():
            raise psutil.NoSuchProcess(self.proc.pid)
        cpu = rss = threads = 0.0
        n = 0
        for p in self._members():
            try:
                with p.oneshot():
                    cpu += p.cpu_percent(None)  # % of one core since the previous call (can exceed 100)
                    rss += p.memory_info().rss
                    threads += p.num_threads()
                n += 1
            except psutil.Error:  # a child that ended between listing and reading
                if p is self.proc:
                    raise
        if rss <= 0:  # a process that has exited but not been reaped reads as empty: keep the last sample
            raise psutil.NoSuchProcess(self.proc.pid)
        values = {"cpu_pct": cpu, "rss_bytes": rss, "threads": threads,
                  "sys_cpu_pct": float(psutil.cpu_percent(None))}
        if self.tree:
            values["processes"] = float(n)
        return CounterSample(self.name, time.perf_counter_ns(), values)

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
