"""Go-style durations in a spec (``90s``, ``5m``, ``1h30m``, ``250ms``) and their bounds.

Exact to the microsecond, and bounded per field (:data:`DURATION_BOUNDS`): the CRD's CEL
rules refuse the same at admission with the same messages, and
tests/unit/test_crd_matches_model.py compares them. Pure.
"""

from __future__ import annotations

import datetime
import fractions
import re
from collections.abc import Mapping

from tokensync import bounds, model

_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_MICROSECONDS = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
_ZERO = datetime.timedelta(0)

#: The bounds of every duration in a spec, inclusive: the CRD's CEL rules refuse the same at
#: admission, with the same message (tests/unit/test_crd_matches_model.py compares them).
#: Below minInterval's floor a refresh loop is bounded only by the host's pace, and below
#: defaultLifetime's a token without expiry would be renewed as fast as minInterval allows.
DURATION_BOUNDS: Mapping[str, tuple[datetime.timedelta, datetime.timedelta]] = {
    "spec.clientAssertion.lifetime": (model.MIN_ASSERTION_LIFETIME, model.MAX_ASSERTION_LIFETIME),
    "spec.refresh.renewBefore": (_ZERO, model.MAX_DURATION),
    "spec.refresh.minInterval": (datetime.timedelta(seconds=1), model.MAX_DURATION),
    "spec.refresh.defaultLifetime": (datetime.timedelta(seconds=10), model.MAX_DURATION),
    "spec.rolloutRestart.minInterval": (model.MIN_ROLLOUT_INTERVAL, model.MAX_DURATION),
}


def parse(value: object, *, field: str) -> datetime.timedelta:
    """Parse a Go-style duration (``90s``, ``5m``, ``1h30m``, ``250ms``); negative is an error.

    Exact to the microsecond (decimal fractions are summed as fractions, not floats), and
    within the field's :data:`DURATION_BOUNDS` (any other field: zero to
    :data:`model.MAX_DURATION`), compared before rounding, as the API server compares them.
    """
    limit = bounds.SIZE_BOUNDS.get(field)
    if isinstance(value, str) and limit is not None and len(value) > limit:
        raise model.SpecError(field, f"must be at most {limit} characters")
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise model.SpecError(
            field, f"invalid duration {value!r}: use units ms, s, m, h (e.g. 1h30m)"
        )
    micros = sum(
        fractions.Fraction(number) * _UNIT_MICROSECONDS[unit]
        for number, unit in _DURATION_PART.findall(value)
    )
    low, high = DURATION_BOUNDS.get(field, (_ZERO, model.MAX_DURATION))
    if not _microseconds(low) <= micros <= _microseconds(high):
        raise model.SpecError(field, bounds_message(low, high))
    return datetime.timedelta(microseconds=round(micros))


def bounds_message(low: datetime.timedelta, high: datetime.timedelta) -> str:
    """What parse and the CRD say of a duration out of bounds."""
    if low == _ZERO:
        return f"must be at most {format_duration(high)}"
    return f"must be between {format_duration(low)} and {format_duration(high)}"


def format_duration(span: datetime.timedelta) -> str:
    """A bound as the CRD writes it: ``10s``, ``1h``, ``87600h`` (largest whole unit)."""
    micros = _microseconds(span)
    for unit in ("h", "m", "s", "ms"):
        if micros % _UNIT_MICROSECONDS[unit] == 0:
            return f"{micros // _UNIT_MICROSECONDS[unit]}{unit}"
    raise ValueError(f"{span!r} is not a whole number of milliseconds")


def _microseconds(span: datetime.timedelta) -> int:
    return span // datetime.timedelta(microseconds=1)
