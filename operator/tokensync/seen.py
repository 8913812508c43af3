"""Opted-in Secrets as the operator's watch delivered them a short while ago.

The watch of labelled Secrets (``listwatch``, started by ``runtime``; decision 0059)
already carries each Secret's data, reduced by :func:`summarize`. A credential's attempt
that follows such an event closely (every first attempt of a cold start, a credential
created next to its Secret, a refresh triggered by a rotation) uses it instead of reading
the Secret again (decision 0025).

An entry is trusted for :data:`TRUST_SECONDS` after the event that brought it, or after
the latest listing that found it at the same version (:meth:`SeenSecrets.confirm`, every
:data:`CONFIRM_SECONDS`). Changes and deletions arrive as events and replace or drop
entries at once; the time bound is for what a watch does not say: the watch lists again after
the watch falls behind (410 Gone) and reports no deletion for a Secret that vanished in
between, and the next listing drops it. Without a confirmation the attempt reads the
Secret from the API, as every attempt did before; a referenced Secret that is confirmed
stays, so a routine refresh reads nothing (issue 19).

Any tenant can label Secrets, so what is kept is bounded (issue 14 section 3): a Secret no
tracked credential references is held only briefly (:data:`PENDING_SECONDS`, at most
:data:`PENDING_BYTES` of them in all), long enough for the credential that follows it in a
cold start's listings to claim it (:meth:`SeenSecrets.claim`); a Secret whose data is over
:data:`MAX_ENTRY_BYTES` is not kept at all.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from tokensync import model

#: How long a watched Secret stands in for a read of it, after its event or a confirmation.
TRUST_SECONDS = 300.0
#: How often the operator lists the opted-in Secrets to confirm what it keeps: twice per
#: trust time, so that a confirmed entry never lapses between two listings.
CONFIRM_SECONDS = TRUST_SECONDS / 2
#: How long a Secret that no credential references yet is kept, and how much of them.
PENDING_SECONDS = 60.0
PENDING_BYTES = 16 * 1024 * 1024
#: A Secret whose data is larger is read from the API at each attempt instead.
MAX_ENTRY_BYTES = 64 * 1024

Key = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass(slots=True)
class _Entry:
    """What is kept of one Secret: its data as the event had it, and the few fields
    read besides. The body handed out is built at each :meth:`SeenSecrets.get` (a refresh's
    worth of work), not kept: three dicts fewer per Secret (decision 0053)."""

    at: float  # the event's or the confirming listing's time
    version: str
    data: dict[str, Any]
    allowed: object  # the allowed-destinations annotation, or None
    size: int  # data bytes

    def body(self, key: Key) -> dict[str, Any]:
        annotations = {} if self.allowed is None else {_ALLOWED: self.allowed}
        meta = {"name": key[1], "namespace": key[0], "resourceVersion": self.version}
        return {
            "metadata": {**meta, "labels": _LABELS, "annotations": annotations},
            "data": self.data,
        }


_LABELS = {model.CLIENT_SECRET_LABEL: "true"}
_ALLOWED = model.ALLOWED_DESTINATIONS_ANNOTATION


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One watch event of an opted-in Secret, as the watch's thread reduced it (decision
    0059): the key, and for a Secret listed, added or modified, what :meth:`SeenSecrets.put`
    reads of it; None for one deleted or no longer opted in."""

    namespace: str
    name: str
    #: Holds the Secret's data: never in a repr (a log line or an exception's text).
    body: dict[str, Any] | None = dataclasses.field(repr=False)


def summarize(kind: str, secret: Mapping[str, Any]) -> Event:
    """What the opted-in Secrets' watch hands over of one event (``kind``: ADDED, MODIFIED,
    DELETED, or LISTED). A watch selected by label reports a Secret that loses the label as
    DELETED."""
    meta = secret.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if kind == "DELETED":
        return Event(namespace, name, None)
    kept: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "resourceVersion": str(meta.get("resourceVersion") or ""),
        "labels": {
            key: value
            for key, value in (meta.get("labels") or {}).items()
            if key == model.CLIENT_SECRET_LABEL
        },
    }
    allowed = (meta.get("annotations") or {}).get(_ALLOWED)
    if allowed is not None:
        kept["annotations"] = {_ALLOWED: allowed}
    return Event(namespace, name, {"metadata": kept, "data": secret.get("data") or {}})


