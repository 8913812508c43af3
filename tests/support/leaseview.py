"""tokensync's Leases as a test sees them: who holds which shard, and since when.

An installation's Leases carry the label ``tokensync.dev/lease-set=<lease name>``; the
shard Leases (``<set>-shard-<i>``, role ``shard``) name their holder in
``spec.holderIdentity``, and each replica has a member Lease (role ``member``). The labels
are spelled out here, as a user would write them, not imported from the operator.

:class:`LeaseView` reads them once; :class:`HolderRecorder` polls them in a thread and
keeps every change of holder with the time it was first seen (``time.time()``), from which
a takeover is timed to within the poll period.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from types import TracebackType

from kubernetes import client

SET_LABEL = "tokensync.dev/lease-set"
ROLE_LABEL = "tokensync.dev/lease-role"
_SHARD = re.compile(r"-shard-(\d+)$")


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """A shard's holder as first seen at ``at`` ("" for none: released or never taken)."""

    at: float
    shard: int
    holder: str
    transitions: int


class LeaseView:
    def __init__(self, api: client.ApiClient, *, namespace: str, lease_set: str) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.lease_set = lease_set

    def _list(self, role: str) -> list[client.V1Lease]:
        selector = f"{SET_LABEL}={self.lease_set},{ROLE_LABEL}={role}"
        items: list[client.V1Lease] = self.coordination.list_namespaced_lease(
            self.namespace, label_selector=selector, _request_timeout=5
        ).items
        return items

    def shards(self) -> dict[int, tuple[str, int]]:
        """Shard: (holder, leaseTransitions), for the shard Leases that exist."""
        found: dict[int, tuple[str, int]] = {}
        for lease in self._list("shard"):
            number = _SHARD.search(lease.metadata.name)
            if number is not None:
                spec = lease.spec
                found[int(number.group(1))] = (
                    spec.holder_identity or "",
                    int(spec.lease_transitions or 0),
                )
        return found

    def holders(self) -> dict[int, str]:
        return {shard: holder for shard, (holder, _) in self.shards().items()}

    def members(self) -> list[str]:
        """The identities of the member Leases (live or not yet cleaned up)."""
        return sorted(lease.spec.holder_identity or "" for lease in self._list("member"))

    def spread(self, shards: int) -> dict[str, int]:
        """Shards held per holder, when every one of ``shards`` is held (else {})."""
        holders = self.holders()
        if sorted(holders) != list(range(shards)) or not all(holders.values()):
            return {}
        return dict(collections.Counter(holders.values()))


class HolderRecorder(threading.Thread):
    """Polls the shard Leases every ``period`` and records each change of holder."""

    def __init__(self, view: LeaseView, *, period: float = 0.05) -> None:
        super().__init__(name="lease-recorder", daemon=True)
        self.view = view
        self.period = period
        self.changes: list[Change] = []
        self.failed_reads = 0
        self._current: dict[int, str] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                shards = self.view.shards()
            except Exception:  # the API server is busy: next poll
                self.failed_reads += 1
            else:
                now = time.time()
                with self._lock:
                    for shard, (holder, transitions) in sorted(shards.items()):
                        if self._current.get(shard) != holder:
                            self._current[shard] = holder
                            self.changes.append(Change(now, shard, holder, transitions))
            self._halt.wait(self.period)

    def holder_since(self, shard: int, holder: str, *, after: float = 0.0) -> float | None:
        """When ``holder`` was first seen holding ``shard`` at or after ``after``."""
        with self._lock:
            return next(
                (
                    c.at
                    for c in self.changes
                    if c.shard == shard and c.holder == holder and c.at >= after
                ),
                None,
            )

    def history(self) -> list[Change]:
        with self._lock:
            return list(self.changes)

    def __enter__(self) -> HolderRecorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._halt.set()
        self.join(10)
