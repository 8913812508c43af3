"""The golden table of outcomes: what one attempt leaves behind, row by row.

Each row is a credential's starting point (its spec and the status it had), what the world
answers (the token endpoint's response, a target Secret already in place) and what must
come out: the status patches, the Events, when the credential is due again, the Ready
gauge, how many token requests and target writes were made. The clock and the random draw
are fixed (:data:`T0`, :data:`DRAW`).

The rows were recorded from the Reconciler before its outcome rules moved into a module of
their own (issue 13), and they drive both: ``tests/unit/test_outcome_golden.py`` runs them
through the whole reconcile path with a recording fake of the Kubernetes API, and through
the pure outcome module alone. A row that changes changes behaviour.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from tokensync import model

T0 = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
DRAW = 0.5
NAMESPACE, NAME, UID = "team-a", "payments", "uid-payments"
TOKEN_URL = "https://idp.example.com/oauth2/token"
SPEC: dict[str, Any] = {"tokenURL": TOKEN_URL, "clientSecretRef": {"name": "client"}}
TARGET = "payments-token"
#: What a TargetConflict message offers (decision 0041: a Secret may also be handed over).
CONFLICT_HINT = (
    "delete it, choose another spec.target.name, or hand it over (annotation "
    "tokensync.dev/hand-over-to naming this ClientCredential, and spec.target.creationPolicy "
    "Adopt or Merge)"
)


def at(seconds: float) -> str:
    """T0 plus ``seconds``, as status and annotations write it."""
    return model.format_time(T0 + datetime.timedelta(seconds=seconds))


@dataclasses.dataclass(frozen=True)
class Response:
    """What the token endpoint answers."""

    status: int = 200
    body: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"access_token": "tok", "token_type": "Bearer", "expires_in": 3600}
    )
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Expect:
    patches: list[dict[str, Any]]
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    #: Seconds after T0 when the credential is due again; None: not scheduled.
    due: float | None = None
    ready: str = "True"
    requests: int = 1
    writes: int = 1


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    expect: Expect
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    spec: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(SPEC))
    response: Response | None = Response()
    #: Annotations of a target Secret already in place (owned by the credential unless
    #: ``target_owned`` is False); None: no target Secret.
    target: dict[str, str] | None = None
    target_owned: bool = True


def ready(status: str, reason: str, message: str, since: float = 0) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": at(since),
    }


def handled(**status: Any) -> dict[str, Any]:
    """A status the operator wrote before, for generation 1 with no pending request."""
    return {"observedGeneration": 1, "clientSecretVersion": "7", **status}


# A token issued at T0 with expires_in 3600 and the default policy: renewed when a third
# of the lifetime remains, moved earlier by DRAW * 10 % of it: T0 + 2400 s - 180 s.
ISSUED_DUE = 2220.0
ISSUED_MESSAGE = f"token valid until {at(3600)}"


def issued_patch(*, since: float = 0) -> dict[str, Any]:
    return {
        "conditions": [ready("True", "TokenIssued", ISSUED_MESSAGE, since)],
        "observedGeneration": 1,
        "handledRefreshRequest": None,
        "expiresAt": at(3600),
        "lastRefreshAt": at(0),
        "nextRefreshAt": at(ISSUED_DUE),
        "authMethod": "client_secret_basic",
        "clientSecretKey": "client_secret",
        "failedAttempts": 0,
        "lastFailureReason": None,
        "target": TARGET,
        "clientSecretVersion": "7",
        "tokenType": "Bearer",
        "scope": None,
    }


def failed_patch(
    *, condition: dict[str, Any], attempts: int, reason: str, due: float | None
) -> dict[str, Any]:
    return {
        "conditions": [condition],
        "observedGeneration": 1,
        "handledRefreshRequest": None,
        "failedAttempts": attempts,
        "lastFailureReason": reason,
        "clientSecretVersion": "7",
        "nextRefreshAt": None if due is None else at(due),
    }


UNAVAILABLE = Response(status=503, body={})
UNAVAILABLE_TEXT = "token request failed (HTTP 503; transient)"
PERMANENT_TEXT = "token request failed (HTTP 401 error=invalid_client; permanent)"
OLD_READY = ready("True", "TokenIssued", "token valid until earlier", since=-3000)

ROWS = [
    Row(
        name="first issue",
        expect=Expect(
            patches=[issued_patch()],
            events=[("Normal", "Issued", ISSUED_MESSAGE)],
            due=ISSUED_DUE,
        ),
    ),
    Row(
        name="routine refresh",
        status=handled(
            expiresAt=at(1200),
            nextRefreshAt=at(0),
            authMethod="client_secret_basic",
            conditions=[OLD_READY],
        ),
        expect=Expect(patches=[issued_patch(since=-3000)], due=ISSUED_DUE),
    ),
    Row(
        name="recovery",
        status=handled(
            expiresAt=at(100),
            failedAttempts=2,
            lastFailureReason="ServerError",
            conditions=[ready("True", "RefreshFailing", "failing", since=-3000)],
        ),
        expect=Expect(
            patches=[issued_patch(since=-3000)],
            events=[("Normal", "Recovered", f"refresh succeeded; {ISSUED_MESSAGE}")],
            due=ISSUED_DUE,
        ),
    ),
    Row(
        name="transient error, token still valid: retry clamped to half the remaining lifetime",
        status=handled(expiresAt=at(10), failedAttempts=8, conditions=[OLD_READY]),
        response=UNAVAILABLE,
        expect=Expect(
            patches=[
                failed_patch(
                    condition=ready(
                        "True",
                        "RefreshFailing",
                        f"current token valid until {at(10)}; refresh failed "
                        f"(ServerError: {UNAVAILABLE_TEXT}); next attempt at {at(5)}",
                        since=-3000,
                    ),
                    attempts=9,
                    reason="ServerError",
                    due=5,
                )
            ],
            events=[("Warning", "ServerError", f"refresh failed: {UNAVAILABLE_TEXT}")],
            due=5,
            writes=0,
        ),
    ),
    Row(
        name="transient error, token valid for one more second: retry after the 1 s floor",
        status=handled(expiresAt=at(1), failedAttempts=8, conditions=[OLD_READY]),
        response=UNAVAILABLE,
        expect=Expect(
            patches=[
                failed_patch(
                    condition=ready(
                        "True",
                        "RefreshFailing",
                        f"current token valid until {at(1)}; refresh failed "
                        f"(ServerError: {UNAVAILABLE_TEXT}); next attempt at {at(1)}",
                        since=-3000,
                    ),
                    attempts=9,
                    reason="ServerError",
                    due=1,
                )
            ],
            events=[("Warning", "ServerError", f"refresh failed: {UNAVAILABLE_TEXT}")],
            due=1,
            writes=0,
        ),
    ),
    Row(
        name="transient error after expiry: one Expired event",
        status=handled(expiresAt=at(-10), failedAttempts=3, conditions=[OLD_READY]),
        response=UNAVAILABLE,
        expect=Expect(
            patches=[
                failed_patch(
                    condition=ready(
                        "False",
                        "Expired",
                        f"token expired at {at(-10)}; refresh failed "
                        f"(ServerError: {UNAVAILABLE_TEXT}); next attempt at {at(4)}",
                    ),
                    attempts=4,
                    reason="ServerError",
                    due=4,
                )
            ],
            events=[
                ("Warning", "ServerError", f"refresh failed: {UNAVAILABLE_TEXT}"),
                (
                    "Warning",
                    "Expired",
                    f"token expired at {at(-10)}; refresh failed "
                    f"(ServerError: {UNAVAILABLE_TEXT}); next attempt at {at(4)}",
                ),
            ],
            due=4,
            ready="False",
            writes=0,
        ),
    ),
    Row(
        # Attempt 5: the backoff's ceiling would be 16 s, but without a valid token it is
        # timing.NO_TOKEN_CAP (10 s; decision 0031), so DRAW gives 5 s (it gave 8 s before).
        name="the same failure reason twice: no Event",
        status=handled(
            expiresAt=at(-10),
            failedAttempts=4,
            lastFailureReason="ServerError",
            conditions=[ready("False", "Expired", "expired", since=-5)],
        ),
        response=UNAVAILABLE,
        expect=Expect(
            patches=[
                failed_patch(
                    condition=ready(
                        "False",
                        "Expired",
                        f"token expired at {at(-10)}; refresh failed "
                        f"(ServerError: {UNAVAILABLE_TEXT}); next attempt at {at(5)}",
                        since=-5,
                    ),
                    attempts=5,
                    reason="ServerError",
                    due=5,
                )
            ],
            due=5,
            ready="False",
            writes=0,
        ),
    ),
    Row(
        name="Retry-After longer than the backoff",
        status=handled(expiresAt=at(3000), conditions=[OLD_READY]),
        response=Response(status=429, body={}, headers={"Retry-After": "120"}),
        expect=Expect(
            patches=[
                failed_patch(
                    condition=ready(
                        "True",
                        "RefreshFailing",
                        f"current token valid until {at(3000)}; refresh failed (RateLimited: "
                        f"token request failed (HTTP 429; transient)); next attempt at {at(120)}",
                        since=-3000,
                    ),
                    attempts=1,
                    reason="RateLimited",
                    due=120,
                )
            ],
            events=[
                (
                    "Warning",
                    "RateLimited",
                    "refresh failed: token request failed (HTTP 429; transient)",
                )
            ],
            due=120,
            writes=0,
        ),
    ),
    Row(
        name="permanent error",
        status=handled(expiresAt=at(3000), conditions=[OLD_READY]),
        response=Response(status=401, body={"error": "invalid_client"}),
        expect=Expect(
            patches=[
                failed_patch(
                    condition=ready(
                        "False",
                        "InvalidClient",
                        f"{PERMANENT_TEXT}; next attempt at {at(300)}",
                    ),
                    attempts=1,
                    reason="InvalidClient",
                    due=300,
                )
            ],
            events=[("Warning", "InvalidClient", f"refresh failed: {PERMANENT_TEXT}")],
            due=300,
            ready="False",
            requests=2,  # auto: client_secret_basic, then client_secret_post
            writes=0,
        ),
    ),
    Row(
        name="InvalidSpec: no retry until the spec changes",
        spec={"clientSecretRef": {"name": "client"}},
        response=None,
        expect=Expect(
            patches=[
                {
                    "conditions": [
                        ready(
                            "False",
                            "InvalidSpec",
                            "spec.tokenURL: set exactly one of tokenURL and issuerURL",
                        )
                    ],
                    "observedGeneration": 1,
                    "handledRefreshRequest": None,
                    "failedAttempts": 1,
                    "lastFailureReason": "InvalidSpec",
                    "clientSecretVersion": None,
                    "nextRefreshAt": None,
                }
            ],
            events=[
                (
                    "Warning",
                    "InvalidSpec",
                    "refresh failed: spec.tokenURL: set exactly one of tokenURL and issuerURL",
                )
            ],
            due=None,
            ready="False",
            requests=0,
            writes=0,
        ),
    ),
    Row(
        name="adoption taken: the Secret holds a newer token than status, not due",
        status=handled(expiresAt=at(60), conditions=[OLD_READY]),
        target={
            "tokensync.dev/issued-at": at(-60),
            "tokensync.dev/expires-at": at(3540),
            "tokensync.dev/refresh-at": at(2300),
        },
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
        name="adoption refused: the Secret's token is due, a new one is fetched",
        status=handled(expiresAt=at(60), conditions=[OLD_READY], authMethod="client_secret_basic"),
        target={
            "tokensync.dev/issued-at": at(-3000),
            "tokensync.dev/expires-at": at(600),
            "tokensync.dev/refresh-at": at(-1),
        },
        expect=Expect(patches=[issued_patch(since=-3000)], due=ISSUED_DUE),
    ),
    Row(
        name="a target Secret that is not ours: TargetConflict, nothing fetched",
        status=handled(expiresAt=at(3000), conditions=[OLD_READY]),
        target={},
        target_owned=False,
        expect=Expect(
            patches=[
                failed_patch(
                    condition=ready(
                        "False",
                        "TargetConflict",
                        f"Secret {TARGET!r} exists and is not managed by this ClientCredential; "
                        f"{CONFLICT_HINT}; next attempt at {at(300)}",
                    ),
                    attempts=1,
                    reason="TargetConflict",
                    due=300,
                )
            ],
            events=[
                (
                    "Warning",
                    "TargetConflict",
                    f"refresh failed: Secret {TARGET!r} exists and is not managed by this "
                    f"ClientCredential; {CONFLICT_HINT}",
                )
            ],
            due=300,
            ready="False",
            requests=0,
            writes=0,
        ),
    ),
]
