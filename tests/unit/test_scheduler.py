"""The refresh queue and the per-host pacer.

Due times come from an injected clock (a mutable float), so no test waits for a due time to
arrive: it moves the clock. The dispatcher still polls that clock on a real timer, shortened
here to a millisecond; the only real waits are that poll and a few milliseconds to show that
something does *not* happen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import scheduler

T0 = 1_000_000.0
#: Long enough for the dispatcher (polling every millisecond) to act if it were going to.
QUIET = 0.02


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "HEARTBEAT_INTERVAL", 0.001)


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Recorder:
    """A work function that records calls and concurrency, and can hold a key at a gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.running: collections.Counter[str] = collections.Counter()
        self.max_per_key = 0
        self.max_total = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()
        self.on_call: Callable[[str], None] | None = None
        self.changed = asyncio.Condition()

    def keys(self) -> list[str]:
        return [key for key, _ in self.calls]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (a second at most) until ``condition`` holds after a call starts or ends."""
        async with asyncio.timeout(1.0), self.changed:
            await self.changed.wait_for(condition)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def __call__(self, key: str, due: float) -> None:
        self.calls.append((key, due))
        self.running[key] += 1
        self.max_per_key = max(self.max_per_key, self.running[key])
        self.max_total = max(self.max_total, sum(self.running.values()))
        await self._notify()
        try:
            if self.on_call is not None:
                self.on_call(key)
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            for _ in range(3):  # let the other workers interleave
                await asyncio.sleep(0)
            if key in self.fail:
                self.fail.discard(key)
                raise RuntimeError(f"bug while refreshing {key}")
        finally:
            self.running[key] -= 1
            await self._notify()


@contextlib.asynccontextmanager
async def running(
    queue: scheduler.RefreshQueue[str], work: Recorder
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(queue.run(work))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- RefreshQueue without workers -----------------------------------------------------------


def test_schedule_replace_cancel(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    assert (len(queue), queue.due_at("a"), queue.is_known("a")) == (0, None, False)
    queue.schedule("a", at=T0 + 10)
    queue.schedule("b", at=T0 + 5)
    assert (len(queue), queue.due_at("a"), queue.is_known("a")) == (2, T0 + 10, True)
    queue.schedule("a", at=T0 + 30)  # replaces, later
    assert (len(queue), queue.due_at("a")) == (2, T0 + 30)
    queue.schedule("a", at=T0 + 1)  # replaces, earlier
    assert (len(queue), queue.due_at("a")) == (2, T0 + 1)
    queue.trigger("b")  # not running: due now
    assert queue.due_at("b") == T0
    queue.cancel("a")
    queue.cancel("never-scheduled")
    assert (len(queue), queue.due_at("a"), queue.is_known("a")) == (1, None, False)


@pytest.mark.parametrize("workers", [0, -1])
def test_needs_a_worker(workers: int) -> None:
    with pytest.raises(ValueError, match="workers"):
        scheduler.RefreshQueue[str](workers=workers)


# -- RefreshQueue running -------------------------------------------------------------------


async def test_active_keys_are_those_a_worker_took_not_those_waiting(clock: Clock) -> None:
    """A hand-over waits for the active ones only (decision 0050)."""
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    work = Recorder()
    work.gates["a"] = asyncio.Event()
    queue.schedule("a", at=T0)
    queue.schedule("b", at=T0 + 1)
    clock.now = T0 + 2
    async with running(queue, work):
        await work.until(lambda: work.running["a"] == 1)
        assert queue.active() == {"a"}
        assert queue.is_running("b")  # due, handed to the ready set, not begun
        work.gates["a"].set()
        await work.until(lambda: work.keys() == ["a", "b"] and not work.running["b"])
        await asyncio.sleep(0)
        assert queue.active() == frozenset()


async def test_due_keys_run_in_due_order_with_their_due_time(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    work = Recorder()
    for key, offset in [("a", 30), ("b", 10), ("c", 20), ("later", 1000)]:
        queue.schedule(key, at=T0 + offset)
    async with running(queue, work):
        await asyncio.sleep(QUIET)
        assert work.calls == []  # nothing is due yet
        clock.now = T0 + 30
        await work.until(lambda: len(work.calls) == 3)
        await asyncio.sleep(QUIET)
    assert work.calls == [("b", T0 + 10), ("c", T0 + 20), ("a", T0 + 30)]
    assert (len(queue), queue.due_at("later")) == (1, T0 + 1000)
    assert not queue.is_known("a")


async def test_a_replaced_due_time_runs_once_at_the_new_time(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=2, clock=clock)
    work = Recorder()
    queue.schedule("later", at=T0 + 10)
    queue.schedule("later", at=T0 + 20)
    queue.schedule("sooner", at=T0 + 20)
    queue.schedule("sooner", at=T0 + 5)
    async with running(queue, work):
        clock.now = T0 + 15
        await work.until(lambda: len(work.calls) == 1)
        await asyncio.sleep(QUIET)
        assert work.calls == [("sooner", T0 + 5)]  # "later" is not due at its old time
        clock.now = T0 + 25  # past the superseded entry of "sooner" too
        await work.until(lambda: len(work.calls) == 2)
        await asyncio.sleep(QUIET)
    assert work.calls == [("sooner", T0 + 5), ("later", T0 + 20)]


async def test_a_cancelled_key_does_not_run(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    work = Recorder()
    queue.schedule("gone", at=T0 + 1)
    queue.schedule("kept", at=T0 + 2)
    queue.cancel("gone")
    async with running(queue, work):
        clock.now = T0 + 10
        await work.until(lambda: len(work.calls) == 1)
        await asyncio.sleep(QUIET)
    assert work.keys() == ["kept"]


async def test_trigger_runs_a_key_now(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    work = Recorder()
    queue.schedule("a", at=T0 + 3600)
    async with running(queue, work):
        queue.trigger("a")
        await work.until(lambda: len(work.calls) == 1)
        await asyncio.sleep(QUIET)
    assert work.calls == [("a", T0)]
    assert not queue.is_known("a")  # the trigger replaced the hour-away due time


async def test_a_key_runs_on_one_worker_and_a_trigger_during_its_run_reruns_it(
    clock: Clock,
) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=4, clock=clock)
    work = Recorder()
    work.gates["a"] = asyncio.Event()
    async with running(queue, work):
        queue.trigger("a")
        await work.until(lambda: work.running["a"] == 1)
        # A spec change, a client Secret change and a force-refresh arrive mid-run, and the
        # key's own due time passes: none of them may start a second, concurrent run.
        queue.trigger("a")
        queue.trigger("a")
        queue.schedule("a", at=clock.now)
        clock.now += 5
        queue.trigger("a")
        await asyncio.sleep(QUIET)
        assert (work.keys(), queue.is_known("a")) == (["a"], True)
        work.gates["a"].set()
        await work.until(lambda: len(work.calls) == 2)
        await asyncio.sleep(QUIET)
    assert work.calls == [("a", T0), ("a", T0 + 5)]  # once more, right after: not four times
    assert work.max_per_key == 1


async def test_a_schedule_made_by_the_work_itself_stands(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    work = Recorder()
    work.on_call = lambda key: queue.schedule(key, at=clock.now + 600)
    async with running(queue, work):
        queue.trigger("a")
        await work.until(lambda: len(work.calls) == 1)
        await asyncio.sleep(QUIET)
    assert work.keys() == ["a"]
    assert queue.due_at("a") == T0 + 600


async def test_failing_work_keeps_the_worker_and_is_retried(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    work = Recorder()
    work.fail.add("bad")
    queue.schedule("bad", at=T0 - 2)
    queue.schedule("good", at=T0 - 1)
    with caplog.at_level(logging.ERROR, logger=scheduler.__name__):
        async with running(queue, work):
            # The single worker survives the failure and goes on with the next key.
            await work.until(lambda: len(work.calls) == 2)
            assert work.keys() == ["bad", "good"]
            assert queue.due_at("bad") == T0 + 60.0
            clock.now = T0 + 60
            await work.until(lambda: len(work.calls) == 3)
            await asyncio.sleep(QUIET)
    assert work.calls[2] == ("bad", T0 + 60)
    assert not queue.is_known("bad")  # the retry succeeded: nothing more is scheduled
    assert [r.getMessage() for r in caplog.records] == ["refresh of bad failed unexpectedly"]


async def test_failing_work_that_scheduled_itself_keeps_its_schedule(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=1, clock=clock)
    work = Recorder()
    work.fail.add("a")
    work.on_call = lambda key: queue.schedule(key, at=clock.now + 5)
    async with running(queue, work):
        queue.trigger("a")
        await work.until(lambda: len(work.calls) == 1 and not work.running["a"])
        await asyncio.sleep(QUIET)
    assert queue.due_at("a") == T0 + 5


async def test_no_more_than_workers_run_at_once(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=2, clock=clock)
    work = Recorder()
    keys = [f"k{i}" for i in range(10)]
    for offset, key in enumerate(keys):
        queue.schedule(key, at=T0 - offset)
    heartbeat = queue.heartbeat
    async with running(queue, work):
        await work.until(lambda: len(work.calls) == len(keys))
        await asyncio.sleep(QUIET)
    assert sorted(work.keys()) == sorted(keys)  # each once
    assert work.max_total == 2  # the bound holds, and both workers were used
    assert queue.heartbeat > heartbeat


async def test_the_bound_holds_while_work_is_blocked(clock: Clock) -> None:
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(workers=2, clock=clock)
    work = Recorder()
    for key in "abcd":
        work.gates[key] = asyncio.Event()
        queue.schedule(key, at=T0)
    async with running(queue, work):
        await work.until(lambda: len(work.calls) == 2)
        await asyncio.sleep(QUIET)
        assert len(work.calls) == 2  # two blocked workers: the other keys wait
        for gate in work.gates.values():
            gate.set()
        await work.until(lambda: len(work.calls) == 4)
    assert work.max_total == 2


# -- HostPacer ------------------------------------------------------------------------------


def test_pacer_table() -> None:
    clock = Clock(0.0)
    pacer = scheduler.HostPacer(rate=2.0, burst=3, clock=clock)  # a slot every 0.5 s
    steps = [
        # (time, host, wait before the reserved slot)
        (0.0, "a", 0.0),  # burst of three
        (0.0, "a", 0.0),
        (0.0, "a", 0.0),
        (0.0, "a", 0.5),  # then the steady rate
        (0.0, "a", 1.0),
        (0.0, "b", 0.0),  # another host has its own budget
        (0.0, "b", 0.0),
        (0.5, "a", 1.0),  # the queue for "a" is booked until 1.5
        (0.5, "b", 0.0),  # "b" still has one of its burst left
        (0.5, "b", 0.0),  # ... and one slot earned back in 0.5 s
        (0.5, "b", 0.5),
        (10.0, "a", 0.0),  # idle: the burst is back
        (10.0, "a", 0.0),
        (10.0, "a", 0.0),
        (10.0, "a", 0.5),
        (10.25, "a", 0.75),
    ]
    for at, host, wait in steps:
        clock.now = at
        assert pacer.reserve(host) == pytest.approx(wait), (at, host)


def test_a_replica_paces_at_its_share_of_the_rate() -> None:
    """Two of six shards: a third of the cluster's rate per host (decision 0050)."""
    pacer = scheduler.HostPacer(rate=6.0, burst=1, clock=Clock(0.0))
    pacer.share(2 / 6)
    assert [pacer.reserve("a") for _ in range(3)] == pytest.approx([0.0, 0.5, 1.0])
    pacer.share(0.0)  # nothing served: the whole rate is kept for when shards come
    pacer.share(1.0)
    assert pacer.reserve("b") == 0.0
    assert pacer.reserve("b") == pytest.approx(1 / 6)


