"""The golden table (support/outcome_table.py): through the whole reconcile path, and
through the pure outcome module alone.

The Kubernetes API is a recording fake (status patches, Events, target writes are what the
rows compare); the token endpoint is httpx's MockTransport answering the row's response.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import json
from typing import Any

import httpx
import pytest

from support.outcome_table import (
    DRAW,
    ISSUED_DUE,
    NAME,
    NAMESPACE,
    OLD_READY,
    ROWS,
    T0,
    TARGET,
    TOKEN_URL,
    UID,
    Expect,
    Row,
    at,
    handled,
    issued_patch,
    ready,
)
from tokensync import (
    failures,
    metrics,
    model,
    outcome,
    parsing,
    progress,
    provenance,
    reconcile,
    responses,
    scheduler,
    target,
    timing,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class RecordingKube:
    """The Kubernetes calls of one attempt, answered from memory and recorded."""

    def __init__(self, row: Row) -> None:
        self.secrets: dict[str, dict[str, Any]] = {
            "client": {
                "metadata": {
                    "name": "client",
                    "namespace": NAMESPACE,
                    "resourceVersion": "7",
                    "labels": {model.CLIENT_SECRET_LABEL: "true"},
                    "annotations": {model.ALLOWED_DESTINATIONS_ANNOTATION: TOKEN_URL},
                },
                "data": {"client_id": b64("payments"), "client_secret": b64("s3cret")},
            }
        }
        if row.target is not None:
            self.secrets[TARGET] = target_secret(row)
        self.accounts: dict[str, dict[str, Any]] = {}
        self.minted = 0
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.writes = 0

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert namespace == NAMESPACE
        found = self.secrets.get(name)
        return copy.deepcopy(found) if found else None

    async def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.accounts.get(name))

    async def create_token(self, namespace: str, name: str, **_: Any) -> str:
        self.minted += 1
        return "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzYSJ9.c2ln"

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        created = copy.deepcopy(body)
        created["metadata"]["uid"] = "uid-target"
        self.secrets[body["metadata"]["name"]] = created
        return created

    async def patch_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        return copy.deepcopy(body)

    async def patch_status(
        self, namespace: str, name: str, patch: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        assert (namespace, name) == (NAMESPACE, NAME)
        self.patches.append(copy.deepcopy(dict(patch)))
        return {"metadata": {"resourceVersion": str(len(self.patches))}}

    async def post_event(self, *, type_: str, reason: str, message: str, **_: Any) -> None:
        self.events.append((type_, reason, message))


class MockHttp:
    """Stands in for transport.HttpClients: one client answering the row's response."""

    def __init__(self, row: Row) -> None:
        self.requests = 0

        def answer(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            assert row.response is not None, "this row must send no token request"
            return httpx.Response(
                row.response.status, json=row.response.body, headers=row.response.headers
            )

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))

    def for_tls(self, **_: Any) -> httpx.AsyncClient:
        return self.client


def target_secret(row: Row) -> dict[str, Any]:
    """The row's target Secret: whole, as tokensync writes one (if owned), with the row's
    annotations."""
    assert row.target is not None
    owner = [{"uid": UID}] if row.target_owned else []
    labels = {model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE} if row.target_owned else {}
    expires = row.target.get(model.EXPIRES_AT_ANNOTATION, "")
    return {
        "metadata": {
            "name": TARGET,
            "namespace": NAMESPACE,
            "uid": "uid-target",
            "resourceVersion": "30",
            "labels": labels,
            "annotations": dict(row.target),
            "ownerReferences": owner,
        },
        "data": {
            "access_token": b64("adopted"),
            "token_type": b64("Bearer"),
            "expires_at": b64(expires),
            "authorization": b64("Bearer adopted"),
        },
    }


def body(row: Row) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NAMESPACE, "name": NAME, "uid": UID, "generation": 1},
        "spec": row.spec,
        "status": copy.deepcopy(row.status),
    }


async def refresh_once(
    row: Row, kube: RecordingKube, http: MockHttp, metrics_: metrics.Metrics
) -> scheduler.RefreshQueue[reconcile.Key]:
    """One attempt for the row's credential through the whole reconcile path, at T0."""
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=kube,  # type: ignore[arg-type]
        http=http,  # type: ignore[arg-type]
        metrics_=metrics_,
        queue=queue,
        pacer=scheduler.HostPacer(rate=1000, burst=1000),
        clock=lambda: T0,
        draw=lambda: DRAW,
    )
    rec.observe(body(row))
    await rec.refresh((NAMESPACE, NAME), T0.timestamp())
    await http.client.aclose()
    return queue


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_reconcile_path(row: Row) -> None:
    kube, http, metrics_ = RecordingKube(row), MockHttp(row), metrics.Metrics()
    queue = await refresh_once(row, kube, http, metrics_)

    expect = row.expect
    assert kube.patches == expect.patches
    assert kube.events == expect.events
    due = queue.due_at((NAMESPACE, NAME))
    assert due == (None if expect.due is None else T0.timestamp() + expect.due)
    labels = {"namespace": NAMESPACE, "name": NAME, "condition": expect.ready}
    assert metrics_.registry.get_sample_value("tokensync_credential_ready", labels) == 1.0
    assert http.requests == expect.requests
    assert kube.writes == expect.writes


