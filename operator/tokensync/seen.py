"""Opted-in Secrets as the operator's watch delivered them a short while ago.

The watch of labelled Secrets (handlers.client_secret_changed) already carries each
Secret's data. A credential's attempt that follows such an event closely (every first
attempt of a cold start, a credential created next to its Secret, a refresh triggered by
a rotation) uses it instead of reading the Secret again (decision 0025).

An entry is trusted for :data:`TRUST_SECONDS` after the event that brought it. Changes
and deletions arrive as events and replace or drop entries at once; the time bound is for
what a watch does not say: kopf lists again after the watch falls behind (410 Gone) and
reports no deletion for a Secret that vanished in between. After the bound the attempt
reads the Secret from the API, as every attempt did before. Entries are dropped as they
age, so an operator whose Secrets do not change holds none. Only Secrets that a tracked
credential references are put here (``Reconciler.secret_seen``): any tenant can label
Secrets, and those no credential reads are not kept (issue 14 section 3).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Any

from tokensync import model

#: How long a watched Secret stands in for a read of it.
TRUST_SECONDS = 300.0

Key = tuple[str, str]  # (namespace, name)

_LABELS = {model.CLIENT_SECRET_LABEL: "true"}


class SeenSecrets:
    """Recently watched opted-in Secrets: just the data, version and opt-in label."""

    def __init__(
        self, *, trust: float = TRUST_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._trust = trust
        self._clock = clock
        # Insertion order is age order: put() moves a key to the end.
        self._entries: collections.OrderedDict[Key, tuple[float, dict[str, Any]]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, body: Mapping[str, Any]) -> None:
        """A Secret carrying the opt-in label was listed, added or modified."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        labels = meta.get("labels") or {}
        if labels.get(model.CLIENT_SECRET_LABEL) != "true":
            self._entries.pop(key, None)
            return
        now = self._clock()
        self._expire(now)
        # A minimal body of the same shape as the API's: what sources.auth_material and
        # destinations.allows read. The rest of the event's body is not kept.
        annotations = meta.get("annotations") or {}
        kept = {
            k: annotations[k] for k in (model.ALLOWED_DESTINATIONS_ANNOTATION,) if k in annotations
        }
        self._entries[key] = (
            now,
            {
                "metadata": {
                    "name": key[1],
                    "namespace": key[0],
                    "resourceVersion": str(meta.get("resourceVersion") or ""),
                    "labels": _LABELS,
                    "annotations": kept,
                },
                "data": body.get("data") or {},
            },
        )
        self._entries.move_to_end(key)

    def drop(self, namespace: str, name: str) -> None:
        """The Secret was deleted, or no longer carries the label."""
        self._entries.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as last watched, if that was recent enough to stand in for a read."""
        now = self._clock()
        self._expire(now)
        entry = self._entries.get((namespace, name))
        return entry[1] if entry is not None else None

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (at, _) = next(iter(self._entries.items()))
            if now - at < self._trust:
                return
            del self._entries[key]