async def test_acquire_sleeps_only_for_a_later_slot() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = scheduler.HostPacer(rate=1.0, burst=2, clock=Clock(0.0), sleep=sleep)
    for _ in range(4):
        await pacer.acquire("login.example.com")
    assert slept == [1.0, 2.0]


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_pacer_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        scheduler.HostPacer(rate=rate, burst=burst)


@given(
    rate=st.floats(min_value=0.1, max_value=50.0),
    burst=st.integers(min_value=1, max_value=8),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=3.0), st.sampled_from(["a", "b"])),
        max_size=60,
    ),
)
def test_pacer_never_exceeds_burst_plus_rate_in_any_window(
    rate: float, burst: int, steps: list[tuple[float, str]]
) -> None:
    clock = Clock(0.0)
    pacer = scheduler.HostPacer(rate=rate, burst=burst, clock=clock)
    starts: dict[str, list[float]] = {"a": [], "b": []}
    for advance, host in steps:
        clock.now += advance
        wait = pacer.reserve(host)
        assert wait >= 0.0
        starts[host].append(clock.now + wait)
    for slots in starts.values():
        assert slots == sorted(slots)  # first come, first served
        # The fullest window of length W starts and ends on a slot: check every such pair.
        for i, first in enumerate(slots):
            for j in range(i, len(slots)):
                window = slots[j] - first
                assert j - i + 1 <= burst + rate * window + 1e-6, (i, j, window)


