"""The restarts of spec.rolloutRestart: workloads read and patched, Events and metrics.

``restarts`` decides (pure); this module does, off the token path: a new token only puts
its credential's workloads in a queue of their own (a ``scheduler.RefreshQueue`` keyed by
namespace, credential, kind and name), whose few workers take turns across namespaces
(decision 0034), so that one tenant's hundred workloads neither delay another tenant's
restarts nor any refresh, and the API server sees at most ``rollout_workers`` of these
requests at once. What a job acts on is read when it runs (the credential's current
token, the workload as it is now), so a job that waits, is deferred or is triggered twice
still makes at most one restart per token (decision 0042).

A failure never reaches the credential's Ready condition: the token is fine. It is a
Warning Event (RolloutRestartFailed) and a metric, and the workload is tried again at the
next new token (an API server in trouble: in a minute).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

from tokensync import (
    effects,
    failures,
    kube,
    metrics,
    model,
    parsing,
    progress,
    restarts,
    scheduler,
    tracking,
)

logger = logging.getLogger(__name__)
#: (namespace, credential, kind, workload name).
Job = tuple[str, str, str, str]
#: Patches refused for a newer resourceVersion, each followed by a read and a new decision.
CONFLICT_ATTEMPTS = 4
#: Seconds before a workload is tried again after an error of the API server itself.
RETRY_AFTER = 60.0


class Rollouts:
    def __init__(
        self,
        *,
        kube_api: kube.Kube,
        metrics_: metrics.Metrics,
        effects_: effects.Effects,
        lookup: Callable[[tracking.Key], tracking.Record | None],
        clock: Callable[[], datetime.datetime],
        workers: int,
    ) -> None:
        self._kube = kube_api
        self._metrics = metrics_
        self._effects = effects_
        self._lookup = lookup
        self._clock = clock
        self._queue = scheduler.RefreshQueue[Job](
            workers=workers, clock=lambda: clock().timestamp(), group=lambda job: job[0]
        )
        #: Per queued job: True while every request for it came from a resumed credential
        #: (``restarts.decide``'s ``resumed``); one new token makes it False.
        self._resumed: dict[Job, bool] = {}

    def __len__(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        await self._queue.run(self._restart)

    def token_changed(self, record: tracking.Record, *, resumed: bool) -> None:
        """The credential's token is new (``resumed`` False: fetched and written by this
        process) or was taken up from status or the Secret (True): check its workloads.
        No I/O; the work is queued."""
        if not record.spec.get("rolloutRestart"):
            return
        wanted = _rollout(record)
        for workload in wanted.targets if wanted else ():
            job = (record.namespace, record.name, workload.kind, workload.name)
            self._resumed[job] = self._resumed.get(job, True) and resumed
            self._queue.trigger(job)

    async def _restart(self, job: Job, due: float) -> None:
        namespace, credential, kind, name = job
        resumed = self._resumed.pop(job, True)
        record = self._lookup((namespace, credential))
        if record is None or record.state.issued_at is None:
            return
        wanted = _rollout(record)
        if wanted is None or model.RolloutTarget(kind=kind, name=name) not in wanted.targets:
            return  # no longer listed
        token = restarts.version(record.state.issued_at)
        try:
            for _ in range(CONFLICT_ATTEMPTS):
                body = await self._kube.read_workload(namespace, kind, name)
                if body is None:
                    await self._failed(record, kind, name, "NotFound", "not found")
                    return
                found = restarts.workload(body)
                now = self._clock()
                verdict = restarts.decide(
                    found,
                    credential=credential,
                    token=token,
                    now=now,
                    min_interval=wanted.min_interval,
                    resumed=resumed,
                )
                if isinstance(verdict, restarts.Nothing):
                    return
                if isinstance(verdict, restarts.Defer):
                    self._again(job, at=verdict.until.timestamp(), resumed=resumed)
                    logger.info(
                        "%s %s/%s restarted less than %s ago: its restart for %s waits until %s",
                        kind,
                        namespace,
                        name,
                        wanted.min_interval,
                        credential,
                        model.format_time(verdict.until),
                    )
                    return
                change = restarts.patch(found, verdict, credential=credential, token=token, now=now)
                try:
                    await self._kube.patch_workload(namespace, kind, name, change)
                except failures.ApiError as exc:
                    if exc.status == 409:
                        continue  # changed since it was read: read it and decide again
                    raise
                if isinstance(verdict, restarts.Restart):
                    await self._restarted(record, kind, name, token=token, now=now)
                return
            logger.warning(
                "%s %s/%s not restarted for %s: it changed at every attempt; tried again "
                "at the next token",
                kind,
                namespace,
                name,
                credential,
            )
        except failures.ApiError as exc:
            await self._api_error(job, record, exc, resumed=resumed)

    def _again(self, job: Job, *, at: float, resumed: bool) -> None:
        self._resumed[job] = self._resumed.get(job, True) and resumed
        self._queue.schedule(job, at=at)

    async def _restarted(
        self,
        record: tracking.Record,
        kind: str,
        name: str,
        *,
        token: datetime.datetime,
        now: datetime.datetime,
    ) -> None:
        self._metrics.rollout_restarts.labels(record.namespace, kind).inc()
        message = f"restarted {kind} {name} for the token issued at {model.format_time(token)}"
        logger.info("%s/%s: %s", record.namespace, record.name, message)
        await self._effects.event(
            record, progress.Event("Normal", restarts.RESTARTED, message), now=now
        )

    async def _api_error(
        self, job: Job, record: tracking.Record, exc: failures.ApiError, *, resumed: bool
    ) -> None:
        _, _, kind, name = job
        if exc.status == 404:  # deleted between the read and the patch
            await self._failed(record, kind, name, "NotFound", "not found")
        elif exc.status == 403:
            await self._failed(
                record,
                kind,
                name,
                "Forbidden",
                "the operator may not read or patch it: restarts are an opt-in grant; enable "
                "it with the Helm value rolloutRestart.enabled=true or the kustomize component "
                "deploy/components/rollout-restart",
            )
        elif exc.status in (0, 429) or exc.status >= 500:
            self._metrics.rollout_restart_failures.labels(
                record.namespace, kind, failures.Reason.KUBERNETES_API_ERROR.value
            ).inc()
            self._again(job, at=self._clock().timestamp() + RETRY_AFTER, resumed=resumed)
            logger.warning(
                "%s %s/%s not restarted for %s (%s): tried again in %g s",
                kind,
                record.namespace,
                name,
                record.name,
                exc,
                RETRY_AFTER,
            )
        else:
            await self._failed(
                record, kind, name, failures.Reason.KUBERNETES_API_ERROR.value, str(exc)
            )

    async def _failed(
        self, record: tracking.Record, kind: str, name: str, reason: str, why: str
    ) -> None:
        self._metrics.rollout_restart_failures.labels(record.namespace, kind, reason).inc()
        message = (
            f"{kind} {name} (spec.rolloutRestart) was not restarted: {why}; the token is "
            "not affected, and the restart is tried again at the next token"
        )
        logger.warning("%s/%s: %s", record.namespace, record.name, message)
        await self._effects.event(
            record, progress.Event("Warning", restarts.FAILED, message), now=self._clock()
        )


def _rollout(record: tracking.Record) -> model.RolloutRestart | None:
    """The credential's spec.rolloutRestart, if its spec parses (one that does not is
    reported by its attempt, as InvalidSpec)."""
    try:
        return parsing.parse_spec(record.spec, name=record.name).rollout_restart
    except model.SpecError:
        return None
