"""Could tokensync have written these token times? Checked before they are believed.

Anyone who may edit a target Secret may edit its timing annotations, and a second operator
process writes the same Secret (issue 14 sections 6 and 9). Times read back from a Secret
are believed only when tokensync could have written them for this credential's refresh
policy (decision 0035), and a Secret's token wins over a token just fetched only when it
is at least as new (decision 0036). The same rules say when the Secret's token is adopted
instead of fetching one, and how soon a changed or deleted target may cost a new token.
Pure: the clock is passed in.
"""

from __future__ import annotations

import datetime

from tokensync import model, progress, timing

Times = tuple[datetime.datetime, datetime.datetime, datetime.datetime]  # issued, expires, refresh

#: How far another writer's clock (an operator on another node) may run ahead of ours.
CLOCK_SKEW = datetime.timedelta(seconds=30)
#: How much longer than the token status knows a token found in the Secret may live; a
#: provider that lengthens its tokens costs one token request more, once.
LIFETIME_SLACK = 0.1
#: The issue and expiry annotations are whole seconds, and the refresh time was too before
#: decision 0064: a refresh time read back may be off by this.
_ROUNDING = datetime.timedelta(seconds=2)
_LAST_DRAW = 0.999999


def trusted(
    times: Times,
    *,
    policy: model.RefreshPolicy,
    now: datetime.datetime,
    lifetime: datetime.timedelta | None,
) -> bool:
    """Could tokensync have written these (issued, expires, refresh) times? (decision 0035)

    Not issued in the future (beyond :data:`CLOCK_SKEW`); an expiry after the issue, no
    longer than ``lifetime`` (the last token's, when known) allows, and never beyond
    ``model.MAX_DURATION``; a refresh time that ``timing.refresh_at`` gives for ``policy``
    with some draw. Anyone who may edit the Secret may edit its annotations: times that
    fail this are never adopted, and the Secret is rewritten with a new token.
    """
    issued_at, expires_at, refresh_at = times
    if issued_at > now + CLOCK_SKEW or expires_at <= issued_at:
        return False
    span = expires_at - issued_at
    if span > model.MAX_DURATION:
        return False
    if (
        lifetime is not None
        and lifetime > datetime.timedelta(0)
        and span > lifetime + max(lifetime * LIFETIME_SLACK, CLOCK_SKEW)
    ):
        return False
    earliest = timing.refresh_at(
        issued_at=issued_at, expires_at=expires_at, policy=policy, jitter=_LAST_DRAW
    )
    latest = timing.refresh_at(issued_at=issued_at, expires_at=expires_at, policy=policy, jitter=0)
    return earliest - _ROUNDING <= refresh_at <= latest + _ROUNDING


def second(moment: datetime.datetime) -> datetime.datetime:
    """Status and the annotations hold issue and expiry times in whole seconds: two tokens
    compare at that precision."""
    return moment.replace(microsecond=0)


def supersedes(
    times: Times | None,
    *,
    issued_at: datetime.datetime,
    expires_at: datetime.datetime,
    policy: model.RefreshPolicy,
    now: datetime.datetime,
) -> bool:
    """Does a Secret holding a token with ``times`` (None: not whole) win over the token
    just fetched (``issued_at``, ``expires_at``)? It does if it was issued in the same
    second or later and tokensync could have written it: a write never moves the Secret's
    issue time back, and two writers never replace each other's token of the same second
    (decision 0036)."""
    if times is None:
        return False
    lifetime = expires_at - issued_at
    if not trusted(times, policy=policy, now=now, lifetime=lifetime):
        return False
    return second(times[0]) >= second(issued_at)


def ahead_of(state: progress.State, times: Times | None) -> bool:
    """Does a target holding a token with ``times`` (None: not whole) hold a newer one than
    ``state`` describes, to the second? After a takeover that means the state, read from
    a watch, may lag the previous holder's last status write (decision 0050)."""
    if times is None:
        return False
    return state.issued_at is None or second(times[0]) > second(state.issued_at)


def adoptable(
    state: progress.State,
    times: Times | None,
    *,
    target: str,
    now: datetime.datetime,
    refresh_requested: bool,
    policy: model.RefreshPolicy,
) -> progress.Adopted | None:
    """Take over the token the target Secret holds instead of fetching one. ``times`` are
    the Secret's (issued, expires, refresh), None when it is not whole.

    The Secret is written before status: an operator stopped between the two writes
    leaves status one token behind, and the Secret's annotations say where it was; another
    operator process may have written a newer token. Adopted when the times are
    :func:`trusted` (checked against the token status knows: decision 0035), the token is
    newer than status's (or the very same one, while the credential is not failing: a
    re-check after a change to the Secret found it as it should be) and not due.
    ``refresh_requested``: a new generation, a refresh request, a rotated client Secret.
    """
    if refresh_requested or times is None:
        return None
    issued_at, expires_at, refresh_at = times
    lifetime = None
    if state.issued_at is not None and state.expires_at is not None:
        lifetime = state.expires_at - state.issued_at
    if not trusted(times, policy=policy, now=now, lifetime=lifetime):
        return None
    if state.issued_at is not None:
        known, found = second(state.issued_at), second(issued_at)
        same = (
            found == known
            and state.expires_at is not None
            and second(expires_at) == second(state.expires_at)
        )
        if found < known or (found == known and not (same and state.failure_reason is None)):
            return None  # older than status's, or not known to be the one status describes
    elif state.expires_at is not None and expires_at <= state.expires_at:
        return None  # status is not behind the Secret
    if refresh_at <= now or expires_at <= now:
        return None  # due anyway
    return progress.Adopted(
        issued_at=issued_at, expires_at=expires_at, refresh_at=refresh_at, target=target
    )


def repair_not_before(
    state: progress.State,
    *,
    policy: model.RefreshPolicy,
    now: datetime.datetime,
    requested: bool,
) -> datetime.datetime | None:
    """When an attempt that must fetch a token to repair its target may do so; None: now.

    An attempt before the credential is due that nobody asked for (no new generation,
    refresh request or rotated client Secret) is a re-check of a target the watch saw
    deleted or changed. It fetches no token sooner than ``minInterval`` after the current
    one was issued: deleting a Secret in a loop must not become a loop of token requests
    against a provider other namespaces share (decision 0035).
    """
    if requested or state.issued_at is None or state.next_refresh_at is None:
        return None
    if now >= state.next_refresh_at or state.issued_at > now + CLOCK_SKEW:
        return None  # due anyway (minInterval is in the due time), or status is not believed
    earliest = state.issued_at + policy.min_interval
    return earliest if now < earliest else None