async def test_slot_bounds_requests_in_flight_per_host() -> None:
    pacer = scheduler.HostPacer(rate=1_000_000.0, burst=1, concurrency=2)
    in_flight: collections.Counter[str] = collections.Counter()
    peak: collections.Counter[str] = collections.Counter()
    release = asyncio.Event()

    async def request(host: str) -> None:
        async with pacer.slot(host):
            in_flight[host] += 1
            peak[host] = max(peak[host], in_flight[host])
            await release.wait()
            in_flight[host] -= 1

    tasks = [asyncio.create_task(request(h)) for h in ["a"] * 5 + ["b"] * 3]
    await asyncio.sleep(QUIET)
    assert dict(in_flight) == {"a": 2, "b": 2}  # the others wait, per host
    release.set()
    await asyncio.gather(*tasks)
    assert dict(peak) == {"a": 2, "b": 2}
    assert pacer._in_flight == {}  # nothing kept for idle hosts


async def test_a_request_waiting_for_a_place_books_no_start() -> None:
    clock = Clock(0.0)
    pacer = scheduler.HostPacer(rate=1.0, burst=1, concurrency=1, clock=clock)
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with pacer.slot("h"):
            first_in.set()
            await release.wait()

    task = asyncio.create_task(first())
    await first_in.wait()
    waiting = asyncio.create_task(pacer.slot("h").__aenter__())
    await asyncio.sleep(QUIET)
    assert not waiting.done()
    # Only the first request booked a start: the next free start is 1 s after it.
    assert pacer._tat["h"] == 1.0
    clock.now = 5.0  # the place frees long after: the waiter starts at once
    release.set()
    await task
    await waiting
    assert pacer._tat["h"] == 6.0


