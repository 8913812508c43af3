"""Conditions move their transition time only on a real transition; timestamps round-trip."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import failures, model, status

T0 = datetime.datetime(2026, 11, 22, 22, 15, tzinfo=datetime.UTC)
MINUTE = datetime.timedelta(minutes=1)


def ready(
    conditions: list[dict[str, Any]], *, ok: bool, reason: str, at: datetime.datetime
) -> list[dict[str, Any]]:
    """Ready set on conditions as status has them, rendered as the status patch has them."""
    kept = status.set_condition(
        [model.Condition.from_status(c) for c in conditions],
        type_=status.READY,
        status=ok,
        reason=reason,
        message=f"{reason} at {at:%H:%M}",
        generation=3,
        now=at,
    )
    return status.rendered(kept)


def test_a_new_condition() -> None:
    assert ready([], ok=True, reason=failures.Reason.TOKEN_ISSUED, at=T0) == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "TokenIssued",
            "message": "TokenIssued at 22:15",
            "observedGeneration": 3,
            "lastTransitionTime": "2026-11-22T22:15:00Z",
        }
    ]


def test_the_transition_time_moves_only_when_the_status_changes() -> None:
    issued = ready([], ok=True, reason=failures.Reason.TOKEN_ISSUED, at=T0)
    # Still True, for another reason: the same transition, the details updated.
    failing = ready(issued, ok=True, reason=failures.Reason.REFRESH_FAILING, at=T0 + MINUTE)
    (condition,) = failing
    assert condition["lastTransitionTime"] == "2026-11-22T22:15:00Z"
    assert (condition["reason"], condition["message"]) == (
        "RefreshFailing",
        "RefreshFailing at 22:16",
    )
    # True -> False is a transition ...
    expired = ready(failing, ok=False, reason=failures.Reason.EXPIRED, at=T0 + 2 * MINUTE)
    assert expired[0]["lastTransitionTime"] == "2026-11-22T22:17:00Z"
    # ... False -> False is not ...
    still = ready(expired, ok=False, reason="invalid_client", at=T0 + 3 * MINUTE)
    assert still[0]["lastTransitionTime"] == "2026-11-22T22:17:00Z"
    assert still[0]["reason"] == "invalid_client"
    # ... and False -> True is again.
    recovered = ready(still, ok=True, reason=failures.Reason.TOKEN_ISSUED, at=T0 + 4 * MINUTE)
    assert recovered[0]["lastTransitionTime"] == "2026-11-22T22:19:00Z"


@pytest.mark.parametrize(
    "previous",
    [
        pytest.param(
            {"type": "Ready", "status": "Unknown", "lastTransitionTime": "x"}, id="unknown"
        ),
        pytest.param({"type": "Ready", "status": "True"}, id="no-transition-time"),
        pytest.param({"type": "Ready", "status": "True", "lastTransitionTime": None}, id="null"),
    ],
)
def test_the_transition_time_is_now_without_a_usable_previous_one(previous: dict[str, Any]) -> None:
    (condition,) = ready([previous], ok=True, reason=failures.Reason.TOKEN_ISSUED, at=T0)
    assert condition["lastTransitionTime"] == "2026-11-22T22:15:00Z"


def test_other_conditions_are_kept_and_the_input_is_not_changed() -> None:
    other = {"type": "Degraded", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    before = [dict(other), {"type": "Ready", "status": "True", "lastTransitionTime": "old"}]
    snapshot = [dict(c) for c in before]
    after = ready(before, ok=False, reason=failures.Reason.EXPIRED, at=T0)
    assert before == snapshot
    assert [c["type"] for c in after] == ["Degraded", "Ready"]
    assert after[0] == other
    kept = [model.Condition.from_status(c) for c in after]
    assert status.ready_condition(kept) == kept[1]
    assert status.ready_condition(kept[:1]) is None


@pytest.mark.parametrize(
    "condition",
    [
        {
            "type": "Ready",
            "status": "True",
            "reason": "TokenIssued",
            "message": "token valid until 2026-11-22T23:15:00Z",
            "observedGeneration": 3,
            "lastTransitionTime": "2026-11-22T22:15:00Z",
        },
        {"type": "Degraded", "status": "Unknown"},
        {"type": "Ready", "status": "False", "reason": "Expired", "observedGeneration": 0},
    ],
)
def test_a_condition_is_written_back_as_it_was_read(condition: dict[str, Any]) -> None:
    assert model.Condition.from_status(condition).as_status() == condition


def test_a_field_read_as_null_is_not_written_back() -> None:
    read = {"type": "Ready", "status": "True", "lastTransitionTime": None, "message": None}
    assert model.Condition.from_status(read).as_status() == {"type": "Ready", "status": "True"}


def test_the_transition_time_is_utc() -> None:
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    (condition,) = ready([], ok=True, reason="x", at=T0.astimezone(tokyo))
    assert condition["lastTransitionTime"] == "2026-11-22T22:15:00Z"


# -- parse_time and times -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T22:15:00Z", T0),
        ("2026-11-22T22:15:00+00:00", T0),
        ("2026-11-22T23:15:00+01:00", T0),
        ("2026-11-22T22:15:00.250Z", T0 + datetime.timedelta(milliseconds=250)),
        ("2026-11-22T22:15:00", T0),  # no offset: UTC, as the operator writes it
        (None, None),
        (1764800000, None),
        ("", None),
        ("soon", None),
        ("2026-13-01T00:00:00Z", None),
        ("2026-11-22T25:00:00Z", None),
    ],
)
def test_parse_time(value: object, expected: datetime.datetime | None) -> None:
    parsed = model.parse_time(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None  # comparable with the operator's aware clock


def test_times() -> None:
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    assert status.times(
        expiresAt=T0 + 60 * MINUTE,
        lastRefreshAt=T0.astimezone(tokyo),
        nextRefreshAt=None,  # kept: in a merge patch, null clears the field
    ) == {
        "expiresAt": "2026-11-22T23:15:00Z",
        "lastRefreshAt": "2026-11-22T22:15:00Z",
        "nextRefreshAt": None,
    }
    assert status.times() == {}


@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),
        max_value=datetime.datetime(9999, 12, 30),
        timezones=st.just(datetime.UTC),
    )
)
def test_times_round_trip_through_parse_time_to_the_second(moment: datetime.datetime) -> None:
    written = status.times(at=moment)["at"]
    assert model.parse_time(written) == moment.replace(microsecond=0)


def test_the_due_time_is_written_to_the_millisecond_and_the_others_to_the_second() -> None:
    moment = T0 + datetime.timedelta(microseconds=712_999)
    assert status.times(expiresAt=moment, lastRefreshAt=moment, nextRefreshAt=moment) == {
        "expiresAt": "2026-11-22T22:15:00Z",
        "lastRefreshAt": "2026-11-22T22:15:00Z",
        "nextRefreshAt": "2026-11-22T22:15:00.712Z",  # truncated: never later than the due time
    }


@pytest.mark.parametrize(
    ("micros", "expected"),
    [
        (0, "2026-11-22T22:15:00Z"),  # a whole second reads as format_time writes it
        (999, "2026-11-22T22:15:00Z"),
        (1_000, "2026-11-22T22:15:00.001Z"),
        (500_000, "2026-11-22T22:15:00.5Z"),  # trailing zeros left out, as Go's RFC3339Nano
        (120_000, "2026-11-22T22:15:00.12Z"),
        (999_999, "2026-11-22T22:15:00.999Z"),
    ],
)
def test_format_due(micros: int, expected: str) -> None:
    assert model.format_due(T0 + datetime.timedelta(microseconds=micros)) == expected


@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),
        max_value=datetime.datetime(9999, 12, 30),
        timezones=st.just(datetime.UTC),
    )
)
def test_due_times_round_trip_through_parse_time_to_the_millisecond(
    moment: datetime.datetime,
) -> None:
    written = model.format_due(moment)
    assert model.parse_time(written) == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000
    )
