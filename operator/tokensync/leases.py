"""Who serves which credential: shards on Leases, and the decisions about them (decision 0050).

Pure: no I/O, and the clock is passed in (``time.monotonic`` seconds).

Every credential belongs to one of ``shards`` shards, by a jump consistent hash of its
namespace and name (:func:`shard_of`). Each shard is a ``coordination.k8s.io`` Lease: the
replica holding it serves the shard's credentials, and no other does. With one shard this
is leader election and the other replicas are warm standbys. Each replica also holds a
member Lease, so that the replicas know how many they are and share the shards fairly
(:func:`plan`).

A Lease counts as expired when this process has seen no change to it for its
``leaseDurationSeconds``, measured on this process's own clock from when it first saw
the current version, as client-go's leader election does: the clocks of two machines are
never compared. A holder stops serving a shard when it could not renew it within the
renew deadline, which is shorter than the lease duration: it stops before anyone else
may take the Lease over (:class:`Holding`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

#: Labels on every Lease of a tokensync installation, and the role of each.
LEASE_SET_LABEL = "tokensync.dev/lease-set"
LEASE_ROLE_LABEL = "tokensync.dev/lease-role"
SHARD_ROLE = "shard"
MEMBER_ROLE = "member"
#: On a member Lease: the shard count that replica runs with. Replicas that disagree stand
#: by until they agree (a shard count change is a rolling update).
SHARDS_ANNOTATION = "tokensync.dev/shards"
#: A member Lease expired this many lease durations ago is deleted by any other member.
MEMBER_GONE_AFTER = 2.0

_MULTIPLIER = 2862933555777941757
_MASK = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: ``key`` in ``range(buckets)``. Going from
    n to n + 1 buckets moves only a 1/(n + 1) share of the keys, all into the new one."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _MULTIPLIER + 1) & _MASK
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of a credential: stable across processes, restarts and Python versions
    (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(f"{namespace}/{name}".encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), shards)


def shard_lease(lease_set: str, shard: int) -> str:
    return f"{lease_set}-shard-{shard}"


def member_lease(lease_set: str, identity: str) -> str:
    return f"{lease_set}-member-{identity}"


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """The parts of a Lease the decisions read."""

    name: str
    role: str
    holder: str
    #: leaseDurationSeconds: how long the holder's claim lasts after a change is seen.
    duration: float
    version: str
    transitions: int = 0
    #: A member Lease's shard count (:data:`SHARDS_ANNOTATION`); None when absent or invalid.
    shards: int | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Lease:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        labels = meta.get("labels") or {}
        shards = (meta.get("annotations") or {}).get(SHARDS_ANNOTATION)
        return cls(
            name=str(meta.get("name") or ""),
            role=str(labels.get(LEASE_ROLE_LABEL) or ""),
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            version=str(meta.get("resourceVersion") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
            shards=int(shards) if isinstance(shards, str) and shards.isdigit() else None,
        )


class Observer:
    """When this process first saw each Lease's current version, by its own clock."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def observe(self, leases: Iterable[Lease], *, now: float) -> None:
        """A full listing: remember the version of each, forget the Leases gone."""
        seen: dict[str, tuple[str, float]] = {}
        for lease in leases:
            before = self._seen.get(lease.name)
            same = before is not None and before[0] == lease.version
            seen[lease.name] = before if same and before is not None else (lease.version, now)
        self._seen = seen

    def changed_at(self, lease: Lease) -> float | None:
        entry = self._seen.get(lease.name)
        return entry[1] if entry is not None and entry[0] == lease.version else None

    def expired(self, lease: Lease, *, now: float, factor: float = 1.0) -> bool:
        """Free (no holder), or unchanged for ``factor`` times its duration. A Lease never
        observed counts as changed now: a new process waits a whole duration."""
        if not lease.holder:
            return True
        changed = self.changed_at(lease)
        return changed is not None and now >= changed + lease.duration * factor


@dataclasses.dataclass(slots=True)
class Holding:
    """A shard this replica holds: the Lease's version it last wrote, and when the request
    that wrote it was sent. Fresh until that send time plus the renew deadline: the others
    wait a whole lease duration from when they saw that version, which is later."""

    version: str
    renewed_at: float
    transitions: int = 0
    #: False once it is being handed over: nothing new starts for its credentials.
    serving: bool = True

    def fresh(self, *, now: float, renew_deadline: float) -> bool:
        return now < self.renewed_at + renew_deadline


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What one round does: shards to hand over (stop, then release) and to take."""

    release: tuple[int, ...] = ()
    acquire: tuple[int, ...] = ()
    #: The live members, this one included, and whether they all run with this shard count.
    members: int = 1
    agreed: bool = True


def fair_share(shards: int, members: int) -> int:
    """The most shards one replica should hold: ceil(shards / members)."""
    return math.ceil(shards / max(1, members))


def preference(identity: str, shard: int) -> int:
    """Rendezvous score: replicas prefer different shards, so they seldom race for one."""
    digest = hashlib.blake2b(f"{identity}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def plan(
    *,
    identity: str,
    shards: int,
    held: Iterable[int],
    leases: Iterable[Lease],
    observer: Observer,
    now: float,
    lease_set: str,
) -> Plan:
    """One round's decision, from a listing of the installation's Leases.

    Live members are the member Leases not expired (this replica's own always counts). When
    a live member runs with another shard count, nothing is held: two counts would put
    one credential in two shards. Otherwise a replica holding more than its fair share
    hands the extra over (its least preferred first), and one holding fewer takes free or
    expired shard Leases (its most preferred first). A shard Lease that does not exist yet
    is free, and so is one still naming this replica after it gave it up. Nobody takes a
    Lease another replica holds and renews.
    """
    held_set = set(held)
    members = [lease for lease in leases if lease.role == MEMBER_ROLE]
    by_name = {lease.name: lease for lease in leases if lease.role == SHARD_ROLE}
    mine = member_lease(lease_set, identity)
    live = [
        lease
        for lease in members
        if lease.name != mine and lease.holder and not observer.expired(lease, now=now)
    ]
    count = len(live) + 1
    agreed = all(lease.shards == shards for lease in live)
    if not agreed:
        return Plan(release=tuple(sorted(held_set)), members=count, agreed=False)
    fair = fair_share(shards, count)
    ranked = sorted(held_set, key=lambda shard: preference(identity, shard))
    if len(held_set) > fair:
        return Plan(release=tuple(ranked[: len(held_set) - fair]), members=count)
    free = [
        shard
        for shard in range(shards)
        if shard not in held_set
        and (
            (lease := by_name.get(shard_lease(lease_set, shard))) is None
            # Still naming this replica (a renewal failed, no one took it since): only this
            # process writes its identity, so it may take it back at once.
            or lease.holder == identity
            or observer.expired(lease, now=now)
        )
    ]
    free.sort(key=lambda shard: preference(identity, shard), reverse=True)
    return Plan(acquire=tuple(free[: fair - len(held_set)]), members=count)


def gone_members(
    leases: Iterable[Lease], *, observer: Observer, now: float, identity: str, lease_set: str
) -> list[Lease]:
    """Member Leases of replicas long gone (crashed: a clean stop deletes its own)."""
    mine = member_lease(lease_set, identity)
    return [
        lease
        for lease in leases
        if lease.role == MEMBER_ROLE
        and lease.name != mine
        and lease.holder
        and observer.expired(lease, now=now, factor=MEMBER_GONE_AFTER)
    ]
