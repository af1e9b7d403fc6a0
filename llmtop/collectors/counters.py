"""The bounded store of sampled counters (process and device gauges) that the header strip reads.

The record types themselves (`CounterSample`, `Marker`) live in `llmtop/events.py` with the rest of the
event schema.
"""

from __future__ import annotations

import threading
from collections import deque

from llmtop.events import CounterSample


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

    def history(self, source: str, name: str, since_ns: int | None = None) -> list[tuple[int, float]]:
        """(t_ns, value) pairs of one gauge, oldest first; empty when never sampled. `since_ns`: only the
        samples from then on (a sparkline's window), found from the newest end without copying the rest."""
        with self._lock:
            h = self._history.get(source)
            if h is None:
                return []
            if since_ns is None:
                samples = list(h)
            else:
                samples = []
                for s in reversed(h):
                    if s.t_ns < since_ns:
                        break
                    samples.append(s)
                samples.reverse()
        return [(s.t_ns, s.values[name]) for s in samples if name in s.values]

    def sources(self) -> list[str]:
        with self._lock:
            return sorted(self._latest)

    def clear(self) -> None:
        with self._lock:
            self._latest.clear()
            self._history.clear()
