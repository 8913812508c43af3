"""Status patches with a second writer (issue 14 section 9, decision 0036): conditional on the
ClientCredential's resourceVersion, and never describing an older token than status has."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from tokensync import effects, failures, metrics, model, progress, scheduler, tracking

T0 = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
#: When the decisions are applied: after every token of these tests was issued.
NOW = T0 + 120 * S


class CredentialStore:
    """One ClientCredential with the API server's resourceVersion precondition."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.body: dict[str, Any] = {
            "metadata": {"namespace": "ns", "name": "cc", "uid": "u1", "resourceVersion": "1"},
            "status": status,
        }
        self.patches = 0
        self.reads = 0

    def _bump(self) -> None:
        meta = self.body["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], *, version: str | None = None
    ) -> dict[str, Any]:
        if version is not None and version != self.body["metadata"]["resourceVersion"]:
            raise failures.ApiError(409, "Conflict")
        self.patches += 1
        self.body["status"].update(status)
        self._bump()
        return copy.deepcopy(self.body)

    async def read_credential(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return copy.deepcopy(self.body)

    async def post_event(self, **_: Any) -> None:
        pass

    def edit_spec(self) -> None:
        """Someone changes the spec: a new resourceVersion, status as it was."""
        self._bump()


def process(store: CredentialStore) -> tuple[effects.Effects, tracking.Record]:
    rec = effects.Effects(
        kube_api=store,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        events=scheduler.Budget(rate=100, burst=100),
    )
    record = tracking.Record.from_body(store.body)
    return rec, record


def holding(issued: datetime.datetime) -> progress.Decision:
    """A decision for a token issued at ``issued``."""
    stamp = model.format_time
    return progress.Decision(
        state=progress.State(issued_at=issued, expires_at=issued + 3600 * S),
        status={"lastRefreshAt": stamp(issued), "expiresAt": stamp(issued + 3600 * S)},
    )


async def test_a_patch_carries_the_version_last_seen_and_keeps_the_new_one() -> None:
    store = CredentialStore({})
    fx, record = process(store)
    await fx.apply(record, holding(T0), now=NOW)
    assert store.patches == 1
    assert record.resource_version == "2"
    await fx.apply(record, holding(T0 + 60 * S), now=NOW)
    assert (store.patches, store.reads) == (2, 0)


async def test_a_conflict_for_an_unrelated_change_is_read_and_written() -> None:
    store = CredentialStore({"lastRefreshAt": model.format_time(T0)})
    fx, record = process(store)
    store.edit_spec()
    await fx.apply(record, holding(T0 + 60 * S), now=NOW)
    assert (store.patches, store.reads) == (1, 1)
    assert store.body["status"]["lastRefreshAt"] == model.format_time(T0 + 60 * S)


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        (60, 30, 60),  # the slower process knows an older token: its status is dropped
        (30, 60, 60),
        (30, 30.5, 30.5),  # the same second: written (status and Secret agree to the second)
    ],
)
async def test_status_never_describes_an_older_token_than_it_has(
    first: float, second: float, kept: float
) -> None:
    """Two processes saw the same version; each patches status for the token it knows."""
    store = CredentialStore({"lastRefreshAt": model.format_time(T0)})
    a, record_a = process(store)
    b, record_b = process(store)
    await a.apply(record_a, holding(T0 + first * S), now=NOW)
    await b.apply(record_b, holding(T0 + second * S), now=NOW)
    assert store.body["status"]["lastRefreshAt"] == model.format_time(T0 + kept * S)


async def test_a_failure_known_to_an_older_token_does_not_overwrite_a_newer_status() -> None:
    store = CredentialStore({"lastRefreshAt": model.format_time(T0)})
    a, record_a = process(store)
    b, record_b = process(store)
    await a.apply(record_a, holding(T0 + 60 * S), now=NOW)
    failing = progress.Decision(
        state=progress.State(issued_at=T0, failure_reason="ServerError"),
        status={"lastFailureReason": "ServerError", "failedAttempts": 1},
    )
    await b.apply(record_b, failing, now=NOW)
    assert "lastFailureReason" not in store.body["status"]


async def test_a_status_edited_to_a_future_time_is_written_over() -> None:
    """Whoever may patch status could otherwise stop every status write with 2099."""
    store = CredentialStore({"lastRefreshAt": "2099-01-01T00:00:00Z"})
    fx, record = process(store)
    store.edit_spec()
    await fx.apply(record, holding(T0), now=NOW)
    assert store.body["status"]["lastRefreshAt"] == model.format_time(T0)