class SeenSecrets:
    """Recently watched opted-in Secrets: just the data, version, opt-in label and
    allowed destinations."""

    def __init__(
        self, *, trust: float = TRUST_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._trust = trust
        self._clock = clock
        # Insertion order is age order in both: put() and claim() append at the end.
        self._entries: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()
        self._pending: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()
        self._pending_bytes = 0

    def __len__(self) -> int:
        return len(self._entries) + len(self._pending)

    def put(self, body: Mapping[str, Any], *, referenced: bool = True) -> None:
        """A Secret carrying the opt-in label was listed, added or modified.

        ``referenced``: some tracked credential reads it; if not, it is only pending.
        """
        meta = body.get("metadata") or {}
        # The namespace interned: one string per namespace (decision 0053).
        key = (sys.intern(str(meta.get("namespace") or "")), str(meta.get("name") or ""))
        self.drop(*key)
        labels = meta.get("labels") or {}
        data = body.get("data") or {}
        size = sum(len(k) + len(v) for k, v in data.items() if isinstance(v, str))
        if labels.get(model.CLIENT_SECRET_LABEL) != "true" or size > MAX_ENTRY_BYTES:
            return
        now = self._clock()
        self._expire(now)
        # What sources.auth_material and destinations.allows read; the rest of the event's
        # body is not kept.
        entry = _Entry(
            at=now,
            version=str(meta.get("resourceVersion") or ""),
            data=data,
            allowed=(meta.get("annotations") or {}).get(_ALLOWED),
            size=size,
        )
        if referenced:
            self._entries[key] = entry
            return
        self._pending[key] = entry
        self._pending_bytes += size
        while self._pending_bytes > PENDING_BYTES:
            _, dropped = self._pending.popitem(last=False)
            self._pending_bytes -= dropped.size

    def now(self) -> float:
        """This cache's clock: take it before a listing, pass it to :meth:`confirm`."""
        return self._clock()

    def confirm(self, listed: Mapping[Key, str], *, since: float) -> int:
        """A consistent listing of the opted-in Secrets (key: resourceVersion), begun at
        ``since``. Each kept Secret older than that which the listing has at the same
        version is trusted from ``since`` on; one it lacks (deleted, or its label removed,
        while no watch event said so), or has at another version, is dropped. Entries of
        events after ``since`` are newer than the listing and stay as they are. Returns how
        many were dropped."""
        # In place: a new map every CONFIRM_SECONDS would allocate every entry's node again
        # while the old ones are alive, and spread the long-lived ones over more of the
        # allocator's arenas (issue 19).
        dropped, newer = 0, []
        for key in list(self._entries):
            entry = self._entries[key]
            if entry.at >= since:
                newer.append(key)
            elif listed.get(key) == entry.version:
                entry.at = since
            else:
                del self._entries[key]
                dropped += 1
        # Age order, which _expire relies on: the confirmed, all at ``since``, first; then
        # the entries of events after it, oldest first.
        newer.sort(key=lambda key: self._entries[key].at)
        for key in newer:
            self._entries.move_to_end(key)
        return dropped

    def claim(self, namespace: str, name: str) -> None:
        """A credential that reads this Secret appeared: keep it for the full trust time."""
        entry = self._pending.pop((namespace, name), None)
        if entry is not None:
            self._pending_bytes -= entry.size
            # Out of age order by at most PENDING_SECONDS: get() checks the age itself, so
            # it is never trusted too long, only dropped a little late.
            self._entries[(namespace, name)] = entry

    def drop(self, namespace: str, name: str) -> None:
        """The Secret was deleted, or no longer carries the label."""
        self._entries.pop((namespace, name), None)
        entry = self._pending.pop((namespace, name), None)
        if entry is not None:
            self._pending_bytes -= entry.size

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as last watched, if that was recent enough to stand in for a read."""
        now = self._clock()
        self._expire(now)
        key = (namespace, name)
        entry = self._entries.get(key) or self._pending.get(key)
        if entry is None or now - entry.at >= self._trust:
            return None
        return entry.body(key)

    def _expire(self, now: float) -> None:
        for entries, trust in ((self._entries, self._trust), (self._pending, PENDING_SECONDS)):
            while entries:
                key, entry = next(iter(entries.items()))
                if now - entry.at < trust:
                    break
                del entries[key]
                if entries is self._pending:
                    self._pending_bytes -= entry.size
