"""What an attempt means: Ready or not, why, when to come back, what to tell.

This is where to look for "why is my credential not Ready" and "why did it retry then".
Pure: :func:`decide` takes what the operator remembers about a credential
(``progress.State``), what the attempt produced (``progress.Issued``, ``progress.Adopted``
or a ``failures.Failure``), the time and a random draw, and returns a :class:`progress.Decision`:
the state to remember, the status patch, when the credential is due again, the Events,
the Ready gauge and the log line. The reconcile loop applies it; nothing here does I/O.

The rules:

- a token issued: Ready=True TokenIssued; an Event on the first token (Issued) and on the
  first success after failures (Recovered), none per routine refresh;
- a token that lives less than ``refresh.minInterval`` is still renewed no earlier than
  minInterval after its issue (``timing.refresh_at``): the Ready message says so, and a
  Warning Event (LifetimeBelowMinInterval) is posted when the warning is new, not at every
  refresh (decision 0031);
- a transient failure while the token is still valid: Ready stays True (RefreshFailing),
  the retry backs off with full jitter but never later than half the remaining lifetime
  (at least a second), so a provider that comes back in time is used in time;
- a transient failure after expiry: Ready=False Expired, with one Expired Event; while
  there is no valid token (expired, or none yet) the backoff's ceiling is
  ``timing.NO_TOKEN_CAP`` (seconds, not minutes), so the provider's return is used at once;
- a ``Retry-After`` longer than the backoff is honoured, and no attempt starts before it;
- a permanent failure: Ready=False with its reason, retried every five minutes (and at once
  on a change of the spec or of a client Secret); an invalid spec is not retried;
- a Warning Event only when the failure reason changes.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging

from tokensync import failures, model, progress, status, timing

Reason = failures.Reason
Kind = failures.Kind
#: The earliest retry while a token is still valid.
MIN_RETRY = datetime.timedelta(seconds=1)
SHORT_LIFETIME_WARNING = (
    "; warning: the token lifetime leaves pods less than the kubelet sync period "
    "(about a minute) to see a refreshed Secret"
)
#: The Event's reason, and the part of the Ready message that tells the warning is not new.
BELOW_MIN_INTERVAL = "LifetimeBelowMinInterval"
BELOW_MIN_INTERVAL_MARK = "is shorter than spec.refresh.minInterval"


def decide(
    state: progress.State,
    attempt: progress.Attempt,
    result: progress.Result,
    *,
    now: datetime.datetime,
    draw: float,
) -> progress.Decision:
    """The outcome of one attempt. ``now`` is when it ended; ``draw`` is in [0, 1)."""
    if isinstance(result, progress.Issued):
        return _issued(state, attempt, result, now=now)
    if isinstance(result, progress.Adopted):
        return _adopted(state, attempt, result, now=now)
    if isinstance(result, progress.Deferred):
        return _deferred(state, result)
    return _failed(state, attempt, result, now=now, draw=draw)


def waiting(state: progress.State, *, generation: int, now: datetime.datetime) -> progress.Decision:
    """Woken before the token endpoint's Retry-After: report expiry if it came, then wait."""
    assert state.not_before is not None
    message = "the token endpoint asked to wait before retrying"
    found = expired(state, generation=generation, now=now, message=message)
    if found is None:
        return progress.Decision(state=state, status={}, due=state.not_before)
    return dataclasses.replace(found, due=state.not_before, reschedule=True)


def expiry_alarm(state: progress.State) -> datetime.datetime | None:
    """When Ready must turn False (Expired) unless a new token arrives first, or None.

    The token's expiry, whether its refresh is running, waiting for a worker or parked
    behind a slow host. None when there is no token, when the expiry has been reported,
    and when minInterval holds the next refresh past the expiry: such a token stays Ready
    until that refresh (decision 0031).
    """
    previous = status.ready_condition(state.conditions)
    if state.expires_at is None or (previous is not None and previous.reason == Reason.EXPIRED):
        return None
    if (
        previous is not None
        and previous.status == "True"
        and BELOW_MIN_INTERVAL_MARK in (previous.message or "")
    ):
        return None
    return state.expires_at


