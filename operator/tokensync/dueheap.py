"""Keys due at times: the heap under the refresh queue and the expiry alarms.

At most one due time per key. Replacing or removing a key's time leaves its old entry in
the heap, to be dropped when it comes up (a heap cannot remove from its middle cheaply);
so that a credential refreshed ahead of its expiry, or forced ahead of its refresh, does not
keep a dead entry for up to a token's lifetime, the heap is rebuilt from the live entries
whenever the dead ones exceed a quarter of them (issue 19). A rebuild costs one pass over
the live entries and comes after at least a quarter as many replacements: constant time
per replacement, amortised.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

#: Dead entries tolerated beyond a quarter of the live ones (no rebuilds for a few keys).
SLACK = 64


class DueHeap(Generic[K]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        # Each key's live heap entry, the same tuple as in the heap (decision 0057): the
        # key's other entries there are dead, dropped when they come up or at a rebuild.
        self._live: dict[K, tuple[float, int, K]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: K) -> bool:
        return key in self._live

    @property
    def entries(self) -> int:
        """Heap entries, live and dead (for tests and figures)."""
        return len(self._heap)

    def at(self, key: K) -> float | None:
        entry = self._live.get(key)
        return entry[0] if entry else None

    def put(self, key: K, at: float) -> bool:
        """Make ``key`` due at ``at``, replacing its time; True if it is now the first due."""
        self._seq += 1
        entry = self._live[key] = (at, self._seq, key)
        heapq.heappush(self._heap, entry)
        self._compact()
        return self._heap[0] is entry

    def remove(self, key: K) -> None:
        if self._live.pop(key, None) is not None:
            self._compact()

    def pop_due(self, now: float) -> list[tuple[K, float]]:
        """The keys due at or before ``now`` with their due times, in due order; removed."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            key = entry[2]
            if self._live.get(key) is entry:
                del self._live[key]
                due.append((key, entry[0]))
        return due

    def first(self) -> float | None:
        """The earliest live due time (dead entries at the head are dropped)."""
        while self._heap and self._live.get(self._heap[0][2]) is not self._heap[0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _compact(self) -> None:
        live = len(self._live)
        if len(self._heap) - live > live // 4 + SLACK:
            self._heap = list(self._live.values())
            heapq.heapify(self._heap)
