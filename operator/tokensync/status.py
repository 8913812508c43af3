"""Conditions and status, the way cert-manager and kstatus expect them.

Pure: builds the ``status`` a ClientCredential should have from what just happened. A
condition keeps its ``lastTransitionTime`` while its status does not change, so GitOps
tools and ``kubectl wait --for=condition=Ready`` see real transitions only.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from tokensync import model

READY = "Ready"
# The reasons: failures.Reason.


def set_condition(
    conditions: Sequence[model.Condition],
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> tuple[model.Condition, ...]:
    """Return ``conditions`` with ``type_`` set; the transition time moves only on change."""
    wanted = "True" if status else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    transition = model.format_time(now)
    if previous is not None and previous.status == wanted:
        transition = str(previous.last_transition_time or transition)
    updated = model.Condition(
        type=type_,
        status=wanted,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )
    return (*(c for c in conditions if c.type != type_), updated)


def ready_condition(conditions: Sequence[model.Condition]) -> model.Condition | None:
    return next((c for c in conditions if c.type == READY), None)


def rendered(conditions: Sequence[model.Condition]) -> list[dict[str, Any]]:
    """``status.conditions`` as a status patch writes them."""
    return [condition.as_status() for condition in conditions]


#: The status times the operator acts at: to the millisecond (``model.format_due``).
_DUE_TIMES = frozenset({"nextRefreshAt"})


def times(**moments: datetime.datetime | None) -> dict[str, str | None]:
    """Status timestamp fields (``expiresAt=...``) formatted, None kept to clear a field.
    Whole seconds, except the due time (``nextRefreshAt``) to the millisecond."""
    return {
        key: (model.format_due if key in _DUE_TIMES else model.format_time)(value)
        if value
        else None
        for key, value in moments.items()
    }
