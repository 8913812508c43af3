"""The outcome rules the golden table does not reach: adoption, expiry while waiting, and
retry bounds over many draws. Pure: no I/O, the clock and the draw are arguments."""

from __future__ import annotations

import datetime
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import failures, model, outcome, progress, provenance, timing

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
ATTEMPT = progress.Attempt(generation=3, request=None, source_version="9")


def times(issued: float, expires: float, refresh: float) -> tuple[datetime.datetime, ...]:
    return (T0 + issued * S, T0 + expires * S, T0 + refresh * S)


#: The default policy: renewed when a third of the lifetime is left, minus up to 10 %.
POLICY = model.RefreshPolicy()
#: A token of an hour issued a minute ago, due in 2300 s: what tokensync writes.
HOUR = times(-60, 3540, 2300)
Y2099 = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("status", "found", "requested", "adopted"),
    [
        ((None, None), HOUR, False, True),  # status knows no token: take it
        ((-3600, 60), HOUR, False, True),  # newer than status's (killed between the writes)
        ((None, 60), HOUR, False, True),  # a status without lastRefreshAt: by expiry
        ((None, 3540), HOUR, False, False),  # ... and not behind
        ((-60, 3540), HOUR, False, True),  # the very token status describes, not due
        ((-60, 3540, "ServerError"), HOUR, False, False),  # the same while failing: fetch
        ((-30, 3570), HOUR, False, False),  # older than status's: the Secret was rolled back
        ((-3600, 60), times(-3000, 600, -1), False, False),  # due
        ((-3600, 60), times(-3600, -1, -100), False, False),  # expired
        ((-3600, 60), HOUR, True, False),  # a new generation, request, or rotated Secret
        ((-3600, 60), None, False, False),  # annotations missing, or the Secret not whole
        # Times tokensync could not have written are not believed (decision 0035):
        ((-3600, 60), times(20, 3620, 2360), False, True),  # within the clock skew
        ((-3600, 60), times(40, 3640, 2400), False, False),  # issued in the future
        ((-3600, 60), (Y2099, Y2099 + 3600 * S, Y2099 + 2400 * S), False, False),
        ((None, None), (T0 - 60 * S, Y2099, Y2099), False, False),  # beyond MAX_DURATION
        ((-3600, 60), times(-60, 4 * 3600, 9000), False, False),  # 4x status's lifetime
        ((-3600, 60), times(-60, 3540, 3500), False, False),  # refresh-at past the policy's
        ((-3600, 60), times(-60, 3540, 100), False, False),  # refresh-at before it
    ],
)
def test_adoptable(
    status: tuple[float | None, ...] | tuple[float | None, float | None, str],
    found: tuple[datetime.datetime, datetime.datetime, datetime.datetime] | None,
    requested: bool,
    adopted: bool,
) -> None:
    issued, expires, *failing = status
    state = progress.State(
        issued_at=None if issued is None else T0 + issued * S,
        expires_at=None if expires is None else T0 + expires * S,
        failure_reason=failing[0] if failing else None,
    )
    result = provenance.adoptable(
        state, found, target="t", now=T0, refresh_requested=requested, policy=POLICY
    )
    assert (result is not None) == adopted


@pytest.mark.parametrize(
    ("found", "wins"),
    [
        (None, False),  # not whole: written over
        (times(-2, 3598, 2300), False),  # issued before the token just fetched
        (times(0.5, 3600.5, 2300), True),  # the same second: kept, never replaced
        (times(5, 3605, 2300), True),  # later
        (times(5, 3605 * 4, 2300), False),  # later, but four times the lifetime
        ((Y2099, Y2099 + 3600 * S, Y2099 + 2400 * S), False),  # "issued in 2099"
    ],
)
def test_a_token_in_the_secret_supersedes_the_one_fetched_only_if_as_new(
    found: tuple[datetime.datetime, datetime.datetime, datetime.datetime] | None, wins: bool
) -> None:
    fetched_at = T0 + 0.2 * S
    assert (
        provenance.supersedes(
            found,
            issued_at=fetched_at,
            expires_at=fetched_at + 3600 * S,
            policy=POLICY,
            now=fetched_at,
        )
        == wins
    )


@pytest.mark.parametrize(
    ("issued", "due", "requested", "until"),
    [
        (-5, 2300, False, 25),  # a re-check 5 s after the issue: minInterval (30 s) holds
        (-40, 2300, False, None),  # past minInterval: at once
        (-5, 2300, True, None),  # a new generation, a refresh request, a rotated Secret
        (-5, -1, False, None),  # due anyway
        (3600, 7200, False, None),  # status says issued in an hour: not believed
        (None, None, False, None),  # no token yet
    ],
)
def test_a_repair_fetches_no_sooner_than_min_interval(
    issued: float | None, due: float | None, requested: bool, until: float | None
) -> None:
    state = progress.State(
        issued_at=None if issued is None else T0 + issued * S,
        expires_at=None if issued is None else T0 + (issued + 3600) * S,
        next_refresh_at=None if due is None else T0 + due * S,
    )
    found = provenance.repair_not_before(state, policy=POLICY, now=T0, requested=requested)
    assert found == (None if until is None else T0 + until * S)


