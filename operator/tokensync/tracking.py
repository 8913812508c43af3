"""Which ClientCredentials exist, and which Secrets feed which credential.

The watch bookkeeping, and nothing else: a :class:`Record` per credential (what its last
event said, plus the :class:`progress.State` its attempts leave), and an index from each
Secret holding client proof to the credentials that read it, so that a rotated Secret
triggers exactly those. Pure: no I/O, no queue; the reconcile loop decides what to run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from tokensync import bounds, model, progress

Key = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass(slots=True)
class Record:
    """What the operator remembers about one ClientCredential between events."""

    namespace: str
    name: str
    uid: str
    generation: int
    #: The raw spec, as much of it as parse_spec reads (``bounds.retained``): parsed at
    #: each attempt, so an invalid one is reported, not dropped.
    spec: Mapping[str, Any]
    refresh_request: str | None
    state: progress.State = dataclasses.field(default_factory=progress.State)
    #: The target Secret this credential last wrote or read, and its uid (decision 0007).
    target_name: str | None = None
    target_uid: str | None = None
    #: The tracker's event count when this record was last put: see Tracker.absent().
    observed: int = 0

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def involved(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The Secrets holding the client's proof, in the order of their versions.

        Read from the raw spec (it may not parse): the same order as
        ``model.ClientCredentialSpec.secret_names``.
        """
        names = []
        for field in ("clientSecretRef", "privateKeyRef", "clientCertificateRef"):
            ref = self.spec.get(field)
            name = ref.get("name") if isinstance(ref, Mapping) else None
            if isinstance(name, str) and name:
                names.append(name)
        return tuple(dict.fromkeys(names))

    def has_secret_version(self, name: str, version: str) -> bool:
        """Did the last attempt read this version of the Secret ``name``?

        ``state.source_version`` holds one resourceVersion per Secret in
        :attr:`secret_names` order, joined by commas (just the one with one Secret).
        """
        names = self.secret_names
        versions = (self.state.source_version or "").split(",")
        if name not in names or len(versions) != len(names):
            return False
        return versions[names.index(name)] == version

    def needs_refresh_now(self) -> bool:
        """A new spec generation or an unhandled force-refresh request."""
        if self.generation != self.state.handled_generation:
            return True
        request = self.refresh_request
        return bool(request) and request != self.state.handled_request

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Record:
        meta = body["metadata"]
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            spec=bounds.retained(body.get("spec") or {}),
            refresh_request=_refresh_request(meta.get("annotations") or {}),
            state=progress.State.from_status(body.get("status") or {}),
            target_name=(body.get("status") or {}).get("target"),
        )


#: A refresh request longer than this is remembered by its digest (an annotation value
#: may be up to 256 KiB; kubectl tokensync refresh writes a timestamp).
_REQUEST_KEPT = 256


def _refresh_request(annotations: Mapping[str, Any]) -> str | None:
    value = annotations.get(model.REFRESH_REQUESTED_ANNOTATION)
    if not isinstance(value, str) or len(value) <= _REQUEST_KEPT:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


class Tracker:
    """Every credential's :class:`Record`, and the Secret-to-credential index."""

    def __init__(self) -> None:
        self._records: dict[Key, Record] = {}
        self._by_secret: dict[Key, set[Key]] = {}
        # Secret versions seen while their credential was being refreshed: checked when
        # that refresh ends, against the version it actually read (decision 0011).
        self._seen_while_running: dict[Key, dict[str, str]] = {}
        self._events = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: Key) -> Record | None:
        return self._records.get(key)

    def is_current(self, record: Record) -> bool:
        """False once the credential was deleted (or deleted and created again)."""
        return self._records.get(record.key) is record

    def put(self, body: Mapping[str, Any]) -> Record:
        """A ClientCredential was listed, added or modified: its record, updated."""
        fresh = Record.from_body(body)
        record = self._records.get(fresh.key)
        if record is None or record.uid != fresh.uid:
            record = fresh
            self._records[record.key] = record
        else:
            self._unindex(record)
            record.generation = fresh.generation
            record.spec = fresh.spec
            record.refresh_request = fresh.refresh_request
        self._index(record)
        self._events += 1
        record.observed = self._events
        return record

    def mark(self) -> int:
        """A point in the event stream, taken before a full listing starts."""
        return self._events

    def absent(self, listed: set[Key], *, since: int) -> list[Key]:
        """Credentials missing from a full listing taken after ``mark()`` returned ``since``.

        Those observed after the mark are kept: the listing may predate their creation.
        A relist after a broken watch (410 Gone) delivers no DELETED events, so this is how
        a credential deleted meanwhile is found (issue 14 section 7).
        """
        return [
            key
            for key, record in self._records.items()
            if key not in listed and record.observed <= since
        ]

    def remove(self, key: Key) -> Record | None:
        record = self._records.pop(key, None)
        self._seen_while_running.pop(key, None)
        if record is not None:
            self._unindex(record)
        return record

    def is_referenced(self, namespace: str, secret: str) -> bool:
        """Does some tracked credential read its client proof from this Secret?"""
        return (namespace, secret) in self._by_secret

    def readers(self, namespace: str, secret: str, version: str) -> list[Record]:
        """The credentials reading the Secret whose last attempt read another version."""
        keys = self._by_secret.get((namespace, secret), set())
        found = (self._records.get(key) for key in keys)
        return [r for r in found if r is not None and not r.has_secret_version(secret, version)]

    def seen_while_running(self, key: Key, secret: str, version: str) -> None:
        self._seen_while_running.setdefault(key, {})[secret] = version

    def stale_after_run(self, key: Key) -> bool:
        """Was a Secret version seen during the run other than the one the run read?"""
        versions = self._seen_while_running.pop(key, {})
        record = self._records.get(key)
        if record is None:
            return False
        return any(
            not record.has_secret_version(name, version) for name, version in versions.items()
        )

    def _index(self, record: Record) -> None:
        for name in record.secret_names:
            self._by_secret.setdefault((record.namespace, name), set()).add(record.key)

    def _unindex(self, record: Record) -> None:
        for name in record.secret_names:
            ref = (record.namespace, name)
            keys = self._by_secret.get(ref)
            if keys is not None:
                keys.discard(record.key)
                if not keys:
                    del self._by_secret[ref]
