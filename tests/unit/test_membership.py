"""Membership on Leases (decision 0050): two or three replicas against one Lease store with
the API server's rules (conditional writes, 409 on a stale resourceVersion), a fake clock."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import socket
from typing import Any

import pytest
from kubernetes import client

from tokensync import config, leases, membership, metrics

SETTINGS = config.Config(
    leader_elect=True,
    lease_namespace="tokensync-system",
    lease_duration=15.0,
    renew_deadline=10.0,
    retry_period=2.0,
)


class Store:
    """Leases as the API server keeps them: every write bumps the resourceVersion, and a
    write naming an older one is refused with 409."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.down = False
        self.writes: list[tuple[str, str, str]] = []  # (verb, name, holder)

    def _check(self) -> None:
        if self.down:
            raise client.ApiException(status=503)

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[stored["metadata"]["name"]] = stored
        return copy.deepcopy(stored)


class Api:
    def __init__(self, store: Store) -> None:
        self.store = store

    def close(self) -> None:
        pass

    async def list(self, lease_set: str) -> list[dict[str, Any]]:
        self.store._check()
        return [
            copy.deepcopy(body)
            for body in self.store.leases.values()
            if body["metadata"]["labels"][leases.LEASE_SET_LABEL] == lease_set
        ]

    async def read(self, name: str) -> dict[str, Any]:
        self.store._check()
        if name not in self.store.leases:
            raise client.ApiException(status=404)
        return copy.deepcopy(self.store.leases[name])

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.store._check()
        if body["metadata"]["name"] in self.store.leases:
            raise client.ApiException(status=409)
        self.store.writes.append(
            ("create", body["metadata"]["name"], body["spec"]["holderIdentity"])
        )
        return self.store._stored(body)

    async def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.store._check()
        current = self.store.leases.get(name)
        if current is None:
            raise client.ApiException(status=404)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise client.ApiException(status=409)
        self.store.writes.append(("replace", name, body["spec"]["holderIdentity"]))
        return self.store._stored(body)

    async def delete(self, name: str, version: str) -> None:
        self.store._check()
        current = self.store.leases.get(name)
        if current is None:
            raise client.ApiException(status=404)
        if current["metadata"]["resourceVersion"] != version:
            raise client.ApiException(status=409)
        del self.store.leases[name]


@dataclasses.dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Shards:
    """The reconcile loop's side: what it was told, and which shards are busy."""

    taken: list[int] = dataclasses.field(default_factory=list)
    handed: list[int] = dataclasses.field(default_factory=list)
    running: set[int] = dataclasses.field(default_factory=set)

    def take_over(self, shard: int) -> None:
        self.taken.append(shard)

    def hand_over(self, shard: int) -> None:
        self.handed.append(shard)

    def busy(self, shard: int) -> bool:
        return shard in self.running

    def counts(self) -> tuple[int, int]:
        return (len(self.taken), 0)


@dataclasses.dataclass
class Replica:
    member: membership.Membership
    shards: Shards
    metrics: metrics.Metrics
    rates: list[float]

    def serving(self, count: int) -> list[int]:
        return [shard for shard in range(count) if self.member.serves(shard)]


def replica(store: Store, clock: Clock, identity: str, *, shards: int = 1) -> Replica:
    registry = metrics.Metrics()
    rates: list[float] = []
    member = membership.Membership(
        api=Api(store),  # type: ignore[arg-type]
        settings=dataclasses.replace(SETTINGS, shards=shards),
        identity=identity,
        metrics_=registry,
        share_rate=rates.append,
        clock=clock,
    )
    side = Shards()
    member.attach(side)
    return Replica(member, side, registry, rates)


def step(*replicas: Replica) -> None:
    asyncio.run(_steps(replicas))


async def _steps(replicas: tuple[Replica, ...]) -> None:
    for each in replicas:
        await each.member.step()


def sample(registry: metrics.Metrics, name: str, **labels: str) -> float | None:
    return registry.registry.get_sample_value(name, labels or None)


def test_a_lone_replica_takes_the_shard_and_may_write() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a")
    assert not a.member.may_write()
    step(a)
    assert a.serving(1) == [0]
    assert a.shards.taken == [0]
    assert a.member.may_write()
    holder = store.leases["tokensync-shard-0"]["spec"]["holderIdentity"]
    assert holder == "a"
    assert sample(a.metrics, "tokensync_leader") == 1
    assert sample(a.metrics, "tokensync_shards_held") == 1
    assert sample(a.metrics, "tokensync_shard_held", shard="0") == 1
    assert sample(a.metrics, "tokensync_leadership_transitions_total", change="acquired") == 1
    assert a.rates[-1] == 1.0


