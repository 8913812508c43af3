"""When to act: one refresh queue for every credential, and a per-host request pacer.

A single heap keyed by due time and a bounded pool of workers replace one timer task per
credential: ten thousand credentials cost ten thousand heap entries, not ten thousand
tasks; concurrency has one global bound; and lateness (due time to start) is measured in
one place. Which due key a free worker takes is ``fairness``'s call (decision 0034). Times
are wall-clock seconds (``time.time()``) because due times come from timestamps stored in
status, which must survive a restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from tokensync import config, dueheap, fairness

K = TypeVar("K", bound=Hashable)
Work = Callable[[K, float], Awaitable[None]]

logger = logging.getLogger(__name__)

#: The dispatcher wakes at least this often, so its heartbeat proves it is alive.
HEARTBEAT_INTERVAL = 1.0


class RefreshQueue(Generic[K]):
    """Keys become due at a wall-clock time; due keys run on at most ``workers`` tasks.

    A key runs on one worker at a time. :meth:`trigger` during a run makes the key run again
    right after, so a change that arrives mid-refresh is never lost.

    With ``group`` (a key's tenant) and ``lane`` (the host its work waits on), due keys are
    handed out in turns across groups, and no group or lane holds more than half the
    workers (``fairness.FairReady``); without them, in the order they became due. With
    ``rank``, a group's lowest-ranked due key goes first (the refreshes: earliest expiry).
    """

    def __init__(
        self,
        *,
        workers: int,
        clock: Callable[[], float] = time.time,
        group: fairness.Classify[K] | None = None,
        lane: fairness.Classify[K] | None = None,
        rank: fairness.Rank[K] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._workers = workers
        self._clock = clock
        self._pending = dueheap.DueHeap[K]()
        self._running: set[K] = set()  # handed to the ready set until its run ends
        self._active: set[K] = set()  # taken by a worker: its run has begun
        self._dirty: set[K] = set()
        fair = group is not None or lane is not None
        self._ready = fairness.FairReady[K](
            share=max(1, workers // 2) if fair else workers,
            group=group or _one_group,
            lane=lane or _no_lane,
            rank=rank,
        )
        self._available = asyncio.Event()
        self._wake = asyncio.Event()
        self.heartbeat = time.monotonic()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def waiting(self) -> int:
        """Due keys that no worker has taken yet."""
        return len(self._ready)

    def due_at(self, key: K) -> float | None:
        return self._pending.at(key)

    def is_running(self, key: K) -> bool:
        """Due and not done: waiting for a worker, or with one (see :meth:`is_active`)."""
        return key in self._running

    def is_active(self, key: K) -> bool:
        """A worker is doing its work now."""
        return key in self._active

    def active(self) -> frozenset[K]:
        """The keys whose work a worker is doing now (at most ``workers``)."""
        return frozenset(self._active)

    def is_known(self, key: K) -> bool:
        return key in self._pending or key in self._running

    def schedule(self, key: K, *, at: float) -> None:
        """Make ``key`` due at ``at``, replacing any due time it had."""
        if self._pending.put(key, at):
            self._wake.set()

    def trigger(self, key: K) -> None:
        """Run ``key`` as soon as possible (again, if it is running now)."""
        if key in self._running:
            self._dirty.add(key)
        else:
            self.schedule(key, at=self._clock())

    def cancel(self, key: K) -> None:
        self._pending.remove(key)
        self._dirty.discard(key)

    async def run(self, work: Work[K]) -> None:
        """Dispatch due keys to the workers until cancelled."""
        workers = [asyncio.create_task(self._worker(work)) for _ in range(self._workers)]
        try:
            await self._dispatch()
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _pop_due(self, now: float) -> None:
        for key, at in self._pending.pop_due(now):
            if key in self._running:
                self._dirty.add(key)
            else:
                self._running.add(key)
                self._ready.add(key, at)
                self._available.set()

    async def _dispatch(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            now = self._clock()
            self._pop_due(now)
            first = self._pending.first()
            timeout = HEARTBEAT_INTERVAL
            if first is not None:
                timeout = min(timeout, max(0.0, first - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _worker(self, work: Work[K]) -> None:
        while True:
            self._available.clear()
            taken = self._ready.take()
            if taken is None:
                await self._available.wait()
                continue
            key, due = taken
            self._active.add(key)
            try:
                await work(key, due)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one credential's cycle must not stop the others; retry later.
                logger.exception("refresh of %s failed unexpectedly", key)
                if key not in self._pending:
                    self.schedule(key, at=self._clock() + 60.0)
            finally:
                self._active.discard(key)
                self._ready.done(key)
                self._available.set()  # a group or lane may have room again
                self._running.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.schedule(key, at=self._clock())


def _one_group(key: Hashable) -> None:
    return None


def _no_lane(key: Hashable) -> None:
    return None


@dataclasses.dataclass(slots=True)
class _Gate:
    """One host's in-flight places, and how many requests hold or wait for one."""

    places: asyncio.Semaphore
    users: int = 0


class HostPacer:
    """Spreads token requests per host: ``rate`` per second with bursts of ``burst``, and at
    most ``concurrency`` in flight at once (see :meth:`slot`).

    GCRA (the generic cell rate algorithm) books the starts: one float per host, no
    background task. With no burst, the actual sends are also held to at most ``n`` in any
    ``n / rate`` seconds, n = max(1, floor(rate)), and to at most ceil(rate) in any second
    (decisions 0022 and 0054).
    """

    #: Idle hosts are swept out when the hosts known reach this (then twice as many as
    #: were left), or this many seconds after the last sweep (see :meth:`_sweep`).
    _SWEEP_HOSTS = 64
    _SWEEP_EVERY = 60.0

    @staticmethod
    def _sends_per_window(rate: float) -> int:
        return max(1, math.floor(rate))

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        concurrency: int = config.DEFAULTS.token_concurrency_per_host,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1 or concurrency < 1:
            raise ValueError("rate must be positive, burst and concurrency at least 1")
        self._rate, self._burst = rate, burst
        self._tat: dict[str, float] = {}
        #: Per host, the times of its actual sends in the last second (and always the
        #: last one), oldest first; at most the configured rate's worth, which a share of
        #: it never needs more of.
        self._sent: dict[str, collections.deque[float]] = {}
        self._kept = max(1, math.ceil(rate))
        self._set_rate(rate)
        self._sweep_at, self._sweep_by = self._SWEEP_HOSTS, -math.inf
        self._concurrency = concurrency
        self._in_flight: dict[str, _Gate] = {}
        self._clock = clock
        self._sleep = sleep

    def _set_rate(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (self._burst - 1) * self._interval
        self._window_sends = self._sends_per_window(rate)
        self._window = self._window_sends / rate  # at most a second from 1/s on
        #: A rate that is not a whole number would let n sends per window and part of the
        #: next window's fall in one second: that is bounded too.
        self._per_second = max(1, math.ceil(rate))
        if self._per_second > self._kept:  # only for a share above the whole rate
            self._kept = self._per_second
            for host, sent in self._sent.items():
                self._sent[host] = collections.deque(sent, maxlen=self._kept)

    def share(self, fraction: float) -> None:
        """Pace at ``fraction`` of the configured rate: a replica serving some of the shards
        sends its share of the cluster's promise to each host (decision 0050). A fraction of
        0 (nothing served) keeps the whole rate for when shards come.

        The sends already made count in the new window: every send after the change has
        at most n - 1 others (n and the window of the new rate) in the window before it.
        """
        self._set_rate(self._rate * fraction if fraction > 0 else self._rate)

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold one of the host's in-flight places, then its next paced start.

        The place is taken first, so a request waiting for one does not burn a start. The
        bound keeps connections per host few: the HTTP pool checks every pooled
        connection before each request, and that cost grows with their number (decision
        0026). Semaphores of hosts with nothing in flight are dropped.
        """
        gate = self._in_flight.get(host)
        if gate is None:
            gate = self._in_flight[host] = _Gate(asyncio.Semaphore(self._concurrency))
        gate.users += 1
        try:
            async with gate.places:
                await self.acquire(host)
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._in_flight[host]

    def reserve(self, host: str) -> float:
        """Book the next slot for ``host``; returns how long to wait before using it."""
        now = self._clock()
        if len(self._tat) >= self._sweep_at or now >= self._sweep_by:
            self._sweep(now)
        tat = max(self._tat.get(host, now), now)
        start = max(now, tat - self._tolerance)
        self._tat[host] = tat + self._interval
        return start - now

    def _sweep(self, now: float) -> None:
        """Forget the hosts whose state no longer changes anything: nothing booked after
        ``now`` and no send in the last window (a new host's first booking and send are
        the same). Run when the hosts known have doubled since the last sweep, so its cost
        per booking stays constant, and at least every minute, so a few idle hosts do not
        keep a window of sends each."""
        for host in self._tat.keys() | self._sent.keys():
            sent = self._sent.get(host)
            idle_since = now - max(self._window, 1.0)
            if self._tat.get(host, now) <= now and (not sent or sent[-1] <= idle_since):
                self._tat.pop(host, None)
                self._sent.pop(host, None)
        self._sweep_at = max(self._SWEEP_HOSTS, 2 * len(self._tat))
        self._sweep_by = now + self._SWEEP_EVERY

    async def acquire(self, host: str) -> None:
        delay = self.reserve(host)
        if delay > 0:
            await self._sleep(delay)
        if self._tolerance == 0.0:
            # Booked starts are 1/rate apart, but a busy loop wakes sleepers late and
            # together. A send waits until the host's n-th previous send is a window
            # (n/rate) old: no window holds more than n sends (decision 0022), and a late
            # send catches up with the booked ones instead of pushing every later send
            # back (decision 0054). With n = 1 it is the spacing of 1/rate. No second holds
            # more than ceil(rate) either.
            while True:
                sent = self._sent.get(host)
                if sent is None:
                    sent = self._sent[host] = collections.deque(maxlen=self._kept)
                now = self._clock()
                while len(sent) > 1 and sent[0] <= now - 1.0:  # the window is a second at most
                    sent.popleft()
                gap = max(
                    _wait(sent, self._window_sends, self._window, now),
                    _wait(sent, self._per_second, 1.0, now),
                )
                if gap <= 0:
                    sent.append(now)
                    return
                await self._sleep(gap)


def _wait(sent: collections.deque[float], n: int, window: float, now: float) -> float:
    """How long until fewer than ``n`` of the ``sent`` times fall in the ``window`` before
    ``now`` (0 or less: now)."""
    return sent[-n] + window - now if len(sent) >= n else 0.0


class Budget:
    """A token bucket that never waits: ``take()`` says whether there is room now.

    For what may be skipped under load (Kubernetes Events, decision 0027): ``rate`` per
    second on average, up to ``burst`` at once.
    """

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
