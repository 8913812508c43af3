"""Shards on Leases: the pure decisions (decision 0050), clock injected."""

from __future__ import annotations

import collections
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import leases

SET = "tokensync"


def lease(
    name: str,
    *,
    role: str = leases.SHARD_ROLE,
    holder: str = "",
    version: str = "1",
    duration: float = 15,
    shards: int | None = None,
) -> leases.Lease:
    return leases.Lease(
        name=name, role=role, holder=holder, duration=duration, version=version, shards=shards
    )


def shard(i: int, holder: str = "", version: str = "1") -> leases.Lease:
    return lease(leases.shard_lease(SET, i), holder=holder, version=version)


def member(identity: str, *, shards: int = 1, version: str = "1") -> leases.Lease:
    return lease(
        leases.member_lease(SET, identity),
        role=leases.MEMBER_ROLE,
        holder=identity,
        version=version,
        shards=shards,
    )


def decide(
    found: list[leases.Lease],
    *,
    identity: str = "a",
    shards: int = 1,
    held: tuple[int, ...] = (),
    observer: leases.Observer | None = None,
    now: float = 100.0,
) -> leases.Plan:
    if observer is None:
        observer = leases.Observer()
        observer.observe(found, now=0.0)  # long ago: whatever is unchanged has expired
    return leases.plan(
        identity=identity,
        shards=shards,
        held=held,
        leases=found,
        observer=observer,
        now=now,
        lease_set=SET,
    )


# -- hashing -----------------------------------------------------------------------------


def test_jump_hash_matches_published_test_vectors() -> None:
    # Vectors other implementations of the paper's C++ function test against.
    assert leases.jump_hash(10863919174838991, 11) == 6
    assert leases.jump_hash(2016238256797177309, 11) == 3
    assert [leases.jump_hash(key, 1) for key in range(5)] == [0, 0, 0, 0, 0]


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=64))
def test_growing_by_one_bucket_moves_keys_only_into_the_new_one(key: int, buckets: int) -> None:
    before, after = leases.jump_hash(key, buckets), leases.jump_hash(key, buckets + 1)
    assert 0 <= before < buckets
    assert after in (before, buckets)


def test_credentials_spread_evenly_over_shards() -> None:
    counts = collections.Counter(
        leases.shard_of(f"ns{i % 50}", f"cred-{i}", 6) for i in range(6000)
    )
    assert set(counts) == set(range(6))
    assert min(counts.values()) > 850  # 1000 each, give or take


def test_shard_of_is_stable() -> None:
    """Not hash(): the same in every process (the value is pinned)."""
    assert leases.shard_of("default", "api", 1) == 0
    assert leases.shard_of("default", "api", 8) == leases.shard_of("default", "api", 8)
    assert [leases.shard_of("team-a", f"c{i}", 4) for i in range(8)] == [
        leases.shard_of("team-a", f"c{i}", 4) for i in range(8)
    ]


# -- observing ---------------------------------------------------------------------------


def test_a_lease_expires_a_duration_after_its_version_was_first_seen() -> None:
    observer = leases.Observer()
    held = shard(0, holder="b", version="7")
    observer.observe([held], now=10.0)
    assert not observer.expired(held, now=24.9)
    observer.observe([held], now=20.0)  # unchanged: still counted from 10
    assert observer.expired(held, now=25.0)


def test_a_renewed_lease_starts_its_duration_again() -> None:
    observer = leases.Observer()
    observer.observe([shard(0, holder="b", version="7")], now=10.0)
    renewed = shard(0, holder="b", version="8")
    observer.observe([renewed], now=20.0)
    assert not observer.expired(renewed, now=30.0)
    assert observer.expired(renewed, now=35.0)


def test_a_lease_never_seen_counts_as_changed_now_and_a_free_one_as_expired() -> None:
    observer = leases.Observer()
    held = shard(0, holder="b")
    observer.observe([held], now=100.0)
    assert not observer.expired(held, now=100.0)
    assert observer.expired(shard(0), now=100.0)  # no holder: free


