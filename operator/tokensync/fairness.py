"""Which due refresh runs next: fair across namespaces, and no host holds more than its share.

A first-in, first-out ready queue let one tenant delay every other: a few dozen credentials
aimed at a host that accepts connections and never answers each held a worker for the
whole request timeout, and the work of every other namespace waited behind them (issue 14
section 2, decision 0034). :class:`FairReady` hands out due keys so that

- namespaces (*groups*) take turns: one with a thousand due keys and one with a single due
  key alternate, so the single key runs next;
- no group and no destination host (*lane*) holds more than ``share`` workers at once: a
  slow host, or a namespace aimed at many slow hosts, is slow in its own share of the pool
  and nowhere else. A key whose lane is full waits *parked*, holding no worker, and is
  handed out when its lane has room again;
- within a group, the key with the lowest *rank* goes first (for refreshes: the one whose
  token expires first), and keys of equal rank in the order they became due. A backlog
  (every refresh due at once after a restart, or forced) then drains in the order its
  tokens expire, so the fewest expire before their refresh.

Pure bookkeeping, no clock and no I/O: the refresh queue says what is due and what ended.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
Classify = Callable[[K], Hashable]
Rank = Callable[[K], float]
#: A waiting key: its rank, its place in arrival order, the key, and since when it is due.
Item = tuple[float, int, K, float]


class FairReady(Generic[K]):
    """Due keys, handed out round-robin across groups, within each group's and lane's share.

    ``group(key)`` and ``rank(key)`` are read once, when the key is added, ``lane(key)`` when
    it is handed out; ``None`` as a lane means no lane (unlimited). Within a group keys go
    lowest rank first, and in the order they became due among equal ranks (without
    ``rank``, all rank equal).
    """

    def __init__(
        self,
        *,
        share: int,
        group: Classify[K],
        lane: Classify[K],
        rank: Rank[K] | None = None,
    ) -> None:
        if share < 1:
            raise ValueError("share must be at least 1")
        self._share = share
        self._group = group
        self._lane = lane
        self._rank = rank
        self._arrivals = itertools.count()
        self._ready: dict[Hashable, list[Item[K]]] = {}  # a heap per group
        self._turns: collections.deque[Hashable] = collections.deque()  # groups with ready keys
        self._parked: dict[Hashable, collections.deque[Item[K]]] = {}
        self._held: collections.Counter[Hashable] = collections.Counter()  # running per group
        self._busy: collections.Counter[Hashable] = collections.Counter()  # running per lane
        self._running: dict[K, tuple[Hashable, Hashable]] = {}

    def __len__(self) -> int:
        """Keys waiting: ready or parked."""
        return sum(map(len, self._ready.values())) + sum(map(len, self._parked.values()))

    def add(self, key: K, due: float) -> None:
        """``key`` is due (since ``due``) and not running."""
        rank = self._rank(key) if self._rank is not None else 0.0
        self._enqueue(self._group(key), (rank, next(self._arrivals), key, due))

    def take(self) -> tuple[K, float] | None:
        """The next key to run, or None when nothing may run now. Call :meth:`done` after."""
        for _ in range(len(self._turns)):
            group = self._turns.popleft()
            if self._held[group] >= self._share:
                self._turns.append(group)  # its turn comes back when one of its keys ends
                continue
            found = self._first_runnable(group)
            if self._ready.get(group):
                self._turns.append(group)
            else:
                self._ready.pop(group, None)
            if found is not None:
                return found
        return None

    def done(self, key: K) -> None:
        """``key``'s run ended: its group and lane have a place again."""
        group, lane = self._running.pop(key)
        _decrement(self._held, group)
        if lane is None:
            return
        _decrement(self._busy, lane)
        parked = self._parked.get(lane)
        if parked:
            waiting = parked.popleft()
            if not parked:
                del self._parked[lane]
            # Back in its group with its rank and arrival: ahead of what arrived since.
            self._enqueue(self._group(waiting[2]), waiting)

    def _first_runnable(self, group: Hashable) -> tuple[K, float] | None:
        items = self._ready[group]
        while items:
            item = heapq.heappop(items)
            _, _, key, due = item
            lane = self._lane(key)
            if lane is not None and self._busy[lane] >= self._share:
                self._parked.setdefault(lane, collections.deque()).append(item)
                continue
            self._held[group] += 1
            if lane is not None:
                self._busy[lane] += 1
            self._running[key] = (group, lane)
            return key, due
        return None

    def _enqueue(self, group: Hashable, item: Item[K]) -> None:
        items = self._ready.get(group)
        if items is None:
            items = self._ready[group] = []
            self._turns.append(group)
        heapq.heappush(items, item)


def _decrement(counter: collections.Counter[Hashable], key: Hashable) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
