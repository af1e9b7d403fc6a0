"""A bounded multi-producer queue that never blocks a live producer: on overflow it drops and counts.

Bounded by item count and by event count (batches vary from one step to hundreds), so a stalled
consumer costs at most `max_events` events of memory instead of growing without limit.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sized
from typing import Generic, TypeVar

T = TypeVar("T", bound=Sized)


class BoundedQueue(Generic[T]):
    def __init__(self, max_items: int = 1024, max_events: int = 1_000_000) -> None:
        if max_items < 1 or max_events < 1:
            raise ValueError("queue bounds must be positive")
        self.max_items = max_items
        self.max_events = max_events
        self._items: deque[T] = deque()
        self._events = 0
        self._cond = threading.Condition(threading.Lock())
        self.dropped_items = 0
        self.dropped_events = 0
        self.put_items = 0

    def _fits(self, n: int) -> bool:
        # An item larger than max_events alone is still accepted into an empty queue, else a huge
        # batch could never pass.
        if len(self._items) >= self.max_items:
            return False
        return self._events + n <= self.max_events or not self._items

    def put(self, item: T) -> bool:
        """Enqueue without blocking; False (and counted) when the queue is full."""
        n = len(item)
        with self._cond:
            if not self._fits(n):
                self.dropped_items += 1
                self.dropped_events += n
                return False
            self._items.append(item)
            self._events += n
            self.put_items += 1
            self._cond.notify_all()  # the consumer and blocked put_wait producers share it
        return True

    def put_force(self, item: T) -> None:
        """Enqueue past the bounds: only for tiny items that must not be lost (name-table updates)."""
        with self._cond:
            self._items.append(item)
            self._events += len(item)
            self.put_items += 1
            self._cond.notify_all()  # the consumer and blocked put_wait producers share it

    def put_wait(self, item: T, timeout: float | None = None) -> bool:
        """Blocking put for sources that can wait (replay): nothing is dropped, False on timeout."""
        n = len(item)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._fits(n):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            self._items.append(item)
            self._events += n
            self.put_items += 1
            self._cond.notify_all()
        return True

    def get_many(self, timeout: float | None = None, max_items: int | None = None) -> list[T]:
        """Everything queued (up to max_items), waiting up to `timeout` for the first item."""
        with self._cond:
            if not self._items and timeout != 0:
                self._cond.wait_for(lambda: bool(self._items), timeout)
            out: list[T] = []
            while self._items and (max_items is None or len(out) < max_items):
                item = self._items.popleft()
                self._events -= len(item)
                out.append(item)
            if out:
                self._cond.notify_all()  # wake blocked put_wait producers
            return out

    def __len__(self) -> int:
        return len(self._items)

    @property
    def events(self) -> int:
        return self._events

    @property
    def fill(self) -> float:
        """How full the queue is (0..1), by whichever bound is closer."""
        return max(len(self._items) / self.max_items, self._events / self.max_events)
