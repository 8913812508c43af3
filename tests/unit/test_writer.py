"""The target Secret's write: which refusals of the API server are permanent.

A 422 on the uid-conditional patch means the Secret was replaced (decision 0007) and the
writer starts over; a 422 from a create, or from a patch with the uid just read, means the
Secret itself is invalid (TargetInvalid, permanent), not a reason to fetch a new token at
every backoff (issue 14, section 5). The Kubernetes API is a scripted fake.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tokensync import failures, model, outcome, progress, tracking, writer

NAMESPACE, NAME, UID, TARGET = "team-a", "payments", "uid-payments", "payments-token"
BODY: dict[str, Any] = {
    "metadata": {"name": TARGET, "namespace": NAMESPACE, "annotations": {"a": "x" * 300_000}},
    "data": {"access_token": "dG9r"},
}
OWNED = {
    "metadata": {
        "name": TARGET,
        "uid": "uid-target",
        "labels": {model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE},
        "ownerReferences": [{"uid": UID}],
    }
}


class ScriptedKube:
    """Answers create and patch from a script of HTTP statuses (200: success)."""

    def __init__(self, *, creates: list[int], patches: list[int], existing: Any = None) -> None:
        self.creates, self.patches, self.existing = creates, patches, existing
        self.calls: list[str] = []

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        status = self.creates.pop(0)
        if status != 200:
            raise failures.ApiError(status, "Invalid" if status == 422 else "Refused")
        return {"metadata": {"uid": "uid-created"}}

    async def patch_secret(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append(f"patch {body['metadata']['uid']}")
        status = self.patches.pop(0)
        if status != 200:
            raise failures.ApiError(status, "Invalid" if status == 422 else "Refused")

    async def read_secret(self, namespace: str, name: str) -> Any:
        self.calls.append("read")
        return self.existing


def record(*, target_uid: str | None) -> tracking.Record:
    return tracking.Record(
        namespace=NAMESPACE,
        name=NAME,
        uid=UID,
        generation=1,
        spec={},
        refresh_request=None,
        target_name=TARGET if target_uid else None,
        target_uid=target_uid,
    )


async def write(kube: ScriptedKube, *, target_uid: str | None) -> failures.Failure | None:
    try:
        await writer.TargetWriter(kube_api=kube).write(record(target_uid=target_uid), BODY)  # type: ignore[arg-type]
    except failures.Failure as failure:
        return failure
    return None


@pytest.mark.parametrize(
    ("script", "target_uid", "calls"),
    [
        pytest.param({"creates": [422], "patches": []}, None, ["create"], id="create"),
        pytest.param(
            {"creates": [409], "patches": [422], "existing": OWNED},
            None,
            ["create", "read", "patch uid-target"],
            id="patch-with-the-uid-just-read",
        ),
        pytest.param(
            # The remembered uid's 422 could be a replaced Secret: start over; the create
            # says it is the Secret itself (the API server validates before it conflicts).
            {"creates": [422], "patches": [422]},
            "uid-target",
            ["patch uid-target", "create"],
            id="remembered-uid-then-create",
        ),
        pytest.param(
            {"creates": [409], "patches": [422, 422], "existing": OWNED},
            "uid-target",
            ["patch uid-target", "create", "read", "patch uid-target"],
            id="remembered-uid-then-read",
        ),
    ],
)
async def test_an_invalid_target_is_a_permanent_failure(
    script: dict[str, Any], target_uid: str | None, calls: list[str]
) -> None:
    kube = ScriptedKube(**script)
    failure = await write(kube, target_uid=target_uid)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_INVALID,
        failures.Kind.PERMANENT,
    )
    assert failure.message.startswith(f"the API server refused the target Secret {TARGET!r}")
    assert "422" in failure.message
    assert "xxx" not in failure.message
    assert kube.calls == calls


async def test_a_replaced_target_is_still_a_conflict() -> None:
    foreign = {"metadata": {"name": TARGET, "uid": "uid-other", "labels": {}}}
    kube = ScriptedKube(creates=[409], patches=[422], existing=foreign)
    failure = await write(kube, target_uid="uid-target")
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_CONFLICT


@pytest.mark.parametrize("status", [0, 403, 500, 503])
async def test_other_refusals_stay_transient(status: int) -> None:
    failure = await write(ScriptedKube(creates=[status], patches=[]), target_uid=None)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_WRITE_FAILED,
        failures.Kind.TRANSIENT,
    )


def test_an_invalid_target_is_retried_slowly_not_at_every_backoff() -> None:
    now = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
    invalid = failures.Failure(failures.Reason.TARGET_INVALID, "422", kind=failures.Kind.PERMANENT)
    state = progress.State(expires_at=now - datetime.timedelta(seconds=1), failed_attempts=3)
    attempt = progress.Attempt(generation=1, request=None)
    decision = outcome.decide(state, attempt, invalid, now=now, draw=0.5)
    assert decision.due == now + datetime.timedelta(minutes=5)
    assert decision.ready is False
    assert decision.status["conditions"][0]["reason"] == "TargetInvalid"
