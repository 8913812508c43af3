"""Alarms at wall-clock times that no worker has to be free for.

A credential's status must say Expired when its token expires, whether its refresh is in
flight, waiting for a worker behind other namespaces' work, or parked behind a slow host
(issue 14 section 2). The refresh queue cannot be the timer for that: its due keys wait
for a worker by design. One heap and one task ring every alarm instead, at its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

logger = logging.getLogger(__name__)

#: The alarm loop looks at the clock at least this often (a wall clock can jump).
POLL_INTERVAL = 1.0


class Alarms(Generic[K]):
    """At most one alarm per key; setting one replaces the key's previous alarm."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, K]] = []
        # Each key's live heap entry, the same tuple as in the heap (decision 0057).
        self._set: dict[K, tuple[float, int, K]] = {}
        self._seq = 0
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._set)

    def at(self, key: K) -> float | None:
        entry = self._set.get(key)
        return entry[0] if entry else None

    def set(self, key: K, *, at: float) -> None:
        entry = self._set.get(key)
        if entry is not None and entry[0] == at:
            return  # the watch repeats what it said: no new heap entry
        self._seq += 1
        entry = self._set[key] = (at, self._seq, key)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()

    def cancel(self, key: K) -> None:
        self._set.pop(key, None)

    def _due(self, now: float) -> list[K]:
        rung = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            key = entry[2]
            if self._set.get(key) is entry:
                del self._set[key]
                rung.append(key)
        return rung

    async def run(self, ring: Callable[[K], Awaitable[None]]) -> None:
        """Call ``ring(key)`` for each alarm at its time, until cancelled."""
        while True:
            for key in self._due(self._clock()):
                try:
                    await ring(key)
                except Exception:
                    logger.exception("alarm for %s failed", key)
            while self._heap and self._set.get(self._heap[0][2]) is not self._heap[0]:
                heapq.heappop(self._heap)  # cancelled or replaced
            timeout = POLL_INTERVAL
            if self._heap:
                timeout = min(timeout, max(0.0, self._heap[0][0] - self._clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