def test_a_standby_takes_over_only_after_the_lease_duration_and_the_old_leader_stops_first() -> (
    None
):
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    step(a, b)
    assert (a.serving(1), b.serving(1)) == ([0], [])
    # a freezes: no more rounds from it. b keeps looking.
    frozen_at = clock.now
    while not b.serving(1):
        clock.now += 0.5
        step(b)
        if clock.now - frozen_at >= SETTINGS.renew_deadline:
            assert not a.member.may_write()  # fenced before b may take over
            assert not a.member.serves(0)
    assert clock.now - frozen_at >= SETTINGS.lease_duration
    assert clock.now - frozen_at <= SETTINGS.lease_duration + 1.0
    # a wakes: its renewal meets b's write (409): lost, handed over, nothing written.
    writes = len(store.writes)
    step(a)
    assert a.shards.handed == [0]
    assert not a.member.may_write()
    assert store.writes[writes:] == [
        ("replace", "tokensync-member-a", "a")
    ]  # its member Lease only
    assert sample(a.metrics, "tokensync_leadership_transitions_total", change="lost") == 1


def test_a_clean_stop_hands_over_at_once_after_the_refreshes_in_flight() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    step(a, b)
    a.shards.running.add(0)

    async def stop_then_finish() -> None:
        stopping = asyncio.create_task(a.member.stop())
        await asyncio.sleep(0)
        assert not a.member.serves(0)  # nothing new starts
        assert store.leases["tokensync-shard-0"]["spec"]["holderIdentity"] == "a"
        a.shards.running.clear()  # the refresh in flight ends
        await stopping

    asyncio.run(stop_then_finish())
    assert store.leases["tokensync-shard-0"]["spec"]["holderIdentity"] == ""
    assert "tokensync-member-a" not in store.leases
    clock.now += SETTINGS.retry_period
    step(b)
    assert b.serving(1) == [0]  # a free Lease is taken without waiting for it to expire


def renewed_unbeknown(store: Store, name: str) -> None:
    """A renewal written although its sender never got the answer (its task was cancelled
    by the stop, or the request timed out): the Lease moves to a version the holder lacks."""
    store._stored(store.leases[name])


def test_a_clean_stop_releases_even_after_a_renewal_whose_answer_was_lost() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    step(a, b)
    renewed_unbeknown(store, "tokensync-shard-0")
    renewed_unbeknown(store, "tokensync-member-a")

    asyncio.run(a.member.stop())
    assert store.leases["tokensync-shard-0"]["spec"]["holderIdentity"] == ""
    assert "tokensync-member-a" not in store.leases
    assert sample(a.metrics, "tokensync_leadership_transitions_total", change="released") == 1
    clock.now += SETTINGS.retry_period
    step(b)
    assert b.serving(1) == [0]  # at once, not a lease duration later


def test_a_clean_stop_leaves_a_lease_it_no_longer_holds_alone() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    step(a, b)
    lease = store.leases["tokensync-shard-0"]
    store._stored({**lease, "spec": {**lease["spec"], "holderIdentity": "b"}})

    asyncio.run(a.member.stop())
    assert store.leases["tokensync-shard-0"]["spec"]["holderIdentity"] == "b"
    assert sample(a.metrics, "tokensync_leadership_transitions_total", change="released") is None


def test_a_clean_stop_waits_no_longer_than_its_writes_are_allowed() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    step(a, b)
    a.shards.running.add(0)  # a refresh that never ends
    clock.now += SETTINGS.renew_deadline  # the last renewal is that old: writes are fenced
    assert not a.member.may_write()

    # Without the bound, the stop would wait HAND_OVER_WAIT seconds of a clock that stands.
    asyncio.run(asyncio.wait_for(a.member.stop(), timeout=5))
    assert store.leases["tokensync-shard-0"]["spec"]["holderIdentity"] == ""


def test_a_release_written_although_its_answer_was_an_error_counts_as_released() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a")
    step(a)
    api = a.member._api
    replace = api.replace

    async def written_then_conflict(name: str, body: dict[str, Any]) -> dict[str, Any]:
        await replace(name, body)  # applied, but the answer seen is a conflict
        raise client.ApiException(status=409)

    api.replace = written_then_conflict  # type: ignore[method-assign]
    asyncio.run(a.member.stop())
    assert store.leases["tokensync-shard-0"]["spec"]["holderIdentity"] == ""
    assert sample(a.metrics, "tokensync_leadership_transitions_total", change="released") == 1


