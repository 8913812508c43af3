"""This replica's Leases: it joins, takes and renews shards, hands them over (decision 0050).

One round every retry period: list the installation's Leases, renew this replica's member
Lease and every shard it holds, then act on ``leases.plan``: hand over what is beyond its
fair share, take free or expired shards up to it. Every Lease write is conditional on the
resourceVersion it replaces, so two replicas never both win a shard.

The Lease calls use a Kubernetes client and a thread of their own: a refresh backlog on
the shared client must not delay a renewal, or a busy leader would lose its lease.

Fencing: :attr:`Membership.fresh_until` is the earliest send time of the last successful
renewal of a held shard plus the renew deadline. The Kubernetes client checks it in its
own thread just before every write (``kube.Kube(fence=...)``), so a replica that was frozen
past its lease writes nothing after it wakes; and every write is conditional anyway
(decision 0036), so a write already on its way cannot roll a newer token back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import urllib3
from kubernetes import client

from tokensync import config, kuberest, leases, metrics

logger = logging.getLogger(__name__)
_LEASES = "coordination.k8s.io/v1"
#: How long a hand-over waits for the shard's refreshes in flight before it releases anyway.
HAND_OVER_WAIT = 30.0


class Shards(Protocol):
    """What the reconcile loop does when this replica gains or loses shards."""

    def take_over(self, shard: int) -> None: ...

    def hand_over(self, shard: int) -> None: ...

    def busy(self, shard: int) -> bool: ...

    def counts(self) -> tuple[int, int]:
        """Credentials served here, and those standing by."""
        ...


def _micro_time(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi:
    """Lease reads and conditional writes, raw JSON, on a thread of their own."""

    def __init__(self, api: client.ApiClient, *, namespace: str, timeout: float) -> None:
        self._rest = kuberest.Rest(api)
        self._namespace = namespace
        self._timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="leases"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(
        self,
        method: str,
        name: str | None = None,
        *,
        query: kuberest.Query = (),
        body: dict[str, Any] | None = None,
    ) -> Any:
        path = kuberest.path(_LEASES, "leases", namespace=self._namespace, name=name)
        call = functools.partial(
            self._rest.json, method, path, query=query, body=body, timeout=self._timeout
        )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except urllib3.exceptions.HTTPError as exc:
            # Refused, timed out, cut: urllib3's errors are not OSErrors, and the callers
            # treat a failed call to the API server as one.
            raise ConnectionError(f"{method} Lease: {type(exc).__name__}") from None

    async def list(self, lease_set: str) -> list[dict[str, Any]]:
        body = await self._call(
            "GET", query=[("labelSelector", f"{leases.LEASE_SET_LABEL}={lease_set}")]
        )
        return list((body or {}).get("items") or [])

    async def read(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._call("GET", name)
        return found

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._call("POST", body=body)
        return created

    async def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Conditional on ``body.metadata.resourceVersion``: 409 when it is not current."""
        replaced: dict[str, Any] = await self._call("PUT", name, body=body)
        return replaced

    async def delete(self, name: str, version: str) -> None:
        await self._call("DELETE", name, body={"preconditions": {"resourceVersion": version}})


def _status(exc: BaseException) -> int:
    if isinstance(exc, client.ApiException):
        return int(exc.status or 0)
    return 0


