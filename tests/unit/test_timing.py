"""Refresh timing and backoff: the tables pin the contract, the properties guard the edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import model, timing

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
S = timedelta(seconds=1)
DEFAULT = model.RefreshPolicy()


@pytest.mark.parametrize(
    ("lifetime", "policy", "jitter", "expected"),
    [
        pytest.param(H, DEFAULT, 0.0, 40 * 60 * S, id="default-two-thirds"),
        pytest.param(H, DEFAULT, 0.5, 37 * 60 * S, id="jitter-half-moves-3-of-6-minutes"),
        pytest.param(H, DEFAULT, 0.25, 38.5 * 60 * S, id="jitter-quarter"),
        pytest.param(
            H, model.RefreshPolicy(renew_before=5 * 60 * S), 0.0, 55 * 60 * S, id="renew-before"
        ),
        pytest.param(
            H,
            model.RefreshPolicy(renew_before_percentage=25.0),
            0.0,
            45 * 60 * S,
            id="percentage",
        ),
        pytest.param(H, model.RefreshPolicy(renew_before=2 * H), 0.0, 30 * S, id="rb>lifetime"),
        pytest.param(H, model.RefreshPolicy(renew_before=H), 0.0, 30 * S, id="rb==lifetime"),
        pytest.param(
            60 * S,
            model.RefreshPolicy(renew_before_percentage=90.0),
            0.9,
            30 * S,
            id="clamped-to-min-interval",
        ),
        # minInterval holds whatever the lifetime, even past expiry (decision 0031).
        pytest.param(20 * S, DEFAULT, 0.0, 30 * S, id="lifetime<min-interval-waits"),
        pytest.param(30 * S, DEFAULT, 0.5, 30 * S, id="lifetime==min-interval-at-expiry"),
        pytest.param(
            2 * S, model.RefreshPolicy(min_interval=5 * S), 0.9, 5 * S, id="2s-token-5s-guard"
        ),
        pytest.param(
            2 * S, model.RefreshPolicy(min_interval=timedelta(0)), 0.0, 4 / 3 * S, id="no-guard"
        ),
        pytest.param(
            H, model.RefreshPolicy(renew_before=timedelta(0)), 0.0, H, id="renew-at-expiry"
        ),
        pytest.param(timedelta(0), DEFAULT, 0.0, 30 * S, id="expired-at-issue"),
        pytest.param(-H, DEFAULT, 0.0, 30 * S, id="expires-before-issue"),
        pytest.param(
            -H, model.RefreshPolicy(min_interval=timedelta(0)), 0.0, timedelta(0), id="no-guard<0"
        ),
    ],
)
def test_refresh_at_table(
    lifetime: timedelta, policy: model.RefreshPolicy, jitter: float, expected: timedelta
) -> None:
    got = timing.refresh_at(issued_at=T0, expires_at=T0 + lifetime, policy=policy, jitter=jitter)
    assert got - T0 == expected


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 2.0, float("nan")])
def test_refresh_at_rejects_bad_jitter(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        timing.refresh_at(issued_at=T0, expires_at=T0 + H, policy=DEFAULT, jitter=jitter)


policies = st.builds(
    model.RefreshPolicy,
    renew_before=st.none() | st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
    min_interval=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2)),
) | st.builds(
    model.RefreshPolicy,
    renew_before_percentage=st.floats(min_value=0.001, max_value=99.999),
    min_interval=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2)),
)
lifetimes = st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3650))
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(lifetime=lifetimes, policy=policies, jitter=jitters)
def test_refresh_at_honours_the_guard_whatever_the_lifetime(
    lifetime: timedelta, policy: model.RefreshPolicy, jitter: float
) -> None:
    got = timing.refresh_at(issued_at=T0, expires_at=T0 + lifetime, policy=policy, jitter=jitter)
    assert got >= T0 + policy.min_interval  # no token endpoint's answer breaks the guard
    if policy.min_interval < lifetime:
        assert got <= T0 + lifetime  # renewed while valid whenever the guard allows it
    else:
        assert got == T0 + policy.min_interval  # not a moment later than the guard


@given(lifetime=lifetimes, policy=policies, a=jitters, b=jitters)
def test_more_jitter_never_refreshes_later(
    lifetime: timedelta, policy: model.RefreshPolicy, a: float, b: float
) -> None:
    low, high = sorted((a, b))

    def at(jitter: float) -> datetime:
        return timing.refresh_at(
            issued_at=T0, expires_at=T0 + lifetime, policy=policy, jitter=jitter
        )

    assert at(high) <= at(low)
    # Jitter moves the refresh by at most 10 % of the lifetime (plus rounding).
    assert at(low) - at(high) <= lifetime * 0.1 + timedelta(microseconds=2)


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"),
    [
        (1, 0.5, 0.5 * S),
        (2, 0.5, 1 * S),
        (3, 0.999, 3.996 * S),
        (9, 0.5, 128 * S),
        (10, 0.5, 150 * S),  # 256 s ceiling capped at 300 s
        (10, 0.0, timedelta(0)),
        (10**9, 0.5, 150 * S),  # no overflow after a very long outage
    ],
)
def test_backoff_table(attempt: int, draw: float, expected: timedelta) -> None:
    got = timing.backoff_delay(
        attempt=attempt, base=timing.TRANSIENT_BASE, cap=timing.TRANSIENT_CAP, draw=draw
    )
    assert got == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": 0, "draw": 0.5},
        {"attempt": 1, "draw": 1.0},
        {"attempt": 1, "draw": -0.1},
        {"attempt": 1, "draw": 0.5, "base": -S},
    ],
)
def test_backoff_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"base": S, "cap": 10 * S, **kwargs}
    with pytest.raises(ValueError, match="must"):
        timing.backoff_delay(**args)  # type: ignore[arg-type]


@given(
    attempt=st.integers(min_value=1, max_value=10**6),
    base=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=1)),
    cap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=1)),
    draw=jitters,
)
def test_backoff_is_within_zero_and_the_ceiling(
    attempt: int, base: timedelta, cap: timedelta, draw: float
) -> None:
    got = timing.backoff_delay(attempt=attempt, base=base, cap=cap, draw=draw)
    assert timedelta(0) <= got <= cap
    if attempt < 40:
        # In integer microseconds: base * 2**n as a timedelta can overflow its range.
        assert got // timedelta(microseconds=1) <= (base // timedelta(microseconds=1)) * 2 ** (
            attempt - 1
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("1.5", 1.5),
        ("Thu, 01 Jan 2026 00:01:40 GMT", 100.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
        ("Thu, 01 Jan 2026 00:01:40 -0000", 100.0),
        ("99999999999", timing.MAX_RETRY_AFTER.total_seconds()),
        ("9" * 400, timing.MAX_RETRY_AFTER.total_seconds()),
        (None, None),
        ("", None),
        ("soon", None),
        ("12 s", None),
        ("Thu, 99 Jan 2026 00:00:00 GMT", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_table(value: str | None, expected: float | None) -> None:
    assert timing.retry_after_seconds(value, now=T0) == expected


@given(st.text())
def test_retry_after_never_raises(value: str) -> None:
    got = timing.retry_after_seconds(value, now=T0)
    assert got is None or 0.0 <= got <= timing.MAX_RETRY_AFTER.total_seconds()


@pytest.mark.parametrize(
    ("lifetime", "policy", "warn"),
    [
        (H, DEFAULT, False),
        (5 * 60 * S, DEFAULT, False),  # 100 s left at refresh
        (4 * 60 * S, DEFAULT, True),  # 80 s left at refresh
        (H, model.RefreshPolicy(renew_before=60 * S), True),
        (H, model.RefreshPolicy(renew_before=90 * S), False),
        (20 * S, DEFAULT, True),
    ],
)
def test_short_lifetime_warning(
    lifetime: timedelta, policy: model.RefreshPolicy, *, warn: bool
) -> None:
    assert timing.short_lifetime_warning(lifetime=lifetime, policy=policy) is warn