def test_lease_from_body_reads_the_api_fields() -> None:
    body: dict[str, Any] = {
        "metadata": {
            "name": "tokensync-member-a",
            "resourceVersion": "42",
            "labels": {leases.LEASE_ROLE_LABEL: "member"},
            "annotations": {leases.SHARDS_ANNOTATION: "4"},
        },
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 3},
    }
    found = leases.Lease.from_body(body)
    assert (found.role, found.holder, found.duration, found.version) == ("member", "a", 15, "42")
    assert (found.transitions, found.shards) == (3, 4)
    body["metadata"]["annotations"][leases.SHARDS_ANNOTATION] = "four"
    assert leases.Lease.from_body(body).shards is None


def test_holding_is_fresh_until_the_renew_deadline_after_the_send() -> None:
    holding = leases.Holding(version="1", renewed_at=50.0)
    assert holding.fresh(now=59.9, renew_deadline=10.0)
    assert not holding.fresh(now=60.0, renew_deadline=10.0)


# -- planning ----------------------------------------------------------------------------


def test_alone_a_replica_takes_every_shard_even_those_never_created() -> None:
    decision = decide([member("a", shards=3)], shards=3)
    assert sorted(decision.acquire) == [0, 1, 2]
    assert decision.members == 1


def test_a_held_and_renewed_shard_is_not_taken() -> None:
    observer = leases.Observer()
    found = [member("a"), member("b"), shard(0, holder="b", version="5")]
    observer.observe(found, now=0.0)
    observer.observe([*found[:2], shard(0, holder="b", version="6")], now=10.0)
    decision = decide([*found[:2], shard(0, holder="b", version="6")], observer=observer, now=20.0)
    assert decision.acquire == ()


def test_a_shard_whose_holder_stopped_renewing_is_taken_after_the_lease_duration() -> None:
    observer = leases.Observer()
    found = [member("a"), shard(0, holder="b", version="5")]
    observer.observe(found, now=0.0)
    assert decide(found, observer=observer, now=14.0).acquire == ()
    assert decide(found, observer=observer, now=15.0).acquire == (0,)


def test_replicas_share_the_shards_fairly() -> None:
    observer = leases.Observer()
    found = [member("a", shards=6), member("b", shards=6), member("c", shards=6)]
    observer.observe(found, now=99.0)  # all live
    decision = decide(found, shards=6, observer=observer)
    assert len(decision.acquire) == 2
    assert decision.members == 3


def test_a_replica_over_its_share_hands_the_extra_over() -> None:
    observer = leases.Observer()
    found = [member("a", shards=6), member("b", shards=6), member("c", shards=6)]
    observer.observe(found, now=99.0)
    decision = decide(found, shards=6, held=(0, 1, 2, 3, 4, 5), observer=observer)
    assert len(decision.release) == 4
    assert decision.acquire == ()


def test_replicas_prefer_different_shards() -> None:
    a = decide([member("a", shards=8)], identity="a", shards=8).acquire
    b = decide([member("b", shards=8)], identity="b", shards=8).acquire
    assert a != b  # the same shards, in another order


def test_a_member_with_another_shard_count_makes_every_replica_stand_by() -> None:
    observer = leases.Observer()
    found = [member("a", shards=2), member("b", shards=3)]
    observer.observe(found, now=99.0)
    decision = decide(found, shards=2, held=(0, 1), observer=observer)
    assert not decision.agreed
    assert sorted(decision.release) == [0, 1]
    assert decision.acquire == ()


def test_expired_members_do_not_count_and_are_gone_after_two_durations() -> None:
    observer = leases.Observer()
    found = [member("a", shards=2), member("b", shards=2)]
    observer.observe(found, now=0.0)
    assert decide(found, shards=2, observer=observer, now=5.0).members == 2
    assert decide(found, shards=2, observer=observer, now=15.0).members == 1
    gone = leases.gone_members(found, observer=observer, now=29.0, identity="a", lease_set=SET)
    assert gone == []
    gone = leases.gone_members(found, observer=observer, now=30.0, identity="a", lease_set=SET)
    assert [lease.holder for lease in gone] == ["b"]


@pytest.mark.parametrize(
    ("shards", "members", "fair"), [(1, 2, 1), (6, 3, 2), (6, 4, 2), (7, 2, 4)]
)
def test_fair_share(shards: int, members: int, fair: int) -> None:
    assert leases.fair_share(shards, members) == fair