def test_a_stop_hands_over_although_the_api_server_cannot_be_reached_for_the_member_lease() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    step(a, b)
    api = a.member._api

    async def unreachable(name: str, version: str) -> None:
        raise ConnectionError("DELETE Lease: ReadTimeoutError")  # as LeaseApi raises it

    api.delete = unreachable  # type: ignore[method-assign]
    asyncio.run(a.member.stop())
    assert store.leases["tokensync-shard-0"]["spec"]["holderIdentity"] == ""


def test_a_round_that_cannot_reach_the_api_server_is_retried_not_fatal() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a")
    step(a)

    async def unreachable(lease_set: str) -> list[dict[str, Any]]:
        raise ConnectionError("GET Lease: MaxRetryError")

    a.member._api.list = unreachable  # type: ignore[method-assign]
    clock.now += SETTINGS.retry_period
    step(a)  # logged, not raised
    assert a.serving(1) == [0]  # renewed before the listing failed


def test_lease_api_errors_from_urllib3_are_connection_errors() -> None:
    # Loopback, a port nothing listens on: refused, raised by urllib3 as its own error.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = False
    api = membership.LeaseApi(client.ApiClient(configuration), namespace="ns", timeout=1)
    try:
        with pytest.raises(ConnectionError, match="GET Lease: NewConnectionError"):
            asyncio.run(api.list("tokensync"))
    finally:
        api.close()


def test_a_stopping_replica_never_reopens_a_fence_an_older_shard_closed() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a", shards=2)
    step(a)
    assert a.serving(2) == [0, 1]
    # Shard 1 renewed 5 s later than shard 0 (the store is the API server's: any round's).
    a.member._held[1].renewed_at += 5
    a.member._fence()
    clock.now += SETTINGS.renew_deadline  # shard 0's renewal is too old: the fence is closed
    assert not a.member.may_write()
    a.shards.running.add(1)  # shard 1 stays busy
    api = a.member._api
    replace = api.replace
    allowed: list[bool] = []

    async def watched(name: str, body: dict[str, Any]) -> dict[str, Any]:
        allowed.append(a.member.may_write())
        return await replace(name, body)

    api.replace = watched  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(a.member.stop(), timeout=5))
    assert allowed == [False, False]  # both releases sent with the fence closed
    assert all(store.leases[f"tokensync-shard-{i}"]["spec"]["holderIdentity"] == "" for i in (0, 1))


def test_a_new_replica_gets_its_share_and_no_shard_is_served_twice() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a", shards=6)
    step(a)
    assert len(a.serving(6)) == 6
    b, c = replica(store, clock, "b", shards=6), replica(store, clock, "c", shards=6)
    for _ in range(6):
        clock.now += SETTINGS.retry_period
        step(a, b, c)
        for shard in range(6):
            assert sum(r.member.serves(shard) for r in (a, b, c)) <= 1
    assert sorted(len(r.serving(6)) for r in (a, b, c)) == [2, 2, 2]
    assert sorted(a.shards.handed) == sorted(set(range(6)) - set(a.serving(6)))
    assert a.rates[-1] == pytest.approx(2 / 6)


def test_a_busy_shard_is_released_only_when_its_refreshes_end() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a", shards=2)
    step(a)
    a.shards.running.update({0, 1})
    b = replica(store, clock, "b", shards=2)
    clock.now += 2
    step(b, a)
    released = [
        s for s in (0, 1) if store.leases[f"tokensync-shard-{s}"]["spec"]["holderIdentity"] == ""
    ]
    assert released == []
    assert len(a.serving(2)) == 1  # one is being handed over: not served, still held
    a.shards.running.clear()
    clock.now += 2
    step(a, b)
    assert len(a.serving(2)) == 1
    clock.now += 2
    step(b)
    assert len(b.serving(2)) == 1


def test_replicas_that_disagree_on_the_shard_count_stand_by() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a", shards=2)
    step(a)
    b = replica(store, clock, "b", shards=3)
    clock.now += 2
    step(b, a)
    assert a.serving(3) == []
    assert b.serving(3) == []
    assert not b.member.may_write()


def test_an_outage_shorter_than_the_renew_deadline_keeps_the_shard_a_longer_one_loses_it() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a")
    step(a)
    store.down = True
    clock.now += SETTINGS.renew_deadline - 1
    step(a)
    assert a.serving(1) == [0]
    clock.now += 1
    step(a)
    assert a.serving(1) == []
    assert a.shards.handed == [0]
    store.down = False
    clock.now += SETTINGS.retry_period
    step(a)  # still naming it, untouched since: taken back at once
    assert a.serving(1) == [0]


def test_member_leases_of_crashed_replicas_are_deleted() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    step(a, b)
    assert "tokensync-member-b" in store.leases
    for _ in range(20):
        clock.now += SETTINGS.retry_period
        step(a)
    assert "tokensync-member-b" not in store.leases