def result_of(row: Row, state: progress.State) -> progress.Result:
    """What the attempt's steps produce for the row, without any I/O."""
    try:
        spec = parsing.parse_spec(row.spec, name=NAME)
    except model.SpecError as exc:
        return exc
    if row.target is not None:
        if not row.target_owned:
            return target.conflict(TARGET)
        found = target.whole_times(target_secret(row))
        adopted = provenance.adoptable(
            state, found, target=TARGET, now=T0, refresh_requested=False, policy=spec.refresh
        )
        if adopted is not None:
            return adopted
    assert row.response is not None
    try:
        token = responses.parse_token_response(
            status_code=row.response.status,
            headers=row.response.headers,
            body=json.dumps(row.response.body).encode(),
            sent_at=T0,
            default_lifetime=spec.refresh.default_lifetime,
        )
    except failures.TokenError as exc:
        return exc
    return progress.Issued(
        issued_at=token.issued_at,
        expires_at=token.expires_at,
        refresh_at=timing.refresh_at(
            issued_at=token.issued_at,
            expires_at=token.expires_at,
            policy=spec.refresh,
            jitter=DRAW,
        ),
        token_type=token.token_type,
        scope=token.scope,
        auth_method="client_secret_basic",
        target=TARGET,
        policy=spec.refresh,
        client_secret_key="client_secret",
    )


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_outcome_module(row: Row) -> None:
    state = progress.State.from_status(row.status)
    result = result_of(row, state)
    read = not isinstance(result, model.SpecError)  # the Secrets are read after parsing
    attempt = progress.Attempt(generation=1, request=None, source_version="7" if read else None)
    decision = outcome.decide(state, attempt, result, now=T0, draw=DRAW)

    expect = row.expect
    assert [decision.status] == expect.patches
    assert [(e.type, e.reason, e.message) for e in decision.events] == expect.events
    due = None if expect.due is None else T0 + datetime.timedelta(seconds=expect.due)
    assert decision.reschedule
    assert decision.due == due
    assert decision.ready == (expect.ready == "True")


async def test_a_left_over_service_account_ref_mints_nothing() -> None:
    """authMethod client_secret_basic with a serviceAccountRef left from an earlier edit:
    Ready with the client secret, and no ServiceAccount read or token minted (the fake has
    no such calls: reaching one would fail)."""
    spec = {
        **ROWS[0].spec,
        "authMethod": "client_secret_basic",
        "serviceAccountRef": {"name": "not-opted-in", "audience": "https://idp.example.com"},
    }
    row = dataclasses.replace(ROWS[0], spec=spec)
    kube, http, metrics_ = RecordingKube(row), MockHttp(row), metrics.Metrics()
    await refresh_once(row, kube, http, metrics_)
    assert kube.patches == row.expect.patches
    assert http.requests == 1


@pytest.mark.parametrize("listed", [None, "https://idp.example.com/oauth2/other", "evil.test"])
async def test_a_destination_the_secret_does_not_list_gets_nothing(listed: str | None) -> None:
    row = ROWS[0]
    kube, http, metrics_ = RecordingKube(row), MockHttp(row), metrics.Metrics()
    annotations = {} if listed is None else {model.ALLOWED_DESTINATIONS_ANNOTATION: listed}
    kube.secrets["client"]["metadata"]["annotations"] = annotations
    await refresh_once(row, kube, http, metrics_)
    (patch,) = kube.patches
    assert patch["lastFailureReason"] == "DestinationNotAllowed"
    assert patch["conditions"][0]["status"] == "False"
    assert http.requests == 0
    assert kube.writes == 0


@pytest.mark.parametrize(("listed", "minted"), [(None, 0), ("idp.example.com", 1)])
async def test_a_service_account_token_is_minted_only_for_a_listed_destination(
    listed: str | None, minted: int
) -> None:
    audience = "https://idp.example.com"
    spec = {
        "tokenURL": ROWS[0].spec["tokenURL"],
        "clientID": "payments",
        "authMethod": "workload_identity",
        "serviceAccountRef": {"name": "billing", "audience": audience},
    }
    row = dataclasses.replace(ROWS[0], spec=spec)
    kube, http, metrics_ = RecordingKube(row), MockHttp(row), metrics.Metrics()
    annotations = {model.TOKEN_AUDIENCES_ANNOTATION: audience}
    if listed is not None:
        annotations[model.ALLOWED_DESTINATIONS_ANNOTATION] = listed
    kube.accounts["billing"] = {"metadata": {"name": "billing", "annotations": annotations}}
    await refresh_once(row, kube, http, metrics_)
    (patch,) = kube.patches
    assert kube.minted == minted
    assert http.requests == minted
    expected = "DestinationNotAllowed" if listed is None else None
    assert patch["lastFailureReason"] == expected


