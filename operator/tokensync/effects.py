"""What a decision does outside the process: status, Events, metrics and the log.

Best effort by design: the token is safe in its Secret before any of this runs, a status
that could not be written is rewritten at the next attempt, and an Event beyond the budget
is counted instead of posted (decision 0027). A status patch is conditional on the
ClientCredential's resourceVersion, and never describes an older token than the status it
replaces: with two operator processes, status does not fall behind the Secret (0036).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from tokensync import (
    failures,
    kube,
    metrics,
    model,
    progress,
    provenance,
    scheduler,
    tracking,
)

logger = logging.getLogger("tokensync.reconcile")
#: Status patches refused for a newer resourceVersion, each followed by a read, before the
#: patch is left to the next attempt.
STATUS_CONFLICT_ATTEMPTS = 4


class Effects:
    def __init__(
        self, *, kube_api: kube.Kube, metrics_: metrics.Metrics, events: scheduler.Budget
    ) -> None:
        self._kube = kube_api
        self._metrics = metrics_
        self._events = events

    async def apply(
        self, record: tracking.Record, decision: progress.Decision, *, now: datetime.datetime
    ) -> None:
        ns, name = record.namespace, record.name
        if decision.status:
            await self._patch_status(
                record, decision.status, issued_at=decision.state.issued_at, now=now
            )
        if decision.times is not None:
            expires_at, refresh_at = decision.times
            self._metrics.expiration.labels(ns, name).set(expires_at.timestamp())
            self._metrics.renewal.labels(ns, name).set(refresh_at.timestamp())
        if decision.ready is not None:
            self._metrics.set_ready(ns, name, "True" if decision.ready else "False")
        if decision.log:
            # Not a format string: failure messages may hold "%" (a URL's %2F, say).
            line = decision.log.replace(progress.CREDENTIAL, f"{ns}/{name}", 1)
            logger.log(decision.log_level, "%s", line)
        for event in decision.events:
            await self.event(record, event, now=now)

    async def event(
        self, record: tracking.Record, event: progress.Event, *, now: datetime.datetime
    ) -> None:
        if not self._events.take():
            self._metrics.events_dropped.inc()
            return
        try:
            await self._kube.post_event(
                involved=record.involved,
                type_=event.type,
                reason=event.reason,
                message=event.message,
                now=now,
            )
        except failures.ApiError as exc:
            logger.warning("event for %s/%s not posted: %s", record.namespace, record.name, exc)

    async def _patch_status(
        self,
        record: tracking.Record,
        patch: Mapping[str, Any],
        *,
        issued_at: datetime.datetime | None,
        now: datetime.datetime,
    ) -> None:
        """Patch status if it describes no newer token than ``issued_at`` (the token this
        process knows): conditional on the resourceVersion last seen, and on a conflict
        read again and compared, so that the rule holds whoever writes in between. A time
        in status that no clock could have written yet (beyond ``provenance.CLOCK_SKEW``) is
        not a newer token: it is written over."""
        ns, name = record.namespace, record.name
        try:
            for _ in range(STATUS_CONFLICT_ATTEMPTS):
                try:
                    if record.resource_version is None:  # not from a watch: unconditional
                        patched = await self._kube.patch_status(ns, name, patch)
                    else:
                        patched = await self._kube.patch_status(
                            ns, name, patch, version=record.resource_version
                        )
                except failures.ApiError as exc:
                    if exc.status != 409:
                        raise
                else:
                    meta = (patched or {}).get("metadata") or {}
                    record.resource_version = meta.get("resourceVersion")
                    return
                current = await self._kube.read_credential(ns, name)
                if current is None or current["metadata"].get("uid") != record.uid:
                    return  # deleted meanwhile
                record.resource_version = current["metadata"].get("resourceVersion")
                theirs = model.parse_time((current.get("status") or {}).get("lastRefreshAt"))
                if (
                    theirs is not None
                    and theirs <= now + provenance.CLOCK_SKEW
                    and (issued_at is None or theirs > issued_at.replace(microsecond=0))
                ):
                    logger.info(
                        "status of %s/%s left as it is: it describes a newer token "
                        "(another operator process wrote it)",
                        ns,
                        name,
                    )
                    return
            logger.warning("status of %s/%s not updated: it changed at every attempt", ns, name)
        except failures.ApiError as exc:
            # The token is safe in its Secret; status is rewritten on the next cycle.
            logger.warning("status of %s/%s not updated: %s", ns, name, exc)
