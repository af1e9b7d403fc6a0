"""When an attach target could be reached: first contact and every outage after it, and remote text made safe.

A collector calls `up()` when the target answers (an agent's welcome, a /metrics body we could read) and
`down()` when a connection or scrape fails. Time before the first answer is not an outage ("connecting");
an outage runs from the first failure after an answer to the next answer, or to now while it lasts.
Times are on the monotonic clock; reports give them in seconds since the log was made (the attach start).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from llmtop.numfmt import printable


def safe_text(x: Any) -> str:
    """One line of text from a remote target (an error, a refusal message) with control characters escaped."""
    return printable(" ".join(str(x).split()))


@dataclass(frozen=True, slots=True)
class Outage:
    start_s: float  # seconds after the log started
    duration_s: float  # until the target answered again, or until now while `ongoing`
    ongoing: bool


class LinkLog:
    """First answer and outages of one target; written by its collector thread, read by anyone."""

    def __init__(self, now: float | None = None) -> None:
        self.t0 = time.monotonic() if now is None else now
        self.first_up: float | None = None
        self._spans: list[list[float | None]] = []  # [start, end or None while down]
        self._lock = threading.Lock()

    @property
    def reached(self) -> bool:
        """The target answered at least once."""
        return self.first_up is not None

    @property
    def down_now(self) -> bool:
        with self._lock:
            return bool(self._spans) and self._spans[-1][1] is None

    def up(self, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        with self._lock:
            if self.first_up is None:
                self.first_up = t
            elif self._spans and self._spans[-1][1] is None:
                self._spans[-1][1] = t

    def down(self, now: float | None = None) -> None:
        """The target stopped answering; an outage only once it had answered, and one per gap."""
        t = time.monotonic() if now is None else now
        with self._lock:
            if self.first_up is not None and not (self._spans and self._spans[-1][1] is None):
                self._spans.append([t, None])

    def outages(self, now: float | None = None) -> list[Outage]:
        t = time.monotonic() if now is None else now
        with self._lock:
            spans = [(a, b) for a, b in self._spans]
        return [
            Outage(round(a - self.t0, 3), round(max(0.0, (t if b is None else b) - a), 3), b is None)
            for a, b in spans
            if a is not None
        ]

    def disconnected_s(self, now: float | None = None) -> float:
        """Seconds spent disconnected after the first answer, the current outage included."""
        return round(sum(o.duration_s for o in self.outages(now)), 3)


def outage_lines(label: str, outages: Iterable[Outage | Mapping[str, Any]]) -> list[str]:
    """Report warnings, one per outage (an Outage or its dict), e.g.
    "127.0.0.1:8000: disconnected 11.2 s (from 3.0 s into the run, then reconnected)"."""
    out = []
    for o in outages:
        d = asdict(o) if isinstance(o, Outage) else o
        tail = "still disconnected at the end" if d["ongoing"] else "then reconnected"
        when = f"from {float(d['start_s']):.1f} s into the run, {tail}"
        out.append(f"{label}: disconnected {float(d['duration_s']):.1f} s ({when})")
    return out


__all__ = ["LinkLog", "Outage", "outage_lines", "safe_text"]