# -- the target Secret checked against status (issue 14 section 6, decision 0035) ---------------

#: What status says of the current token: issued an hour before expiry, 60 s from now.
BEHIND = handled(
    lastRefreshAt=at(-3540),
    expiresAt=at(60),
    conditions=[OLD_READY],
    authMethod="client_secret_basic",
)
CURRENT = handled(
    lastRefreshAt=at(-60),
    expiresAt=at(3540),
    nextRefreshAt=at(2300),
    conditions=[OLD_READY],
    authMethod="client_secret_basic",
)


def annotations(issued: str, expires: str, refresh: str) -> dict[str, str]:
    return {
        "tokensync.dev/issued-at": issued,
        "tokensync.dev/expires-at": expires,
        "tokensync.dev/refresh-at": refresh,
    }


SECTION_6_ROWS = [
    Row(
        name="adoption refused: the Secret says it was issued in 2099, a new token is fetched",
        status=BEHIND,
        target=annotations("2099-01-01T00:00:00Z", "2099-01-01T01:00:00Z", "2099-01-01T00:40:00Z"),
        expect=Expect(patches=[issued_patch(since=-3000)], due=ISSUED_DUE),
    ),
    Row(
        name="adoption refused: an expiry ten times the lifetime status knows",
        status=BEHIND,
        target=annotations(at(-60), at(35940), at(23900)),
        expect=Expect(patches=[issued_patch(since=-3000)], due=ISSUED_DUE),
    ),
    Row(
        name="adoption refused: a refresh time the policy cannot give",
        status=BEHIND,
        target=annotations(at(-60), at(3540), at(3530)),
        expect=Expect(patches=[issued_patch(since=-3000)], due=ISSUED_DUE),
    ),
    Row(
        name="adoption refused: the Secret holds an older token than status describes",
        status=CURRENT,
        target=annotations(at(-3600), at(0), at(-1200)),
        expect=Expect(patches=[issued_patch(since=-3000)], due=ISSUED_DUE),
    ),
    Row(
        name="a re-check finds the token status describes: kept, nothing fetched",
        status=CURRENT,
        target=annotations(at(-60), at(3540), at(2300)),
        expect=Expect(
            patches=[
                {
                    "conditions": [
                        ready("True", "TokenIssued", f"token valid until {at(3540)}", -3000)
                    ],
                    "observedGeneration": 1,
                    "handledRefreshRequest": None,
                    "expiresAt": at(3540),
                    "lastRefreshAt": at(-60),
                    "nextRefreshAt": at(2300),
                    "failedAttempts": 0,
                    "lastFailureReason": None,
                    "target": TARGET,
                    "clientSecretVersion": "7",
                }
            ],
            due=2300,
            requests=0,
            writes=0,
        ),
    ),
    Row(
        name="a deleted target 5 s after its token: rewritten once minInterval (30 s) has passed",
        status=handled(
            lastRefreshAt=at(-5),
            expiresAt=at(3595),
            nextRefreshAt=at(2300),
            conditions=[OLD_READY],
            authMethod="client_secret_basic",
        ),
        expect=Expect(patches=[], due=25, ready="True", requests=0, writes=0),
    ),
]


@pytest.mark.parametrize("row", SECTION_6_ROWS, ids=[row.name for row in SECTION_6_ROWS])
async def test_the_target_is_checked_against_status(row: Row) -> None:
    """The first attempt after a start, or after the target watch saw the Secret change,
    reads the Secret: its times are believed only as tokensync could have written them."""
    kube, http, metrics_ = RecordingKube(row), MockHttp(row), metrics.Metrics()
    queue = await refresh_once(row, kube, http, metrics_)
    expect = row.expect
    assert kube.patches == expect.patches
    assert kube.events == expect.events
    assert queue.due_at((NAMESPACE, NAME)) == T0.timestamp() + (expect.due or 0)
    assert http.requests == expect.requests
    assert kube.writes == expect.writes
    # And through the outcome module alone (the deferred repair is the attempt's own call).
    if expect.requests or expect.patches:
        state = progress.State.from_status(row.status)
        attempt = progress.Attempt(generation=1, request=None, source_version="7")
        decision = outcome.decide(state, attempt, result_of(row, state), now=T0, draw=DRAW)
        assert [decision.status] == expect.patches
