"""Pure: whether a workload is restarted for a credential's token, and the patch that does it.

``spec.rolloutRestart`` restarts workloads that read the token once (an environment
variable) the way ``kubectl rollout restart`` does: a pod-template annotation changes, and
the workload's controller rolls its pods (decision 0042). The restart-on-change tools
before it looped or restarted everything (VSO's restart loops, Reloader restarting every
workload when it restarted itself), so :func:`decide` is level-based on what the workload
itself records, never on what this process remembers:

- the workload's own metadata annotation :data:`RESTARTED_FOR` holds, per credential, the
  token version (its issue time, whole seconds) that credential last restarted it for:
  one restart per token version and workload, across operator restarts and processes;
- a workload created after the token was issued started with it: recorded, not restarted;
- at most one restart per ``minInterval`` per workload, whichever credential restarts it,
  counted from the pod-template annotation :data:`RESTARTED_AT`; one due sooner is
  deferred, then made once for the token current at that time;
- when the operator resumes (no token fetched by this process), only a workload whose
  record names an older token is restarted: a restart that a crash prevented. A workload
  without a record is left alone, so an operator start restarts nothing.

Pure: plain dicts in (the JSON the API server speaks), the clock passed in.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from tokensync import model, provenance

#: On the pod template: changing it is what rolls the pods (as kubectl's restartedAt).
RESTARTED_AT = f"{model.GROUP}/restartedAt"
#: On the workload's own metadata (changing it rolls nothing): {credential: token issue time}.
RESTARTED_FOR = f"{model.GROUP}/restarted-for"
#: Event reasons on the ClientCredential.
RESTARTED = "RolloutRestarted"
FAILED = "RolloutRestartFailed"
#: Credentials a workload's record keeps, the most recent tokens first: the record of a
#: deleted credential is dropped eventually, and a workload's annotation stays small.
RECORD_ENTRIES = 32
#: A record longer than this is not read (32 entries of 253-character names fit in 9 KiB).
RECORD_CHARACTERS = 16384


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    """What the decision needs of a Deployment, StatefulSet or DaemonSet."""

    version: str
    created_at: datetime.datetime | None = None
    #: The pod template's :data:`RESTARTED_AT`: its last restart, by anyone's tokensync.
    restarted_at: datetime.datetime | None = None
    #: :data:`RESTARTED_FOR`, read: credential name -> token version it restarted it for.
    restarted_for: Mapping[str, datetime.datetime] = dataclasses.field(default_factory=dict)


def workload(body: Mapping[str, Any]) -> Workload:
    """Read a workload's JSON. Anything unreadable (a tenant may write these annotations)
    counts as absent."""
    meta = body.get("metadata") or {}
    template = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return Workload(
        version=str(meta.get("resourceVersion") or ""),
        created_at=model.parse_time(meta.get("creationTimestamp")),
        restarted_at=model.parse_time((template.get("annotations") or {}).get(RESTARTED_AT)),
        restarted_for=_record((meta.get("annotations") or {}).get(RESTARTED_FOR)),
    )


def _record(raw: object) -> dict[str, datetime.datetime]:
    if not isinstance(raw, str) or len(raw) > RECORD_CHARACTERS:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    found = {}
    for name, value in parsed.items():
        moment = model.parse_time(value)
        if isinstance(name, str) and moment is not None:
            found[name] = moment
    return found


def version(issued_at: datetime.datetime) -> datetime.datetime:
    """A token's version: its issue time in whole seconds, as the target Secret's
    tokensync.dev/issued-at annotation and status.lastRefreshAt carry it."""
    return issued_at.astimezone(datetime.UTC).replace(microsecond=0)


@dataclasses.dataclass(frozen=True, slots=True)
class Restart:
    """Change the pod template's :data:`RESTARTED_AT` and record the token."""


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """Record the token, restart nothing: the workload's pods already read it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Defer:
    """Restarted less than minInterval ago: decide again at ``until``."""

    until: datetime.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Nothing:
    why: str


Verdict = Restart | Record | Defer | Nothing


def decide(
    found: Workload,
    *,
    credential: str,
    token: datetime.datetime,
    now: datetime.datetime,
    min_interval: datetime.timedelta,
    resumed: bool,
) -> Verdict:
    """What to do with one workload for the credential's current token (``token``: its
    :func:`version`). ``resumed``: no token was fetched by this process (an operator start,
    or a token adopted from the target Secret); then only a record of an older token calls
    for a restart."""
    recorded = found.restarted_for.get(credential)
    if recorded is not None and recorded >= token:
        return Nothing("already restarted (or recorded) for this token")
    if recorded is None and resumed:
        return Nothing("no record of an earlier token: an operator start restarts nothing")
    if found.created_at is not None and found.created_at > token:
        return Record()
    last = found.restarted_at
    if last is not None and last <= now + provenance.CLOCK_SKEW:
        # A time further ahead is no restart any clock made: it would defer forever.
        until = last + min_interval
        if now < until:
            return Defer(until=until)
    return Restart()


def patch(
    found: Workload,
    verdict: Restart | Record,
    *,
    credential: str,
    token: datetime.datetime,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The merge patch for ``verdict``: conditional on the workload's resourceVersion, so
    that two writers (two credentials, two operator processes) cannot both restart it for
    one token; the loser reads the workload again and decides again."""
    others = sorted(
        ((name, moment) for name, moment in found.restarted_for.items() if name != credential),
        key=lambda item: (item[1], item[0]),
        reverse=True,
    )
    # This credential's entry is always kept: without it, its next check would restart.
    kept = dict([(credential, token), *others[: RECORD_ENTRIES - 1]])
    text = json.dumps(
        {name: model.format_time(moment) for name, moment in sorted(kept.items())},
        separators=(",", ":"),
    )
    body: dict[str, Any] = {
        "metadata": {"resourceVersion": found.version, "annotations": {RESTARTED_FOR: text}}
    }
    if isinstance(verdict, Restart):
        stamp = model.format_time(now)
        body["spec"] = {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}
    return body