class Membership:
    def __init__(
        self,
        *,
        api: LeaseApi,
        settings: config.Config,
        identity: str,
        metrics_: metrics.Metrics,
        share_rate: Callable[[float], None] = lambda share: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._api = api
        self._settings = settings
        self.identity = identity
        self._metrics = metrics_
        self._share_rate = share_rate
        self._clock = clock
        self._wall = wall
        self._observer = leases.Observer()
        self._held: dict[int, leases.Holding] = {}
        self._handing_over: dict[int, float] = {}  # shard: when its hand-over started
        self._member: str | None = None  # this replica's member Lease resourceVersion
        self._shards: Shards | None = None
        #: Set by :meth:`stop`: no renewal comes any more, so the fence may only close.
        self._stopping = False
        #: Writes are allowed until this monotonic time (read by the Kubernetes client's
        #: threads: one float, replaced whole).
        self.fresh_until = 0.0
        metrics_.shards.set(settings.shards)

    @property
    def _set(self) -> str:
        return self._settings.lease_name

    # -- what the rest of the operator asks -------------------------------------------

    def serves(self, shard: int) -> bool:
        holding = self._held.get(shard)
        return (
            holding is not None
            and holding.serving
            and holding.fresh(now=self._clock(), renew_deadline=self._settings.renew_deadline)
        )

    def may_write(self) -> bool:
        """Called in the Kubernetes client's threads, just before each write."""
        return self._clock() < self.fresh_until

    # -- the rounds --------------------------------------------------------------------

    def attach(self, shards: Shards) -> None:
        """Who is told when this replica takes a shard over or hands one over."""
        self._shards = shards

    async def run(self, shards: Shards, *, warm: Callable[[], Awaitable[None]]) -> None:
        """Join once the reconcile loop knows every credential, then one round per retry
        period until cancelled."""
        self.attach(shards)
        await warm()
        logger.info(
            "joining as %s: %d shard(s), Leases %s-* in %s",
            self.identity,
            self._settings.shards,
            self._set,
            self._settings.lease_namespace,
        )
        while True:
            started = self._clock()
            await self.step()
            await asyncio.sleep(max(0.0, self._settings.retry_period - (self._clock() - started)))

    async def step(self) -> None:
        """One round; then every shard not renewed within the renew deadline is given up,
        whether or not the round got through."""
        try:
            await self.round()
        except (client.ApiException, OSError, ValueError) as exc:
            # The API server's trouble (LeaseApi turns urllib3's errors into OSErrors): next
            # round.
            logger.warning("lease round failed (%s %d); retried", type(exc).__name__, _status(exc))
        finally:
            self._expire()

    async def round(self) -> None:
        # Renewals first: they need no listing, and a failed listing must not cost a shard.
        for shard in list(self._held):
            await self._renew(shard)
        found = [leases.Lease.from_body(body) for body in await self._api.list(self._set)]
        # Seen when the answer is here, not when asked: a later time only delays a takeover.
        self._observer.observe(found, now=self._clock())
        await self._renew_member(found)
        decision = leases.plan(
            identity=self.identity,
            shards=self._settings.shards,
            held=self._held,
            leases=found,
            observer=self._observer,
            now=self._clock(),
            lease_set=self._set,
        )
        if not decision.agreed:
            logger.warning("replicas run with different shard counts: standing by until they agree")
        for shard in decision.release:
            self._start_hand_over(shard)
        for shard, holding in self._held.items():
            if shard not in decision.release and not holding.serving:
                self._resume(shard)
        await self._finish_hand_overs()
        by_name = {lease.name: lease for lease in found}
        for shard in decision.acquire:
            await self._acquire(shard, by_name.get(leases.shard_lease(self._set, shard)))
        for lease in leases.gone_members(
            found,
            observer=self._observer,
            now=self._clock(),
            identity=self.identity,
            lease_set=self._set,
        ):
            with contextlib.suppress(client.ApiException):
                await self._api.delete(lease.name, lease.version)
                logger.info("deleted the member Lease %s of a replica long gone", lease.name)
        self._export()

    async def stop(self) -> None:
        """A clean stop: leave, then hand every shard over. Leaving first lets the others
        count one member fewer at once, so that each shard is taken as soon as it is
        released, not only after the last one is."""
        self._stopping = True
        if self._member is not None:
            with contextlib.suppress(client.ApiException, OSError):
                await self._write_mine(
                    leases.member_lease(self._set, self.identity), self._member, self._api.delete
                )
            self._member = None
        for shard in list(self._held):
            self._start_hand_over(shard)
        # No renewal from here on: once the fence closes, a refresh in flight can no longer
        # write, so waiting for it longer would only keep the others from the shards.
        deadline = self._clock() + HAND_OVER_WAIT
        while self._handing_over and self._clock() < min(deadline, self.fresh_until):
            await self._finish_hand_overs(force=False)
            if self._handing_over:
                await asyncio.sleep(0.1)
        await self._finish_hand_overs(force=True)
        self._export()
        self._api.close()

    # -- Lease writes ------------------------------------------------------------------

    def _body(
        self,
        name: str,
        role: str,
        *,
        version: str | None,
        holder: str,
        transitions: int,
        acquired: bool,
        duration: float | None = None,
    ) -> dict[str, Any]:
        now = _micro_time(self._wall())
        meta: dict[str, Any] = {
            "name": name,
            "labels": {leases.LEASE_SET_LABEL: self._set, leases.LEASE_ROLE_LABEL: role},
        }
        if role == leases.MEMBER_ROLE:
            meta["annotations"] = {leases.SHARDS_ANNOTATION: str(self._settings.shards)}
        if version is not None:
            meta["resourceVersion"] = version
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(duration or self._settings.lease_duration)),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if acquired:
            spec["acquireTime"] = now
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    async def _renew_member(self, found: list[leases.Lease]) -> None:
        name = leases.member_lease(self._set, self.identity)
        if self._member is None:
            existing = next((lease for lease in found if lease.name == name), None)
            if existing is not None:
                self._member = existing.version
        body = self._body(
            name,
            leases.MEMBER_ROLE,
            version=self._member,
            holder=self.identity,
            transitions=0,
            acquired=self._member is None,
        )
        try:
            written = await (
                self._api.create(body) if self._member is None else self._api.replace(name, body)
            )
        except client.ApiException as exc:
            if _status(exc) in (404, 409):
                self._member = None  # deleted or replaced meanwhile: written again next round
            logger.warning("renewing the member Lease failed (HTTP %d)", _status(exc))
            return
        self._member = written["metadata"]["resourceVersion"]

    async def _renew(self, shard: int) -> None:
        holding = self._held[shard]
        name = leases.shard_lease(self._set, shard)
        sent = self._clock()
        body = self._body(
            name,
            leases.SHARD_ROLE,
            version=holding.version,
            holder=self.identity,
            transitions=holding.transitions,
            acquired=False,
        )
        try:
            written = await self._api.replace(name, body)
        except client.ApiException as exc:
            if _status(exc) in (404, 409):
                self._lose(shard, "its Lease was taken or deleted")
                return
            logger.warning("renewing shard %d failed (HTTP %d)", shard, _status(exc))
            return
        except OSError as exc:
            logger.warning("renewing shard %d failed: %s", shard, type(exc).__name__)
            return
        holding.version = written["metadata"]["resourceVersion"]
        holding.renewed_at = sent
        self._fence()

    async def _acquire(self, shard: int, lease: leases.Lease | None) -> None:
        name = leases.shard_lease(self._set, shard)
        transitions = 0 if lease is None else lease.transitions + 1
        body = self._body(
            name,
            leases.SHARD_ROLE,
            version=None if lease is None else lease.version,
            holder=self.identity,
            transitions=transitions,
            acquired=True,
        )
        sent = self._clock()
        try:
            written = await (
                self._api.create(body) if lease is None else self._api.replace(name, body)
            )
        except client.ApiException as exc:
            if _status(exc) == 409:
                return  # another replica was first
            raise
        self._held[shard] = leases.Holding(
            version=written["metadata"]["resourceVersion"],
            renewed_at=sent,
            transitions=transitions,
        )
        self._fence()
        self._metrics.leadership_transitions.labels("acquired").inc()
        logger.info(
            "took shard %d (%s)%s",
            shard,
            name,
            f" from {lease.holder}" if lease is not None and lease.holder else "",
        )
        if self._shards is not None:
            self._shards.take_over(shard)
        self._export()

    def _start_hand_over(self, shard: int) -> None:
        holding = self._held.get(shard)
        if holding is None or not holding.serving:
            return
        holding.serving = False
        self._handing_over[shard] = self._clock()
        if self._shards is not None:
            self._shards.hand_over(shard)
        logger.info("handing shard %d over", shard)

    def _resume(self, shard: int) -> None:
        self._held[shard].serving = True
        self._handing_over.pop(shard, None)
        if self._shards is not None:
            self._shards.take_over(shard)

    async def _finish_hand_overs(self, *, force: bool = False) -> None:
        """Release each shard being handed over once its refreshes in flight are done."""
        for shard, since in list(self._handing_over.items()):
            busy = self._shards is not None and self._shards.busy(shard)
            if busy and not force and self._clock() < since + HAND_OVER_WAIT:
                continue
            holding = self._held.get(shard)
            del self._handing_over[shard]
            if holding is None:
                continue
            del self._held[shard]
            self._fence()
            try:
                await self._write_mine(
                    leases.shard_lease(self._set, shard),
                    holding.version,
                    functools.partial(self._free, transitions=holding.transitions),
                )
            except (client.ApiException, OSError) as exc:
                # Not released: the Lease expires in its own time.
                logger.warning(
                    "releasing shard %d failed (%s %d)", shard, type(exc).__name__, _status(exc)
                )
                continue
            self._metrics.leadership_transitions.labels("released").inc()
            logger.info("released shard %d", shard)
        self._export()

    async def _free(self, name: str, version: str, *, transitions: int) -> None:
        """A shard's Lease released: no holder, and a duration of one second."""
        body = self._body(
            name,
            leases.SHARD_ROLE,
            version=version,
            holder="",
            transitions=transitions,
            acquired=False,
            duration=1,
        )
        await self._api.replace(name, body)

    async def _write_mine(
        self, name: str, version: str, write: Callable[[str, str], Awaitable[Any]]
    ) -> None:
        """``write(name, version)``, conditional on ``version``; on a conflict, once more on
        the Lease's current version if it still names this replica, and not at all if it
        names no one. A renewal whose answer never came (cancelled by :meth:`stop`, or
        timed out) may have been written all the same: then this process's own newer
        version is what stands in the way, and since only this process writes its
        identity, nobody else has the Lease."""
        try:
            await write(name, version)
        except client.ApiException as exc:
            if _status(exc) != 409:
                raise
            current = leases.Lease.from_body(await self._api.read(name))
            if not current.holder:
                return  # free already: a write of ours that was retried, or released since
            if current.holder != self.identity:
                raise
            await write(name, current.version)

    def _lose(self, shard: int, why: str) -> None:
        holding = self._held.pop(shard, None)
        self._handing_over.pop(shard, None)
        self._fence()
        if holding is None:
            return
        if holding.serving and self._shards is not None:
            self._shards.hand_over(shard)
        self._metrics.leadership_transitions.labels("lost").inc()
        logger.warning("lost shard %d: %s", shard, why)
        self._export()

    def _expire(self) -> None:
        """Stop serving every shard not renewed within the renew deadline."""
        now = self._clock()
        for shard, holding in list(self._held.items()):
            if not holding.fresh(now=now, renew_deadline=self._settings.renew_deadline):
                self._lose(shard, "not renewed within the renew deadline")

    def _fence(self) -> None:
        deadline = self._settings.renew_deadline
        fresh_until = min(
            (holding.renewed_at + deadline for holding in self._held.values()), default=0.0
        )
        # While stopping, a shard released must not reopen a fence an older one had closed.
        self.fresh_until = min(self.fresh_until, fresh_until) if self._stopping else fresh_until

    def _export(self) -> None:
        serving = sum(1 for holding in self._held.values() if holding.serving)
        self._metrics.shards_held.set(len(self._held))
        for shard in range(self._settings.shards):
            self._metrics.shard_held.labels(str(shard)).set(1 if shard in self._held else 0)
        self._metrics.leader.set(1 if serving else 0)
        if self._shards is not None:
            served, standing_by = self._shards.counts()
            self._metrics.credentials.labels("served").set(served)
            self._metrics.credentials.labels("standby").set(standing_by)
        self._share_rate(serving / self._settings.shards)


def for_settings(
    settings: config.Config,
    *,
    identity: str,
    api: client.ApiClient,
    metrics_: metrics.Metrics,
    share_rate: Callable[[float], None],
) -> Membership:
    """The membership of a replica started with ``--leader-elect``."""
    namespace = settings.lease_namespace
    if not namespace:
        raise ValueError("--leader-elect needs --lease-namespace (or POD_NAMESPACE)")
    timeout = max(1.0, min(5.0, settings.renew_deadline / 2))
    return Membership(
        api=LeaseApi(api, namespace=namespace, timeout=timeout),
        settings=settings,
        identity=identity,
        metrics_=metrics_,
        share_rate=share_rate,
    )
