"""When to refresh a token and how long to wait after a failure.

These decisions are the heart of the operator's behaviour contract (renew ahead of expiry,
spread credentials created together, never hammer a token endpoint) and they are easy to get
subtly wrong. Keeping them as pure functions, with the clock and every random draw passed in,
lets tests pin them down exactly, table by table and property by property, without sleeping
or patching time.
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime, timedelta

from tokensync import model

#: Retry delay after a permanent error (bad credentials, bad scope): slow, because only a
#: change of the spec or of the client Secret can fix it, and those trigger a retry anyway.
PERMANENT_RETRY = timedelta(minutes=5)
#: First step and ceiling of the exponential backoff after a transient error.
TRANSIENT_BASE = timedelta(seconds=1)
TRANSIENT_CAP = timedelta(minutes=5)
#: Ceiling of that backoff while there is no valid token (expired, or none yet): pods are
#: without a token, so the provider's return is used within seconds (decision 0031). The
#: per-host pacer and Retry-After still hold the provider's load down.
NO_TOKEN_CAP = timedelta(seconds=10)
#: How long a kubelet may take to project an updated Secret into a pod (sync period plus
#: cache TTL); a token refreshed with less than this left may expire inside pods first.
KUBELET_SYNC_MARGIN = timedelta(seconds=90)
#: By default a token is renewed when this fraction of its lifetime remains.
DEFAULT_RENEW_FRACTION = 1 / 3
#: Jitter moves a refresh earlier by at most this fraction of the lifetime.
JITTER_FRACTION = 0.10
#: A hostile or broken server must not be able to park a credential for years.
MAX_RETRY_AFTER = timedelta(days=1)

# RFC 9110 delay-seconds is 1*DIGIT; a sign and a fraction are tolerated because servers send
# them and the intent is unambiguous.
_DELAY_SECONDS = re.compile(r"[+-]?\d+(?:\.\d+)?")


def refresh_at(
    *,
    issued_at: datetime,
    expires_at: datetime,
    policy: model.RefreshPolicy,
    jitter: float,
) -> datetime:
    """Return when a token issued at ``issued_at`` and expiring at ``expires_at`` is renewed.

    The renewal point is ``renew_before`` before expiry, or ``renew_before_percentage`` of the
    lifetime before expiry, or by default when a third of the lifetime remains. ``jitter`` is
    a caller-supplied draw in ``[0, 1)`` that moves the point earlier by up to 10 % of the
    lifetime. The result is never earlier than ``issued_at + min_interval``, whatever the
    lifetime (decision 0031): a token that lives less than ``min_interval`` (or is expired at
    issue) is renewed at ``issued_at + min_interval``, after it expired, so that no answer of
    a token endpoint can make the operator ask more often than the spec allows.
    """
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    lifetime = expires_at - issued_at
    earliest = issued_at + policy.min_interval
    if earliest >= expires_at:
        return earliest

    if policy.renew_before is not None:
        due = expires_at - policy.renew_before
    elif policy.renew_before_percentage is not None:
        due = expires_at - lifetime * (policy.renew_before_percentage / 100)
    else:
        due = expires_at - lifetime * DEFAULT_RENEW_FRACTION
    due -= lifetime * (JITTER_FRACTION * jitter)
    # The clamp also covers renew_before >= lifetime: renew as soon as the guard allows.
    return min(max(due, earliest), expires_at)


def backoff_delay(*, attempt: int, base: timedelta, cap: timedelta, draw: float) -> timedelta:
    """Delay before retry number ``attempt`` (1 for the first retry): exponential, full jitter.

    Full jitter (a uniform draw between zero and the exponential ceiling) spreads retries of
    many credentials failing together far better than a fixed or "equal" jitter does.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt!r}")
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {draw!r}")
    if base < timedelta(0) or cap < timedelta(0):
        raise ValueError("base and cap must not be negative")
    # Compare in integer microseconds with a bounded shift: 2**(attempt-1) for a long outage
    # would overflow a float or a timedelta, and anything past 64 doublings is the cap anyway.
    base_us = base // timedelta(microseconds=1)
    cap_us = cap // timedelta(microseconds=1)
    shift = attempt - 1
    ceiling_us = cap_us if shift >= 64 else min(cap_us, base_us << shift)
    return timedelta(microseconds=ceiling_us) * draw


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """Parse an HTTP ``Retry-After`` value (delay-seconds or HTTP-date) into seconds from now.

    Past dates and negative delays mean "retry now" (0). Values beyond a day are clamped to a
    day. Anything unparseable returns ``None`` so that the caller falls back to its backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        # HTTP-dates are always GMT; a naive result ("-0000") or a naive clock means UTC.
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        reference = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        seconds = (when - reference).total_seconds()
    # A 400-digit delay parses to inf, which the clamp turns into the maximum.
    return min(max(seconds, 0.0), MAX_RETRY_AFTER.total_seconds())


def short_lifetime_warning(
    *,
    lifetime: timedelta,
    policy: model.RefreshPolicy,
    kubelet_sync: timedelta = KUBELET_SYNC_MARGIN,
) -> bool:
    """True when a token of ``lifetime`` is renewed with less than ``kubelet_sync`` left.

    Pods read the token from a projected Secret, which the kubelet updates only after its sync
    period; if the old token has less time left than that when the new one is written, pods
    can be left holding an expired token. The check uses no jitter, i.e. the latest renewal
    the policy allows, which leaves the least margin.
    """
    # Only the lifetime matters, not the wall clock: any fixed origin gives the same margin.
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    due = refresh_at(issued_at=origin, expires_at=origin + lifetime, policy=policy, jitter=0.0)
    return origin + lifetime - due < kubelet_sync