def test_a_deferred_repair_writes_no_status_and_comes_back_then() -> None:
    state = progress.State(issued_at=T0 - 5 * S, next_refresh_at=T0 + 2300 * S)
    deferred = progress.Deferred(until=T0 + 25 * S, target="t")
    decision = outcome.decide(state, ATTEMPT, deferred, now=T0, draw=0.5)
    assert decision.state == state
    assert decision.status == {}
    assert decision.due == T0 + 25 * S
    assert decision.events == ()
    assert decision.ready is None


def test_an_issued_token_is_remembered_with_its_issue_time() -> None:
    token = issued(3600, min_interval=30)
    decision = outcome.decide(progress.State(), ATTEMPT, token, now=T0, draw=0.5)
    assert decision.state.issued_at == T0
    assert progress.State.from_status(dict(decision.status)).issued_at == T0


def test_expired_is_reported_once() -> None:
    state = progress.State(expires_at=T0 - S, handled_generation=3)
    first = outcome.expired(state, generation=3, now=T0, message="refresh in progress")
    assert first is not None
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "Expired")]
    assert first.ready is False
    assert not first.reschedule
    assert first.status["conditions"][0]["message"] == (
        f"token expired at {model.format_time(T0 - S)}; refresh in progress"
    )
    assert first.log == (
        f"{progress.CREDENTIAL}: token expired at {model.format_time(T0 - S)}; refresh in progress"
    )
    assert first.log_level == logging.WARNING
    assert outcome.expired(first.state, generation=3, now=T0, message="again") is None


def test_expired_is_nothing_while_the_token_is_valid() -> None:
    state = progress.State(expires_at=T0 + S)
    assert outcome.expired(state, generation=1, now=T0, message="m") is None


def test_waiting_for_retry_after_keeps_the_floor() -> None:
    floor = T0 + 30 * S
    valid = progress.State(expires_at=T0 + 60 * S, not_before=floor)
    decision = outcome.waiting(valid, generation=1, now=T0)
    assert decision.due == floor
    assert decision.reschedule
    assert not decision.status
    assert not decision.events
    lapsed = progress.State(expires_at=T0 - S, not_before=floor)
    decision = outcome.waiting(lapsed, generation=1, now=T0)
    assert decision.due == floor
    assert decision.reschedule
    assert [e.reason for e in decision.events] == ["Expired"]


@pytest.mark.parametrize(
    ("kind", "due"),
    [
        (failures.Kind.SPEC, None),
        (failures.Kind.PERMANENT, T0 + timing.PERMANENT_RETRY),
    ],
)
def test_failures_that_do_not_back_off(kind: failures.Kind, due: datetime.datetime | None) -> None:
    failure = failures.Failure(failures.Reason.INVALID_CLIENT, "refused", kind=kind)
    decision = outcome.decide(progress.State(), ATTEMPT, failure, now=T0, draw=0.9)
    assert decision.due == due
    assert decision.state.not_before is None
    assert decision.ready is False
    assert decision.status["clientSecretVersion"] == "9"


@given(
    remaining=st.none() | st.floats(min_value=-3600, max_value=7200),
    attempts=st.integers(min_value=0, max_value=100),
    draw=st.floats(min_value=0, max_value=0.999),
    retry_after=st.none() | st.floats(min_value=0, max_value=86400),
)
def test_a_transient_retry_stays_within_its_bounds(
    remaining: float | None, attempts: int, draw: float, retry_after: float | None
) -> None:
    expires = None if remaining is None else T0 + remaining * S
    state = progress.State(expires_at=expires, failed_attempts=attempts)
    failure = failures.Failure(
        failures.Reason.SERVER_ERROR, "503", kind=failures.Kind.TRANSIENT, retry_after=retry_after
    )
    decision = outcome.decide(state, ATTEMPT, failure, now=T0, draw=draw)
    assert decision.due is not None
    assert decision.state.failed_attempts == attempts + 1
    left = datetime.timedelta(0) if expires is None else expires - T0
    if left > datetime.timedelta(0):
        # a valid token: one more try before it expires (the clamp is at least a second)
        assert decision.due <= T0 + max(left / 2, outcome.MIN_RETRY)
        assert decision.ready is True
    else:
        # no valid token: seconds, not minutes, however long the failures have lasted
        assert decision.due <= T0 + max(timing.NO_TOKEN_CAP, (retry_after or 0) * S)
        assert decision.due >= T0 + (retry_after or 0) * S  # and never before Retry-After
        assert decision.ready is False
    if retry_after is not None:
        assert decision.state.not_before == T0 + retry_after * S


# -- recovery pace once the token has expired (decision 0031) ----------------------------------

UNAVAILABLE = failures.Failure(failures.Reason.SERVER_ERROR, "503", kind=failures.Kind.TRANSIENT)


