"""Ready turns False (Expired) at expiry even while the refresh waits for a worker
(issue 14 section 2): the alarm does not need the refresh queue."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from typing import Any

import pytest

from tokensync import alarms, metrics, reconcile, scheduler, target

T0 = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)


class RecordingKube:
    def __init__(self) -> None:
        self.status: list[dict[str, Any]] = []
        self.events: list[str] = []

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status.append(status)

    async def post_event(self, **event: Any) -> None:
        self.events.append(event["reason"])


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alarms, "POLL_INTERVAL", 0.001)


def body(name: str, *, expires: datetime.datetime, message: str = "token valid") -> dict[str, Any]:
    stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"u-{name}", "generation": 1},
        "spec": {"tokenURL": "https://idp.example/token", "clientSecretRef": {"name": "c"}},
        "status": {
            "observedGeneration": 1,
            "expiresAt": stamp,
            "nextRefreshAt": (expires - 10 * S).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Issued", "message": message}
            ],
        },
    }


async def test_expiry_is_reported_while_no_worker_has_run_the_refresh() -> None:
    kube, clock = RecordingKube(), Clock()
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=kube,  # type: ignore[arg-type] -- only status and events are reached
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=queue,  # never run: every refresh waits for a worker forever
        pacer=scheduler.HostPacer(rate=1, burst=1),
        clock=clock,
    )
    rec.observe(body("waiting", expires=T0 + 30 * S))
    below = "the token lifetime (5s) is shorter than spec.refresh.minInterval (1m)"
    rec.observe(body("below-min-interval", expires=T0 + 5 * S, message=below))
    rec.observe(body("later", expires=T0 + 3600 * S))
    task = asyncio.create_task(rec.watch_expiry())
    try:
        await asyncio.sleep(0.02)
        assert kube.status == []
        clock.now = T0 + 31 * S
        for _ in range(100):
            await asyncio.sleep(0.01)
            if kube.status:
                break
        await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(kube.status) == 1  # "waiting" only: once, and not the others
    (ready,) = kube.status[0]["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "Expired")
    assert "its refresh has not completed yet" in ready["message"]
    assert kube.events == ["Expired"]


def test_a_resumed_credential_exports_its_gauges_before_its_next_refresh() -> None:
    """After a start the per-credential gauges come from status at once, not at the next
    refresh: TokensyncTokenExpiringSoon must be able to fire for a resumed token."""
    metrics_ = metrics.Metrics()
    rec = reconcile.Reconciler(
        kube_api=RecordingKube(),  # type: ignore[arg-type] -- nothing is applied
        http=None,  # type: ignore[arg-type]
        metrics_=metrics_,
        queue=scheduler.RefreshQueue(workers=1),
        pacer=scheduler.HostPacer(rate=1, burst=1),
        clock=Clock(),
    )
    rec.observe(body("resumed", expires=T0 + 600 * S))
    labels = {"namespace": "ns", "name": "resumed"}
    sample = metrics_.registry.get_sample_value
    assert (
        sample("tokensync_token_expiration_timestamp_seconds", labels) == (T0 + 600 * S).timestamp()
    )
    assert sample("tokensync_token_renewal_timestamp_seconds", labels) == (T0 + 590 * S).timestamp()
    assert sample("tokensync_credential_ready", {**labels, "condition": "True"}) == 1.0


class CredentialGone(RecordingKube):
    """The API server no longer has the credential (deleted while the watch was down)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read_credential(self, namespace: str, name: str) -> None:
        self.reads += 1


async def test_a_deleted_target_of_a_deleted_credential_is_not_written_again() -> None:
    """The garbage collector deletes the target of a credential deleted while the watch
    was down: the repair reads the credential first and forgets it, fetching nothing."""
    kube = CredentialGone()
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=kube,  # type: ignore[arg-type] -- only read_credential is reached
        http=None,  # type: ignore[arg-type] -- never reached: nothing is fetched
        metrics_=metrics.Metrics(),
        queue=queue,
        pacer=scheduler.HostPacer(rate=1, burst=1),
        clock=Clock(),
    )
    gone = body("gone", expires=T0 + 600 * S)
    gone["status"]["target"] = "gone-token"
    rec.observe(gone)
    rec.target_seen(
        target.Seen(
            namespace="ns",
            name="gone-token",
            uid="secret-uid",
            version="42",
            owner=("gone", "u-gone"),
            deleted=True,
            digest=b"",
            times=None,
        )
    )
    assert queue.due_at(("ns", "gone")) is not None  # the repair is due
    await rec.refresh(("ns", "gone"), T0.timestamp())
    assert kube.reads == 1
    assert len(rec) == 0
    assert not queue.is_known(("ns", "gone"))
