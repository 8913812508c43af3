"""Kubernetes Events beyond the budget are skipped and counted (decision 0027)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tokensync import effects, metrics, progress, scheduler, tracking


class RecordingKube:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def post_event(self, **event: Any) -> None:
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_events_beyond_the_budget_are_counted_not_posted() -> None:
    kube, clock, metrics_ = RecordingKube(), Clock(), metrics.Metrics()
    rec = effects.Effects(
        kube_api=kube,  # type: ignore[arg-type] -- only post_event is reached
        metrics_=metrics_,
        events=scheduler.Budget(rate=1.0, burst=2, clock=clock),
    )
    cred = tracking.Record(
        namespace="ns", name="cc", uid="u1", generation=1, spec_json="{}", refresh_request=None
    )
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for _ in range(5):
        await rec.event(cred, progress.Event("Normal", "Issued", "token valid"), now=now)
    assert len(kube.events) == 2
    assert metrics_.registry.get_sample_value("tokensync_events_dropped_total") == 3.0
    clock.now = 1.0
    await rec.event(cred, progress.Event("Warning", "InvalidClient", "refused"), now=now)
    assert [e["reason"] for e in kube.events] == ["Issued", "Issued", "InvalidClient"]


async def test_a_percent_sign_in_a_failure_message_is_logged_as_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failure messages carry URLs ("%2F"): they are text, never a format string."""
    rec = effects.Effects(
        kube_api=RecordingKube(),  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        events=scheduler.Budget(rate=1.0, burst=2, clock=Clock()),
    )
    cred = tracking.Record(
        namespace="ns", name="cc", uid="u1", generation=1, spec_json="{}", refresh_request=None
    )
    decision = progress.Decision(
        state=progress.State(),
        status={},
        log=f"refresh of {progress.CREDENTIAL} failed: https://idp.example/t%2Fx 100%",
    )
    with caplog.at_level("INFO", logger="tokensync.reconcile"):
        await rec.apply(cred, decision, now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    assert caplog.messages == ["refresh of ns/cc failed: https://idp.example/t%2Fx 100%"]
