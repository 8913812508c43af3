"""The reconcile loop: watch events in, attempts run by the queue, decisions applied.

Each refresh reads as the pipeline it runs: the credential's record (``tracking``), one
attempt's I/O (``attempt``), what it means (``outcome``, pure: the Ready and retry rules),
and the decision applied (``effects``). This is the only module that tells the refresh
queue when a credential is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from tokensync import (
    alarms,
    attempt,
    config,
    discovery,
    effects,
    endpoint,
    failures,
    kube,
    metrics,
    model,
    outcome,
    parsing,
    possession,
    progress,
    rollouts,
    scheduler,
    seen,
    status,
    target,
    tracking,
    transport,
    writer,
)

Key = tracking.Key
logger = logging.getLogger(__name__)
#: Seconds between a target's deletion and its re-check (decision 0035).
TARGET_DELETED_GRACE = 1.0


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def refresh_queue(
    workers: int, reconciler: Callable[[], Reconciler]
) -> scheduler.RefreshQueue[Key]:
    """The refresh queue the reconciler of ``reconciler()`` feeds (built after it, since it
    needs the queue): due credentials are handed out in turns across namespaces, no namespace
    or host holds more than half the workers (decision 0034), and within a namespace the
    token that expires first is refreshed first (decision 0066)."""
    return scheduler.RefreshQueue(
        workers=workers,
        group=lambda key: key[0],
        lane=lambda key: reconciler().lane(key),
        rank=lambda key: reconciler().urgency(key),
    )


class Reconciler:
    def __init__(
        self,
        *,
        kube_api: kube.Kube,
        http: transport.HttpClients,
        metrics_: metrics.Metrics,
        queue: scheduler.RefreshQueue[Key],
        pacer: scheduler.HostPacer,
        settings: config.Config = config.DEFAULTS,
        clock: Callable[[], datetime.datetime] = utcnow,
        draw: Callable[[], float] = random.random,
        metadata: discovery.MetadataCache | None = None,
        seen_secrets: seen.SeenSecrets | None = None,
        events: scheduler.Budget | None = None,
        serving: Callable[[int], bool] | None = None,
    ) -> None:
        self._queue = queue
        #: Does this process serve a shard now (decision 0050)? Without leader election,
        #: every credential is served here.
        self._serving = serving or _everything
        self._kube = kube_api
        self._metrics = metrics_
        self._settings = settings
        self._clock = clock
        self._draw = draw
        self._seen = seen_secrets if seen_secrets is not None else seen.SeenSecrets()
        #: Which target watches have listed: the runtime tells (decision 0052).
        self.target_listings = writer.TargetListings()
        self._tracker = tracking.Tracker(shards=settings.shards if serving else 1)
        self._expiries = alarms.Alarms[Key](clock=lambda: self._clock().timestamp())
        #: Per credential with effects being applied: a lock and how many use it.
        self._applying: dict[Key, tuple[asyncio.Lock, list[int]]] = {}
        self._attempts = attempt.Attempts(
            kube_api=kube_api,
            endpoints=endpoint.Endpoints(
                kube_api=kube_api,
                http=http,
                metadata=metadata or discovery.MetadataCache(),
                settings=settings,
            ),
            targets=writer.TargetWriter(kube_api=kube_api, listings=self.target_listings),
            metrics_=metrics_,
            pacer=pacer,
            seen_secrets=self._seen,
            settings=settings,
            clock=clock,
            draw=draw,
            serving=self._serves,
        )
        budget = events or scheduler.Budget(rate=settings.event_rate, burst=config.EVENT_BURST)
        # Valid proofs at the refresh endpoint, per credential (decision 0043).
        self._asks = possession.Limiter(
            rate=settings.refresh_asks_per_minute / 60.0, burst=settings.refresh_ask_burst
        )
        self._effects = effects.Effects(kube_api=kube_api, metrics_=metrics_, events=budget)
        #: spec.rolloutRestart, on a queue of its own (decision 0042); runtime runs it.
        self.rollouts = rollouts.Rollouts(
            kube_api=kube_api,
            metrics_=metrics_,
            effects_=self._effects,
            lookup=self._tracker.get,
            clock=clock,
            workers=settings.rollout_workers,
        )

    def __len__(self) -> int:
        return len(self._tracker)

    def knows(self, key: Key) -> bool:
        return self._tracker.get(key) is not None

    def lane(self, key: Key) -> str | None:
        """The host a credential's refresh waits on (its issuer's or token URL's), for the
        refresh queue's per-host share (decision 0034)."""
        record = self._tracker.get(key)
        spec = record.spec if record else {}
        url = spec.get("issuerURL") or spec.get("tokenURL")
        if not isinstance(url, str):
            return None
        try:
            return (urllib.parse.urlsplit(url).hostname or "").lower() or None
        except ValueError:
            return None  # refused by the attempt's URL check, before any request

    def urgency(self, key: Key) -> float:
        """When a due credential's token expires (a POSIX timestamp), for the order of the
        refresh queue within a namespace: the earliest first, and a credential without a
        token before any (decision 0066)."""
        record = self._tracker.get(key)
        expires_at = record.state.expires_at if record else None
        return expires_at.timestamp() if expires_at is not None else -math.inf

    # -- watch events ------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        """A ClientCredential was listed, added or modified."""
        record = self._tracker.put(body)
        for name in record.secret_names:
            self._seen.claim(record.namespace, name)
        if not self._serves(record):
            self._stand_by(record, body)
            return
        self._arm(record)
        if record.needs_refresh_now():
            self._queue.trigger(record.key)
        else:
            self._resume(record)
        parked = self._tracker.claim_target(record.key)
        if parked is not None:
            self.target_seen(parked)  # its target was listed first (decision 0035)

    def _resume(self, record: tracking.Record) -> None:
        """Schedule a credential this process has not scheduled yet (after a start, or a
        shard taken over) at the refresh time its status gives."""
        if self._queue.is_known(record.key) or record.parked:
            return
        due = record.state.next_refresh_at or self._clock()
        self._queue.schedule(record.key, at=due.timestamp())
        self._resume_metrics(record)
        # A restart that a crash prevented is made now; no other (decision 0042).
        self.rollouts.token_changed(record, resumed=True)

    def _serves(self, record: tracking.Record) -> bool:
        return self._serving(record.shard)

    def _stand_by(self, record: tracking.Record, body: Mapping[str, Any]) -> None:
        """Another replica serves it: keep what a takeover needs, as a start would read it
        from status (decision 0050). Its target is read before its first write here."""
        record.state = progress.State.from_status(body.get("status") or {})
        record.parked = False
        record.target_uid = None
        self._tracker.claim_target(record.key)

    # -- shards (decision 0050) --------------------------------------------------------

    def take_over(self, shard: int) -> None:
        """This replica now serves ``shard``: refresh what is due, no listing needed."""
        for record in self._tracker.in_shard(shard):
            # Its state is status as the watch delivered it, which may lag the previous
            # holder's last write: the first attempt here checks it (Record.unconfirmed).
            record.unconfirmed = True
            self._arm(record)
            if record.needs_refresh_now():
                self._queue.trigger(record.key)
            else:
                self._resume(record)

    def hand_over(self, shard: int) -> None:
        """This replica stops serving ``shard``: nothing new starts for its credentials (a
        refresh running ends; ``busy`` says when), and its metrics go, since a standby's
        would go stale and alert."""
        for record in self._tracker.in_shard(shard):
            self._queue.cancel(record.key)
            self._expiries.cancel(record.key)
            self._metrics.forget(record.namespace, record.name)
            record.target_uid = None
            record.unconfirmed = False

    def busy(self, shard: int) -> bool:
        """A refresh of one of the shard's credentials is under way. One that is due but not
        begun does not count: a worker that takes it finds the shard not served and does
        nothing (waiting for those behind the other shards' paced refreshes held a hand-over
        up for seconds)."""
        active = (self._tracker.get(key) for key in self._queue.active())
        return any(record is not None and record.shard == shard for record in active)

    def counts(self) -> tuple[int, int]:
        """Credentials served here, and those standing by."""
        served = sum(1 for record in self._tracker.records() if self._serves(record))
        return served, len(self._tracker) - served

    def _resume_metrics(self, record: tracking.Record) -> None:
        """A credential resumed from its status (after a start): export what status says
        until its next refresh, so that the expiring-soon alert can fire meanwhile."""
        state, ns, name = record.state, record.namespace, record.name
        if state.expires_at is not None and state.next_refresh_at is not None:
            self._metrics.expiration.labels(ns, name).set(state.expires_at.timestamp())
            self._metrics.renewal.labels(ns, name).set(state.next_refresh_at.timestamp())
        ready = status.ready_condition(state.conditions)
        if ready is not None and ready.status in ("True", "False"):
            self._metrics.set_ready(ns, name, ready.status)

    def credential_event(self, event: tracking.Event) -> None:
        """The ClientCredentials' watch (decision 0061) listed, added, modified or deleted
        one."""
        if event.body is None:
            self.forget(event.namespace, event.name)
        else:
            self.observe(event.body)

    def forget(self, namespace: str, name: str) -> None:
        """A ClientCredential was deleted: stop refreshing it."""
        self._tracker.remove((namespace, name))
        self._queue.cancel((namespace, name))
        self._expiries.cancel((namespace, name))
        self._metrics.forget(namespace, name)

    def mark(self) -> int:
        """Call before a full listing of ClientCredentials; pass the result to retain()."""
        return self._tracker.mark()

    def retain(self, listed: set[Key], *, since: int) -> list[Key]:
        """Forget the credentials a full listing no longer has (deleted while the watch was
        down: a relist delivers no DELETED event). Returns what was forgotten."""
        gone = self._tracker.absent(listed, since=since)
        for namespace, name in gone:
            self.forget(namespace, name)
        return gone

    def client_secret_event(self, event: seen.Event) -> None:
        """The watch of opted-in Secrets (decision 0059) listed, added, modified or deleted
        one, or saw its label removed."""
        if event.body is None:
            self.secret_gone(event.namespace, event.name)
        else:
            self.secret_seen(event.body)

    def secret_seen(self, body: Mapping[str, Any]) -> None:
        """The watch of opted-in Secrets listed, added or modified one."""
        meta = body["metadata"]
        # Kept long only if a credential reads it (issue 14 section 3); else briefly, for
        # the credential that a cold start's other listing may bring next.
        self._seen.put(
            body, referenced=self._tracker.is_referenced(meta["namespace"], meta["name"])
        )
        self.client_secret_changed(
            meta["namespace"], meta["name"], str(meta.get("resourceVersion") or "")
        )

    def secrets_mark(self) -> float:
        """Call before a listing of the opted-in Secrets; pass the result to
        confirm_secrets()."""
        return self._seen.now()

    def confirm_secrets(self, listed: Mapping[Key, str], *, since: float) -> int:
        """What a listing of the opted-in Secrets says about the ones kept (decision 0025)."""
        return self._seen.confirm(listed, since=since)

    def secret_gone(self, namespace: str, name: str) -> None:
        """An opted-in Secret was deleted or lost its label: read it from the API again."""
        self._seen.drop(namespace, name)

    def client_secret_changed(self, namespace: str, name: str, version: str) -> None:
        """A client Secret was listed, added or modified: refetch with a rotated secret."""
        for record in self._tracker.readers(namespace, name, version):
            if not self._serves(record):
                continue
            if self._queue.is_running(record.key):
                # The refresh in flight may have read this very version (on a cold start the
                # Secrets' list arrives while the first refreshes run): decide when it ends.
                self._tracker.seen_while_running(record.key, name, version)
            else:
                self._queue.trigger(record.key)

    # -- target Secrets ----------------------------------------------------------------

    def target_seen(self, found: target.Seen) -> None:
        """The watch of managed Secrets listed, added, modified or deleted one (decision
        0035). No I/O: an event for a version this process wrote costs a few lookups and
        a string comparison. A change by anyone else makes the credential's next attempt,
        at once, read the target first: it adopts a newer token another operator process
        stored, or writes a new one (no sooner than minInterval after the current one)."""
        record = self._tracker.get((found.namespace, found.owner[0]))
        if record is None:
            # On a start the targets may be listed before their credentials: judged when
            # the credential comes (observe).
            self._tracker.park_target(found, now=self._clock().timestamp())
            return
        if record.uid != found.owner[1] or record.deleting:
            return
        if record.target_name != found.name:
            return  # not its target (now): a renamed spec.target leaves the old Secret be
        if not self._serves(record):
            # Another replica wrote it: read again before this one writes (decision 0050).
            record.target_uid = None
            if not found.deleted:
                record.holds(found.token_id)
            return
        if self._queue.is_active(record.key):
            # Judged when the attempt in flight ends (Tracker.stale_after_run): its write
            # may supersede this change, or this change may have come after its write.
            self._tracker.target_seen_while_running(record.key, found)
            return
        # One that only waits for a worker has read and written nothing yet: judged now, so
        # that its attempt need not read a target the listing just delivered (a start with
        # every credential due at once made thousands of such reads).
        waiting = self._queue.is_running(record.key)
        verdict = tracking.judge(record, found)
        if verdict is tracking.Verdict.AGREES:
            record.accept(found)
        elif verdict is tracking.Verdict.CHANGED:
            record.target_uid = None  # the next attempt reads it before anything else
            if found.deleted:
                record.target_deleted = True
                # A namespace being deleted takes its Secrets first: a moment later the
                # client Secret is gone too and no token is fetched for a dying namespace.
                at = self._clock().timestamp() + TARGET_DELETED_GRACE
                due = self._queue.due_at(record.key)
                if not waiting and (due is None or due > at):
                    self._queue.schedule(record.key, at=at)
            elif not waiting:  # a waiting one runs soon anyway, and reads it first
                self._queue.trigger(record.key)
            logger.info(
                "target Secret %s/%s of %s was %s outside this process: re-checked %s",
                found.namespace,
                found.name,
                record.name,
                "deleted" if found.deleted else "changed",
                f"in {TARGET_DELETED_GRACE:g} s" if found.deleted else "now",
            )

    # -- the refresh -------------------------------------------------------------------

    async def refresh(self, key: Key, due: float) -> None:
        """The refresh queue's work: one attempt for one credential."""
        try:
            await self._refresh(key, due)
        finally:
            if self._tracker.stale_after_run(key):
                self._queue.trigger(key)  # running: runs again right after this attempt

    async def _refresh(self, key: Key, due: float) -> None:
        record = self._tracker.get(key)
        if record is None or not self._serves(record):
            return
        now = self._clock()
        self._metrics.lateness.observe(max(0.0, now.timestamp() - due))
        not_before = record.state.not_before
        if not_before and now < not_before and not record.needs_refresh_now():
            # Woken at expiry while the token endpoint asked us to wait (Retry-After).
            generation = record.state.handled_generation or record.generation
            await self._apply(record, outcome.waiting(record.state, generation=generation, now=now))
            return
        if record.target_deleted and not await self._still_exists(record):
            return
        this = progress.Attempt(generation=record.generation, request=record.refresh_request)
        try:
            result = await self._attempts.run(record, this)
        except attempt.HandedOver:
            return  # the replica that took the shard over refreshes it
        if not self._tracker.is_current(record):
            return  # deleted while we worked; its Secret goes with it (ownerReference)
        now = self._clock()  # not the attempt's start: a request may have taken a while
        decision = outcome.decide(record.state, this, result, now=now, draw=self._draw())
        await self._apply(record, decision)
        if isinstance(result, progress.Issued | progress.Adopted):
            # Only a token this process wrote restarts a workload without a record of an
            # earlier one; an adopted token is a resumed one (decision 0042).
            self.rollouts.token_changed(record, resumed=isinstance(result, progress.Adopted))

    async def _still_exists(self, record: tracking.Record) -> bool:
        """Before a deleted target is written again: is its credential still there? A
        credential deleted while the watch was down (no DELETED event) has its target
        garbage-collected; writing it again would only feed the collector."""
        record.target_deleted = False
        try:
            body = await self._kube.read_credential(record.namespace, record.name)
        except failures.ApiError:
            return True  # the attempt reports the API server's trouble itself
        if body is not None and body["metadata"].get("uid") == record.uid:
            return True
        self.forget(record.namespace, record.name)
        logger.info("forgot %s/%s: deleted while a watch was down", record.namespace, record.name)
        return False

    async def _apply(self, record: tracking.Record, decision: progress.Decision) -> None:
        record.state = decision.state
        self._arm(record)
        if decision.reschedule:
            record.parked = decision.due is None
            if decision.due is not None:
                self._queue.schedule(record.key, at=decision.due.timestamp())
            else:
                self._queue.cancel(record.key)  # only a change to the spec can help
        async with self._in_order(record.key):
            await self._effects.apply(record, decision, now=self._clock())

    @contextlib.asynccontextmanager
    async def _in_order(self, key: Key) -> AsyncIterator[None]:
        """One credential's effects reach the API server in the order they were decided:
        an expiry reported while its refresh ran must not land after the new token's
        status (the Kubernetes client's thread pool does not keep order)."""
        lock, users = self._applying.get(key) or (asyncio.Lock(), [0])
        self._applying[key] = (lock, users)
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._applying[key]

    # -- the refresh endpoint ----------------------------------------------------------

    async def refresh_asked(
        self, namespace: str, name: str, proof: bytes | None
    ) -> possession.Reply:
        """A workload asked for a new token at the refresh endpoint, with the token id of its
        proof (None: malformed). At most one refresh per token version, no sooner than
        minInterval after the current token, within the credential's rate (decision 0043)."""
        record = self._tracker.get((namespace, name))
        known = None
        if record is not None and not record.deleting:
            known = possession.Known(
                current=record.token_id, previous=record.token_previous, asked=record.token_asked
            )
        answer = possession.judge(proof, known)
        if record is None or answer is possession.Answer.REFUSED:
            return possession.Reply(possession.Answer.REFUSED)
        if answer is not possession.Answer.STALE and not self._serves(record):
            # A valid proof, but another replica refreshes it (decision 0050).
            return possession.Reply(possession.Answer.ELSEWHERE, retry_after=1.0)
        now = self._clock()
        wait = self._asks.take(record.key, now=now.timestamp())
        if wait:
            return possession.Reply(possession.Answer.RATE_LIMITED, retry_after=wait)
        at = None
        if answer is possession.Answer.REQUESTED:
            record.token_asked = record.token_id
            at = possession.refresh_at(
                issued_at=record.state.issued_at, min_interval=self._min_interval(record), now=now
            )
            due = self._queue.due_at(record.key)
            if at <= now:
                self._queue.trigger(record.key)
            elif due is None or due > at.timestamp():
                self._queue.schedule(record.key, at=at.timestamp())
            logger.info(
                "%s/%s: a holder of the current token asked for a new one (refresh endpoint), "
                "fetched %s",
                namespace,
                name,
                "now" if at <= now else f"at {model.format_time(at)} (minInterval)",
            )
            event = progress.Event(
                "Normal",
                possession.EVENT_REASON,
                "a holder of the current token asked for a new one at the refresh endpoint; "
                + ("fetching now" if at <= now else f"fetching at {model.format_time(at)}"),
            )
            await self._effects.event(record, event, now=now)
        return possession.Reply(answer, summary=self._summary(record, at))

    @staticmethod
    def _min_interval(record: tracking.Record) -> datetime.timedelta:
        try:
            return parsing.parse_spec(record.spec, name=record.name).refresh.min_interval
        except model.SpecError:
            return model.DEFAULT_MIN_INTERVAL  # its attempt reports the spec; none is fetched

    @staticmethod
    def _summary(record: tracking.Record, at: datetime.datetime | None) -> dict[str, str]:
        """What a holder of a valid proof is told: nothing it could not read in status."""
        ready = status.ready_condition(record.state.conditions)
        summary = {"ready": str((ready and ready.status) or "Unknown")}
        if record.state.expires_at is not None:
            summary["expiresAt"] = model.format_time(record.state.expires_at)
        if at is not None:
            summary["refreshAt"] = model.format_time(at)
        return summary

    # -- expiry ------------------------------------------------------------------------

    async def watch_expiry(self) -> None:
        """Report each expiry at its time, whatever the refresh queue is doing."""
        await self._expiries.run(self._expire)

    def _arm(self, record: tracking.Record) -> None:
        at = outcome.expiry_alarm(record.state)
        if at is None:
            self._expiries.cancel(record.key)
        else:
            self._expiries.set(record.key, at=at.timestamp())

    async def _expire(self, key: Key) -> None:
        record = self._tracker.get(key)
        if record is None or not self._serves(record):
            return
        state = record.state
        message = "its refresh has not completed yet"
        if state.failure_reason:
            message = f"the last refresh failed ({state.failure_reason}); retrying"
        decision = outcome.expired(
            state,
            generation=state.handled_generation or record.generation,
            now=self._clock(),
            message=message,
        )
        if decision is not None:
            await self._apply(record, decision)


def _everything(shard: int) -> bool:
    return True
