"""What a decision does outside the process: status, Events, metrics and the log.

Best effort by design: the token is safe in its Secret before any of this runs, a status
that could not be written is rewritten at the next attempt, and an Event beyond the budget
is counted instead of posted (decision 0027).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from tokensync import failures, kube, metrics, progress, scheduler, tracking

logger = logging.getLogger("tokensync.reconcile")


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
            await self._patch_status(record, decision.status)
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

    async def _patch_status(self, record: tracking.Record, patch: Mapping[str, Any]) -> None:
        try:
            await self._kube.patch_status(record.namespace, record.name, patch)
        except failures.ApiError as exc:
            # The token is safe in its Secret; status is rewritten on the next cycle.
            logger.warning("status of %s/%s not updated: %s", record.namespace, record.name, exc)
