"""Alarms at wall-clock times that no worker has to be free for.

A credential's status must say Expired when its token expires, whether its refresh is in
flight, waiting for a worker behind other namespaces' work, or parked behind a slow host
(issue 14 section 2). The refresh queue cannot be the timer for that: its due keys wait
for a worker by design. One heap and one task ring every alarm instead, at its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from tokensync import dueheap

K = TypeVar("K", bound=Hashable)

logger = logging.getLogger(__name__)

#: The alarm loop looks at the clock at least this often (a wall clock can jump).
POLL_INTERVAL = 1.0


class Alarms(Generic[K]):
    """At most one alarm per key; setting one replaces the key's previous alarm."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._due = dueheap.DueHeap[K]()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def at(self, key: K) -> float | None:
        return self._due.at(key)

    def set(self, key: K, *, at: float) -> None:
        if self._due.at(key) == at:
            return  # the watch repeats what it said: no new heap entry
        if self._due.put(key, at):
            self._wake.set()

    def cancel(self, key: K) -> None:
        self._due.remove(key)

    async def run(self, ring: Callable[[K], Awaitable[None]]) -> None:
        """Call ``ring(key)`` for each alarm at its time, until cancelled."""
        while True:
            for key, _ in self._due.pop_due(self._clock()):
                try:
                    await ring(key)
                except Exception:
                    logger.exception("alarm for %s failed", key)
            first = self._due.first()
            timeout = POLL_INTERVAL
            if first is not None:
                timeout = min(timeout, max(0.0, first - self._clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