async def test_slot_is_released_when_the_request_fails() -> None:
    pacer = scheduler.HostPacer(rate=1_000_000.0, burst=1, concurrency=1)
    with contextlib.suppress(RuntimeError):
        async with pacer.slot("h"):
            raise RuntimeError("boom")
    async with asyncio.timeout(1):
        async with pacer.slot("h"):
            pass
    assert pacer._in_flight == {}


def test_pacer_needs_a_positive_concurrency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        scheduler.HostPacer(rate=1.0, burst=1, concurrency=0)


# -- Budget --------------------------------------------------------------------------------


def test_budget_allows_a_burst_then_the_rate() -> None:
    clock = Clock(0.0)
    budget = scheduler.Budget(rate=10.0, burst=3, clock=clock)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    clock.now = 0.1  # one more after 1/rate
    assert [budget.take() for _ in range(2)] == [True, False]
    clock.now = 100.0  # idle time refills up to the burst, not beyond
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


@given(
    rate=st.floats(min_value=0.1, max_value=100.0),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.0), max_size=200),
)
def test_budget_never_allows_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = Clock(0.0)
    budget = scheduler.Budget(rate=rate, burst=burst, clock=clock)
    taken = 0
    for advance in steps:
        clock.now += advance
        taken += budget.take()
        assert taken <= burst + rate * clock.now + 1e-6


def test_budget_needs_a_positive_rate_and_burst() -> None:
    with pytest.raises(ValueError, match="rate"):
        scheduler.Budget(rate=0.0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        scheduler.Budget(rate=1.0, burst=0)


async def test_sends_stay_spaced_when_sleepers_wake_late_together() -> None:
    clock = Clock(0.0)
    released = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if not released.is_set():
            await released.wait()  # a busy loop: every sleeper wakes at the same late time
        else:
            clock.now += seconds

    pacer = scheduler.HostPacer(rate=10.0, burst=1, clock=clock, sleep=sleep)
    sent: list[float] = []

    async def request() -> None:
        await pacer.acquire("h")
        sent.append(round(clock.now, 6))

    tasks = [asyncio.create_task(request()) for _ in range(4)]  # booked at 0, .1, .2, .3
    await asyncio.sleep(QUIET)
    assert sent == [0.0]
    clock.now = 0.5  # the three others wake now, all late
    released.set()
    await asyncio.gather(*tasks)
    assert sent == [0.0, 0.5, 0.6, 0.7]  # never closer than 1/rate


async def test_a_host_that_never_answers_holds_only_its_share_of_workers(clock: Clock) -> None:
    """Issue 14 section 2: keys of a tarpit host, due first and in numbers, leave the
    other half of the pool to every other host and namespace."""
    queue: scheduler.RefreshQueue[str] = scheduler.RefreshQueue(
        workers=4,
        clock=clock,
        group=lambda key: key.split("/")[0],
        lane=lambda key: key.split("/")[1],
    )
    work = Recorder()
    stuck = [f"tenant/tarpit/{i}" for i in range(20)]
    for key in stuck:
        work.gates[key] = asyncio.Event()  # never answers
        queue.schedule(key, at=T0)
    victims = [f"victim/idp/{i}" for i in range(10)]
    for key in victims:
        queue.schedule(key, at=T0 + 1)
    async with running(queue, work):
        await work.until(lambda: sum(work.running.values()) == 2)
        clock.now = T0 + 1
        await work.until(lambda: all(key in [k for k, _ in work.calls] for key in victims))
        assert sum(work.running[key] for key in stuck) == 2
        assert queue.waiting == 18  # parked, holding no worker
        for key in stuck[:2]:
            work.gates[key].set()
        await work.until(lambda: sum(1 for key, _ in work.calls if key in stuck) == 4)
    assert work.max_total <= 4
