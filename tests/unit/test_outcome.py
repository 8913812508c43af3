"""The outcome rules the golden table does not reach: adoption, expiry while waiting, and
retry bounds over many draws. Pure: no I/O, the clock and the draw are arguments."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import failures, model, outcome, progress, timing

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
ATTEMPT = progress.Attempt(generation=3, request=None, source_version="9")


def times(issued: float, expires: float, refresh: float) -> tuple[datetime.datetime, ...]:
    return (T0 + issued * S, T0 + expires * S, T0 + refresh * S)


@pytest.mark.parametrize(
    ("status_expires", "found", "requested", "adopted"),
    [
        (None, times(-60, 3540, 2300), False, True),  # status knows no token: take it
        (60, times(-60, 3540, 2300), False, True),  # the Secret's token is newer
        (3540, times(-60, 3540, 2300), False, False),  # status is not behind
        (60, times(-3000, 600, -1), False, False),  # due
        (60, times(-3600, -1, -100), False, False),  # expired
        (60, times(-60, 3540, 2300), True, False),  # a new generation or refresh request
        (60, None, False, False),  # annotations missing
    ],
)
def test_adoptable(
    status_expires: float | None,
    found: tuple[datetime.datetime, datetime.datetime, datetime.datetime] | None,
    requested: bool,
    adopted: bool,
) -> None:
    expires = None if status_expires is None else T0 + status_expires * S
    state = progress.State(expires_at=expires)
    result = outcome.adoptable(state, found, target="t", now=T0, refresh_requested=requested)
    assert (result is not None) == adopted


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
    remaining=st.floats(min_value=-3600, max_value=7200),
    attempts=st.integers(min_value=0, max_value=100),
    draw=st.floats(min_value=0, max_value=0.999),
    retry_after=st.none() | st.floats(min_value=0, max_value=86400),
)
def test_a_transient_retry_stays_within_its_bounds(
    remaining: float, attempts: int, draw: float, retry_after: float | None
) -> None:
    state = progress.State(expires_at=T0 + remaining * S, failed_attempts=attempts)
    failure = failures.Failure(
        failures.Reason.SERVER_ERROR, "503", kind=failures.Kind.TRANSIENT, retry_after=retry_after
    )
    decision = outcome.decide(state, ATTEMPT, failure, now=T0, draw=draw)
    assert decision.due is not None
    assert decision.state.failed_attempts == attempts + 1
    left = state.expires_at - T0  # type: ignore[operator] -- set above
    if left > datetime.timedelta(0):
        # a valid token: one more try before it expires (the clamp is at least a second)
        assert decision.due <= T0 + max(left / 2, outcome.MIN_RETRY)
        assert decision.ready is True
    else:
        assert decision.due <= T0 + max(timing.TRANSIENT_CAP, (retry_after or 0) * S)
        assert decision.ready is False
    if retry_after is not None:
        assert decision.state.not_before == T0 + retry_after * S