@pytest.mark.parametrize("attempts", [3, 4, 9, 20, 10**6])
@pytest.mark.parametrize("expires", [-1.0, None], ids=["expired", "no-token-yet"])
def test_without_a_valid_token_the_backoff_ceiling_is_seconds(
    attempts: int, expires: float | None
) -> None:
    """Tries made while the token was valid raised the exponent; after expiry that must not
    put the next try minutes away (a 50 s outage took 147-252 s to recover from)."""
    state = progress.State(
        expires_at=None if expires is None else T0 + expires * S, failed_attempts=attempts
    )
    for draw in (0.0, 0.5, 0.999):
        decision = outcome.decide(state, ATTEMPT, UNAVAILABLE, now=T0, draw=draw)
        ceiling = min(timing.NO_TOKEN_CAP, timing.TRANSIENT_BASE * 2 ** min(attempts, 40))
        assert decision.due == T0 + ceiling * draw


def test_while_the_token_is_valid_the_backoff_keeps_its_five_minute_ceiling() -> None:
    state = progress.State(expires_at=T0 + 7200 * S, failed_attempts=20)
    decision = outcome.decide(state, ATTEMPT, UNAVAILABLE, now=T0, draw=0.5)
    assert decision.due == T0 + timing.TRANSIENT_CAP / 2


def test_without_a_valid_token_retry_after_still_holds() -> None:
    state = progress.State(expires_at=T0 - S, failed_attempts=20)
    limited = failures.Failure(
        failures.Reason.RATE_LIMITED, "429", kind=failures.Kind.TRANSIENT, retry_after=120
    )
    decision = outcome.decide(state, ATTEMPT, limited, now=T0, draw=0.5)
    assert decision.due == T0 + 120 * S
    assert decision.state.not_before == T0 + 120 * S


# -- a token that lives less than minInterval (decision 0031) ----------------------------------


def issued(lifetime: float, *, min_interval: float) -> progress.Issued:
    policy = model.RefreshPolicy(min_interval=min_interval * S)
    expires = T0 + lifetime * S
    refresh = timing.refresh_at(issued_at=T0, expires_at=expires, policy=policy, jitter=0.5)
    return progress.Issued(
        issued_at=T0,
        expires_at=expires,
        refresh_at=refresh,
        token_type="Bearer",
        scope=None,
        auth_method="client_secret_basic",
        target="t",
        policy=policy,
    )


def test_a_token_shorter_than_min_interval_is_reported_once() -> None:
    token = issued(2, min_interval=5)
    first = outcome.decide(progress.State(), ATTEMPT, token, now=T0, draw=0.5)
    assert first.due == T0 + 5 * S  # minInterval holds, although the token expires at 2 s
    (condition,) = first.status["conditions"]
    assert condition["status"] == "True"
    warning = (
        "the token lifetime (2s) is shorter than spec.refresh.minInterval (5s): the next "
        f"token is fetched at {model.format_time(T0 + 5 * S)}, 3s after this one expires"
    )
    assert condition["message"] == f"token valid until {model.format_time(T0 + 2 * S)}; " + (
        f"warning: {warning}"
    )
    assert [(e.type, e.reason, e.message) for e in first.events] == [
        ("Normal", "Issued", condition["message"]),
        ("Warning", outcome.BELOW_MIN_INTERVAL, warning),
    ]
    # The next refresh carries the warning in Ready again, but posts no second Event.
    again = outcome.decide(first.state, ATTEMPT, token, now=T0 + 5 * S, draw=0.5)
    assert outcome.BELOW_MIN_INTERVAL_MARK in again.status["conditions"][0]["message"]
    assert again.events == ()


def test_the_min_interval_warning_is_new_again_after_a_failure() -> None:
    token = issued(2, min_interval=5)
    first = outcome.decide(progress.State(), ATTEMPT, token, now=T0, draw=0.5)
    failed = outcome.decide(first.state, ATTEMPT, UNAVAILABLE, now=T0 + 5 * S, draw=0.5)
    back = outcome.decide(failed.state, ATTEMPT, token, now=T0 + 6 * S, draw=0.5)
    assert [e.reason for e in back.events] == ["Recovered", outcome.BELOW_MIN_INTERVAL]


@pytest.mark.parametrize(
    ("lifetime", "min_interval", "warning"),
    [
        (3600, 30, None),
        (5, 5, outcome.SHORT_LIFETIME_WARNING),  # renewed at expiry: the kubelet warning
        (60, 1, outcome.SHORT_LIFETIME_WARNING),
        (4, 5, outcome.BELOW_MIN_INTERVAL_MARK),  # the minInterval warning, alone
    ],
)
def test_one_warning_at_most(lifetime: float, min_interval: float, warning: str | None) -> None:
    decision = outcome.decide(
        progress.State(), ATTEMPT, issued(lifetime, min_interval=min_interval), now=T0, draw=0.5
    )
    message = decision.status["conditions"][0]["message"]
    assert message.count("warning:") == (warning is not None)
    if warning is not None:
        assert warning in message
    below = [e for e in decision.events if e.reason == outcome.BELOW_MIN_INTERVAL]
    assert len(below) == (warning == outcome.BELOW_MIN_INTERVAL_MARK)
