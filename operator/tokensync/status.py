"""Conditions and status, the way cert-manager and kstatus expect them.

Pure: builds the ``status`` a ClientCredential should have from what just happened. A
condition keeps its ``lastTransitionTime`` while its status does not change, so GitOps
tools and ``kubectl wait --for=condition=Ready`` see real transitions only.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from tokensync import model

READY = "Ready"
# The reasons: failures.Reason.


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; the transition time moves only on change."""
    wanted = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = model.format_time(now)
    if previous is not None and previous.get("status") == wanted:
        transition = str(previous.get("lastTransitionTime") or transition)
    updated = {
        "type": type_,
        "status": wanted,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    return [dict(c) for c in conditions if c.get("type") != type_] + [updated]


def ready_condition(conditions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == READY), None)


def times(**moments: datetime.datetime | None) -> dict[str, str | None]:
    """Status timestamp fields (``expiresAt=...``) formatted, None kept to clear a field."""
    return {key: model.format_time(value) if value else None for key, value in moments.items()}
