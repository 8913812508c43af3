"""What an attempt starts from and what it produces, and what ``outcome`` decides of it.

:class:`State` is what the operator remembers about a credential between attempts;
:class:`Attempt` is what one attempt acts on; :class:`Issued`, :class:`Adopted`,
:class:`Deferred` or a ``failures.Failure`` is what it produced. Plain frozen data, pure.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from tokensync import failures, model


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """What the operator remembers about a credential between attempts.

    Read back from ``status`` when the operator (re)starts (decision 0005), which is what
    lets a restarted operator fetch nothing that is still valid and not due.
    """

    handled_generation: int | None = None
    handled_request: str | None = None
    #: When the current token was issued (status.lastRefreshAt): the order of two tokens.
    issued_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    next_refresh_at: datetime.datetime | None = None
    #: The token endpoint's Retry-After: no attempt before this (kept in memory only).
    not_before: datetime.datetime | None = None
    #: resourceVersions of the client Secrets the last attempt read, joined by commas.
    source_version: str | None = None
    auth_method: str | None = None
    #: The client Secret's key whose secret worked last (status.clientSecretKey).
    client_secret_key: str | None = None
    failed_attempts: int = 0
    failure_reason: str | None = None
    conditions: tuple[model.Condition, ...] = ()

    @classmethod
    def from_status(cls, st: Mapping[str, Any]) -> State:
        return cls(
            handled_generation=st.get("observedGeneration"),
            handled_request=st.get("handledRefreshRequest"),
            issued_at=model.parse_time(st.get("lastRefreshAt")),
            expires_at=model.parse_time(st.get("expiresAt")),
            next_refresh_at=model.parse_time(st.get("nextRefreshAt")),
            source_version=st.get("clientSecretVersion"),
            auth_method=model.word(st.get("authMethod")),
            client_secret_key=st.get("clientSecretKey"),
            failed_attempts=int(st.get("failedAttempts") or 0),
            failure_reason=st.get("lastFailureReason"),
            conditions=tuple(model.Condition.from_status(c) for c in st.get("conditions") or []),
        )


@dataclasses.dataclass(slots=True)
class Attempt:
    """What one attempt acts on, captured at its start (the spec may change meanwhile)."""

    generation: int
    request: str | None
    #: Set once the client Secrets are read, kept even if a later step fails: only a newer
    #: version of a Secret triggers another attempt.
    source_version: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    """A new token, written to the target Secret."""

    issued_at: datetime.datetime
    expires_at: datetime.datetime
    refresh_at: datetime.datetime
    token_type: str
    scope: str | None
    auth_method: str
    target: str
    policy: model.RefreshPolicy
    #: The client Secret's key that worked (None: no client secret was sent), and those
    #: the server refused before it in this attempt (decision 0045).
    client_secret_key: str | None = None
    refused_keys: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Adopted:
    """The target Secret already holds a token as new as any this attempt could write:
    status was behind it (decision 0005), or another writer put it there (decision 0036).
    Nothing is written to the Secret; status follows it."""

    issued_at: datetime.datetime
    expires_at: datetime.datetime
    refresh_at: datetime.datetime
    target: str
    #: Why, for the log line.
    why: str = "status was behind the Secret"


@dataclasses.dataclass(frozen=True, slots=True)
class Deferred:
    """The target Secret needs a new token (deleted, or edited), but the current one was
    issued less than minInterval ago and nobody asked for one: not before ``until``
    (decision 0035). Nothing was fetched or written."""

    until: datetime.datetime
    target: str


Result = Issued | Adopted | Deferred | failures.Failure


#: Where a Decision's log line names the credential.
CREDENTIAL = "{credential}"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    type: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    state: State
    #: A merge patch of ``status``; empty: nothing to write.
    status: Mapping[str, Any]
    #: When the credential is due again; None: not until its spec changes.
    due: datetime.datetime | None = None
    #: False: leave the credential's due time as it is.
    reschedule: bool = True
    #: The Ready gauge; None leaves it.
    ready: bool | None = None
    #: (expires_at, refresh_at) for the per-credential gauges.
    times: tuple[datetime.datetime, datetime.datetime] | None = None
    events: tuple[Event, ...] = ()
    #: One log line; :data:`CREDENTIAL`, before any other text, stands for the credential's
    #: namespace/name.
    log: str = ""
    log_level: int = logging.INFO