def expired(
    state: progress.State, *, generation: int, now: datetime.datetime, message: str
) -> progress.Decision | None:
    """Ready=False Expired (once) when the token has expired; None when nothing changes."""
    if state.expires_at is None or state.expires_at > now:
        return None
    previous = status.ready_condition(state.conditions)
    if previous is not None and previous.reason == Reason.EXPIRED:
        return None
    text = f"token expired at {model.format_time(state.expires_at)}; {message}"
    conditions = _ready(
        state, ready=False, reason=Reason.EXPIRED, message=text, generation=generation, now=now
    )
    return progress.Decision(
        state=dataclasses.replace(state, conditions=conditions),
        status={"conditions": status.rendered(conditions)},
        reschedule=False,
        ready=False,
        events=(progress.Event("Warning", Reason.EXPIRED, text),),
        # Logged too: Events are dropped beyond their rate, and a burst of expiries (a
        # backlog that outlasts tokens) is when they are.
        log=f"{progress.CREDENTIAL}: {text}",
        log_level=logging.WARNING,
    )


def _ready(
    state: progress.State,
    *,
    ready: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> tuple[model.Condition, ...]:
    return status.set_condition(
        state.conditions,
        type_=status.READY,
        status=ready,
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )


def _issued(
    state: progress.State,
    attempt: progress.Attempt,
    token: progress.Issued,
    *,
    now: datetime.datetime,
) -> progress.Decision:
    valid = f"token valid until {model.format_time(token.expires_at)}"
    message = valid
    lifetime = token.expires_at - token.issued_at
    below = _below_min_interval(token, lifetime=lifetime)
    if below:
        message += f"; warning: {below}"
    elif timing.short_lifetime_warning(lifetime=lifetime, policy=token.policy):
        message += SHORT_LIFETIME_WARNING
    previous = status.ready_condition(state.conditions)
    events: tuple[progress.Event, ...] = ()
    if state.expires_at is None:
        events = (progress.Event("Normal", "Issued", message),)
    elif state.failure_reason is not None:
        events = (progress.Event("Normal", "Recovered", f"refresh succeeded; {message}"),)
    if below and BELOW_MIN_INTERVAL_MARK not in ((previous and previous.message) or ""):
        events += (progress.Event("Warning", BELOW_MIN_INTERVAL, below),)  # new, not per refresh
    events += secret_key_events(state.client_secret_key, token)
    held = _holding(
        state,
        attempt,
        issued_at=token.issued_at,
        expires_at=token.expires_at,
        refresh_at=token.refresh_at,
        target=token.target,
        auth_method=token.auth_method,
        client_secret_key=token.client_secret_key,
        message=message,
        now=now,
    )
    return dataclasses.replace(
        held,
        status={
            **held.status,
            "authMethod": token.auth_method,
            "clientSecretKey": token.client_secret_key,
            "tokenType": token.token_type,
            "scope": token.scope,
        },
        events=events,
        log=f"issued a token for {progress.CREDENTIAL}, {valid}, "
        f"next refresh at {model.format_time(token.refresh_at)}",
    )


#: Event reasons of client secret rollover (decision 0045).
SECRET_FALLBACK = "ClientSecretFallback"
SECRET_KEY_CHANGED = "ClientSecretKeyChanged"


def secret_key_events(previous: str | None, token: progress.Issued) -> tuple[progress.Event, ...]:
    """An Event when the client secret key that works changes, none per refresh: a Warning
    when a fallback key had to be used (the new secret is refused, the old one still
    works), a Normal one when the first key works again (the old secret can go). Keys are
    named, never their values."""
    key = token.client_secret_key
    if key is None or key == previous:
        return ()
    if token.refused_keys:
        refused = ", ".join(repr(k) for k in token.refused_keys)
        return (
            progress.Event(
                "Warning",
                SECRET_FALLBACK,
                f"the token endpoint refused the client secret in key {refused} "
                f"(invalid_client); the one in fallback key {key!r} still works: keep it "
                "until the new secret is accepted",
            ),
        )
    if previous is None:
        return ()
    return (
        progress.Event(
            "Normal",
            SECRET_KEY_CHANGED,
            f"the client secret in key {key!r} is accepted; the one in {previous!r} is no "
            "longer used and can be removed",
        ),
    )


def _below_min_interval(token: progress.Issued, *, lifetime: datetime.timedelta) -> str:
    """The warning when minInterval holds the next refresh past this token's expiry, or ""."""
    min_interval = token.policy.min_interval
    if lifetime >= min_interval:
        return ""
    gap = token.refresh_at - token.expires_at
    return (
        f"the token lifetime ({_seconds(lifetime)}) {BELOW_MIN_INTERVAL_MARK} "
        f"({_seconds(min_interval)}): the next token is fetched at "
        f"{model.format_time(token.refresh_at)}, {_seconds(gap)} after this one expires"
    )


def _seconds(span: datetime.timedelta) -> str:
    return f"{round(span.total_seconds(), 1):g}s"


def _adopted(
    state: progress.State,
    attempt: progress.Attempt,
    found: progress.Adopted,
    *,
    now: datetime.datetime,
) -> progress.Decision:
    held = _holding(
        state,
        attempt,
        issued_at=found.issued_at,
        expires_at=found.expires_at,
        refresh_at=found.refresh_at,
        target=found.target,
        auth_method=state.auth_method,
        client_secret_key=state.client_secret_key,
        message=f"token valid until {model.format_time(found.expires_at)}",
        now=now,
    )
    log = (
        f"adopted the token of {progress.CREDENTIAL} from its Secret {found.target} "
        f"({found.why}), next refresh at {model.format_time(found.refresh_at)}"
    )
    if _describes(state, attempt, found):
        # Status says all of this already (the previous holder of a shard wrote it, or a
        # re-check found the Secret as status describes it): a patch would change nothing.
        kept = dataclasses.replace(held.state, conditions=state.conditions)
        return dataclasses.replace(
            held, state=kept, status={}, log=f"{log}; status describes it already"
        )
    return dataclasses.replace(held, log=log)


def _describes(state: progress.State, attempt: progress.Attempt, found: progress.Adopted) -> bool:
    """Does status (as ``state`` holds it) describe the adopted token already: its three
    times to the second, Ready=True TokenIssued for this generation with a message that
    names this token's expiry, the same refresh request and client Secret version, and no
    failure?"""
    ready = status.ready_condition(state.conditions)
    issued, expires, refresh = state.issued_at, state.expires_at, state.next_refresh_at
    if issued is None or expires is None or refresh is None or ready is None:
        return False
    stamp = model.format_time  # status's times are whole seconds
    return (
        stamp(issued) == stamp(found.issued_at)
        and stamp(expires) == stamp(found.expires_at)
        and stamp(refresh) == stamp(found.refresh_at)
        and state.handled_generation == attempt.generation
        and state.handled_request == attempt.request
        and (state.source_version or None) == (attempt.source_version or None)
        and state.failed_attempts == 0
        and state.failure_reason is None
        and ready.status == "True"
        and ready.reason == Reason.TOKEN_ISSUED
        and ready.observed_generation == attempt.generation
        and (ready.message or "").startswith(f"token valid until {stamp(found.expires_at)}")
    )


def _deferred(state: progress.State, found: progress.Deferred) -> progress.Decision:
    return progress.Decision(
        state=state,
        status={},
        due=found.until,
        log=f"the target Secret {found.target} of {progress.CREDENTIAL} needs a new token: "
        f"fetched at {model.format_time(found.until)}, minInterval after the current one",
    )


def _holding(
    state: progress.State,
    attempt: progress.Attempt,
    *,
    issued_at: datetime.datetime,
    expires_at: datetime.datetime,
    refresh_at: datetime.datetime,
    target: str,
    auth_method: str | None,
    client_secret_key: str | None,
    message: str,
    now: datetime.datetime,
) -> progress.Decision:
    """Ready with a token in the target Secret, issued now or adopted from it."""
    conditions = _ready(
        state,
        ready=True,
        reason=Reason.TOKEN_ISSUED,
        message=message,
        generation=attempt.generation,
        now=now,
    )
    return progress.Decision(
        state=progress.State(
            handled_generation=attempt.generation,
            handled_request=attempt.request,
            issued_at=issued_at,
            expires_at=expires_at,
            next_refresh_at=refresh_at,
            source_version=attempt.source_version,
            auth_method=auth_method,
            client_secret_key=client_secret_key,
            conditions=conditions,
        ),
        status={
            "conditions": status.rendered(conditions),
            "observedGeneration": attempt.generation,
            "handledRefreshRequest": attempt.request,
            **status.times(expiresAt=expires_at, lastRefreshAt=issued_at, nextRefreshAt=refresh_at),
            "failedAttempts": 0,
            "lastFailureReason": None,
            "target": target,
            "clientSecretVersion": attempt.source_version,
        },
        due=refresh_at,
        ready=True,
        times=(expires_at, refresh_at),
    )


def _retry(
    state: progress.State, failure: failures.Failure, *, now: datetime.datetime, draw: float
) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    """(when to retry, the earliest an attempt may start) for a failure."""
    if failure.kind is Kind.SPEC:
        return None, None  # only a change of the spec can help
    if failure.kind is Kind.PERMANENT:
        return now + timing.PERMANENT_RETRY, None
    left = datetime.timedelta(0) if state.expires_at is None else state.expires_at - now
    valid = left > datetime.timedelta(0)
    # The exponent keeps counting the tries made while the token was valid, but without a
    # token the ceiling is seconds: recovery must not wait longest when it matters most.
    delay = timing.backoff_delay(
        attempt=state.failed_attempts + 1,
        base=timing.TRANSIENT_BASE,
        cap=timing.TRANSIENT_CAP if valid else timing.NO_TOKEN_CAP,
        draw=draw,
    )
    not_before = None
    if failure.retry_after is not None:
        # Counted from when the response arrived, never from the attempt's start.
        not_before = now + datetime.timedelta(seconds=failure.retry_after)
        delay = max(delay, datetime.timedelta(seconds=failure.retry_after))
    retry_at = now + delay
    if valid:
        # Backoff grows past what a valid token can wait for: keep at least one more try
        # before expiry, so a provider that comes back in time is used in time.
        retry_at = min(retry_at, now + max(left / 2, MIN_RETRY))
    return retry_at, not_before


def _failed(
    state: progress.State,
    attempt: progress.Attempt,
    failure: failures.Failure,
    *,
    now: datetime.datetime,
    draw: float,
) -> progress.Decision:
    """A failed attempt. The target Secret is never touched for one."""
    reason, message = failure.reason, failure.message
    retry_at, not_before = _retry(state, failure, now=now, draw=draw)
    transient = failure.kind is Kind.TRANSIENT
    if transient and state.expires_at is not None and state.expires_at > now:
        ready, ready_reason = True, Reason.REFRESH_FAILING
        ready_message = (
            f"current token valid until {model.format_time(state.expires_at)}; "
            f"refresh failed ({reason}: {message})"
        )
    elif transient and state.expires_at is not None:
        ready, ready_reason = False, Reason.EXPIRED
        ready_message = (
            f"token expired at {model.format_time(state.expires_at)}; "
            f"refresh failed ({reason}: {message})"
        )
    else:
        ready, ready_reason, ready_message = False, reason, message
    if retry_at is not None:
        ready_message += f"; next attempt at {model.format_time(retry_at)}"
    previous = status.ready_condition(state.conditions)
    conditions = _ready(
        state,
        ready=ready,
        reason=ready_reason,
        message=ready_message,
        generation=attempt.generation,
        now=now,
    )
    events = []
    if state.failure_reason != reason:
        events.append(progress.Event("Warning", reason, f"refresh failed: {message}"))
    if ready_reason is Reason.EXPIRED and (previous is None or previous.reason != Reason.EXPIRED):
        events.append(progress.Event("Warning", Reason.EXPIRED, ready_message))
    source_version = state.source_version
    if attempt.source_version is not None:
        source_version = attempt.source_version
    new = dataclasses.replace(
        state,
        handled_generation=attempt.generation,
        handled_request=attempt.request,
        next_refresh_at=retry_at,
        not_before=not_before,
        source_version=source_version,
        failed_attempts=state.failed_attempts + 1,
        failure_reason=reason,
        conditions=conditions,
    )
    return progress.Decision(
        state=new,
        status={
            "conditions": status.rendered(conditions),
            "observedGeneration": attempt.generation,
            "handledRefreshRequest": attempt.request,
            "failedAttempts": new.failed_attempts,
            "lastFailureReason": reason,
            "clientSecretVersion": source_version,
            **status.times(nextRefreshAt=retry_at),
        },
        due=retry_at,
        ready=ready,
        events=tuple(events),
        log=f"refresh of {progress.CREDENTIAL} failed ({reason}): {message}",
        log_level=logging.WARNING,
    )
