"""Sampled counters (process and device gauges) and run markers, plus the bounded store the strip reads.

Kernel events travel as columnar `EventBatch`es; counters are few (about one sample per second per
source), so a small dataclass with a name -> value dict is enough and stays self-describing when
recorded.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class CounterSample:
    """One sample of a source's gauges, e.g. source="process", values={"cpu_pct": 97.0, ...}.

    t_ns is on the same clock as the kernel events (time.perf_counter_ns for live runs).
    """

    source: str
    t_ns: int
    values: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:  # counted as one "event" for drop accounting
        return 1


@dataclass(slots=True)
class Marker:
    """A point in time with a label (a new prompt round, a pause, a collector error)."""

    t_ns: int
    text: str

    def __len__(self) -> int:
        return 1


class CounterStore:
    """Latest sample per source plus a bounded history (memory stays flat on hour-long runs).

    Written by the aggregator thread, read by the UI thread: reads return copies under a lock.
    """

    def __init__(self, history: int = 600) -> None:
        self._history_len = history
        self._latest: dict[str, CounterSample] = {}
        self._history: dict[str, deque[CounterSample]] = {}
        self._lock = threading.Lock()

    def add(self, sample: CounterSample) -> None:
        with self._lock:
            self._latest[sample.source] = sample
            h = self._history.get(sample.source)
            if h is None:
                h = self._history[sample.source] = deque(maxlen=self._history_len)
            h.append(sample)

    def latest(self) -> dict[str, CounterSample]:
        with self._lock:
            return dict(self._latest)

    def history(self, source: str, name: str) -> list[tuple[int, float]]:
        """(t_ns, value) pairs of one gauge, oldest first; empty when never sampled."""
        with self._lock:
            samples = list(self._history.get(source, ()))
        return [(s.t_ns, s.values[name]) for s in samples if name in s.values]

    def sources(self) -> list[str]:
        with self._lock:
            return sorted(self._latest)

    def clear(self) -> None:
        with self._lock:
            self._latest.clear()
            self._history.clear()
