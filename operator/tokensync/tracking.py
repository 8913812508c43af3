"""Which ClientCredentials exist, and which Secrets feed which credential.

The watch bookkeeping, and nothing else: a :class:`Record` per credential (what its last
event said, plus the :class:`progress.State` its attempts leave), and an index from each
Secret holding client proof to the credentials that read it, so that a rotated Secret
triggers exactly those; and what a target Secret's watch event means for its credential
(:func:`judge`: the operator's own write, or a change by someone else, decision 0035).
Pure: no I/O, no queue; the reconcile loop decides what to run.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import sys
from collections.abc import Collection, Mapping
from typing import Any

from tokensync import bounds, leases, model, progress, target

Key = tuple[str, str]  # (namespace, name)


def compact(spec: Mapping[str, Any]) -> str:
    """A spec as :attr:`Record.spec_json` keeps it."""
    return json.dumps(spec, separators=(",", ":"), ensure_ascii=False)


@dataclasses.dataclass(slots=True)
class Record:
    """What the operator remembers about one ClientCredential between events."""

    namespace: str
    name: str
    uid: str
    generation: int
    #: The raw spec, as much of it as parse_spec reads (``bounds.retained``), as compact
    #: JSON (:func:`compact`): parsed at each attempt, so an invalid one is reported, not
    #: dropped. One string instead of a dict per object in it (decision 0057); read it
    #: through :attr:`spec`.
    spec_json: str
    refresh_request: str | None
    state: progress.State = dataclasses.field(default_factory=progress.State)
    #: The target Secret this credential last wrote or read, and its uid (decision 0007).
    target_name: str | None = None
    target_uid: str | None = None
    #: That Secret's resourceVersion as this process last wrote or read it: every write is
    #: conditional on it (decision 0036).
    target_version: str | None = None
    #: ``target.digest`` of what this process last wrote or is writing there (or found
    #: there as status describes it), and of the content before that: a watch event with
    #: either is not a change by someone else (decision 0035). 16 bytes each.
    target_digest: bytes | None = None
    target_previous: bytes | None = None
    #: The ClientCredential's resourceVersion as last seen (watch event or status patch):
    #: status patches are conditional on it (decision 0036).
    resource_version: str | None = None
    #: The ClientCredential is being deleted: its target is not repaired.
    deleting: bool = False
    #: The target watch saw the target deleted: before it is written again, the credential
    #: itself is read (the garbage collector deletes targets whose credential is gone, and
    #: a credential deleted while the watch was down sent no DELETED event).
    target_deleted: bool = False
    #: The tracker's event count when this record was last put: see Tracker.absent().
    observed: int = 0
    #: The last attempt failed in a way only a change can mend (its decision had no due
    #: time): an event of the credential that changes nothing (its own status patch) must
    #: not start another attempt (reconcile.observe).
    parked: bool = False
    #: ``possession.token_id`` of the token in the target (written, read or seen there) and of
    #: the one before it, and of the token a refresh was asked for at the refresh endpoint
    #: (decision 0043). 16 bytes each; the token itself is not kept.
    token_id: bytes | None = None
    token_previous: bytes | None = None
    token_asked: bytes | None = None
    #: The keys tokensync last wrote into the target, or found there (decision 0040): those
    #: a new shape does not write are removed. None: unknown, nothing to remove.
    target_written: target.Written | None = None
    #: The last refresh token the server sent, and the generation it was got for (decision
    #: 0048): used at the next refresh while the spec is that generation. In memory only:
    #: never in status, and a restarted operator starts with a fresh grant.
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    refresh_generation: int | None = None
    #: The shard it belongs to (``leases.shard_of``; decision 0050).
    shard: int = 0
    #: Its shard was just taken over and no attempt here has read its target yet:
    #: :attr:`state` is status as this replica's watch last delivered it, which may lag the
    #: previous holder's last write. A newer token found in the target has status read again
    #: before anything is decided (:meth:`confirm`, decision 0050).
    unconfirmed: bool = False
    #: (namespace, name): set once, as the namespace and name never change.
    key: Key = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Made once: the tracker, the refresh queue and the expiry alarms keep this one tuple
        # instead of one each (decision 0053).
        self.key = (self.namespace, self.name)

    @property
    def spec(self) -> dict[str, Any]:
        """The raw spec, parsed from :attr:`spec_json` at each call: a fresh copy."""
        spec: dict[str, Any] = json.loads(self.spec_json)
        return spec

    @property
    def involved(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The Secrets holding the client's proof, in the order of their versions.

        Read from the raw spec (it may not parse): the same order as
        ``model.ClientCredentialSpec.secret_names``.
        """
        spec = self.spec
        fields = ("clientSecretRef", "privateKeyRef", "clientCertificateRef")
        refs = [spec.get(field) for field in fields]
        headers = spec.get("requestHeaders")
        for header in headers if isinstance(headers, list) else ():
            source = header.get("valueFrom") if isinstance(header, Mapping) else None
            refs.append(source.get("secretKeyRef") if isinstance(source, Mapping) else None)
        names = []
        for ref in refs:
            name = ref.get("name") if isinstance(ref, Mapping) else None
            if isinstance(name, str) and name:
                names.append(name)
        return tuple(dict.fromkeys(names))

    def has_secret_version(self, name: str, version: str) -> bool:
        """Did the last attempt read this version of the Secret ``name``?

        ``state.source_version`` holds one resourceVersion per Secret in
        :attr:`secret_names` order, joined by commas (just the one with one Secret).
        """
        versions = (self.state.source_version or "").split(",")
        if version not in versions:
            return False  # a Secret's edit: decided without parsing the spec
        names = self.secret_names
        if name not in names or len(versions) != len(names):
            return False
        return versions[names.index(name)] == version

    def needs_refresh_now(self) -> bool:
        """A new spec generation or an unhandled force-refresh request."""
        if self.generation != self.state.handled_generation:
            return True
        request = self.refresh_request
        return bool(request) and request != self.state.handled_request

    def replace_asked(self) -> bool:
        """A holder of the current token asked for a new one at the refresh endpoint: the
        token in the target is not adopted again, it is replaced (decision 0043)."""
        return self.token_asked is not None and self.token_asked == self.token_id

    def holds(self, token_id: bytes | None) -> None:
        """The target holds the token with this id (None: an id unknown to this process)."""
        if token_id != self.token_id:
            self.token_previous, self.token_id = self.token_id, token_id

    def wrote(self, digest: bytes) -> None:
        """This process is about to write content with ``digest`` to the target."""
        if digest != self.target_digest:
            self.target_previous, self.target_digest = self.target_digest, digest

    def read_target(self, secret: Mapping[str, Any]) -> None:
        """This process read (or, on a watch event, accepted) the target Secret as it is."""
        meta = secret.get("metadata") or {}
        self.target_name, self.target_uid = meta.get("name"), meta.get("uid")
        self.target_version = meta.get("resourceVersion")
        self.wrote(target.digest(secret))
        self.holds(target.token_id(secret))
        self.target_written = target.written(secret)

    def accept(self, seen: target.Seen) -> None:
        """A watch event showed the target as status describes it (:attr:`Verdict.AGREES`):
        the next write is conditional on that version, and no read is needed first."""
        self.target_name, self.target_uid, self.target_version = seen.name, seen.uid, seen.version
        self.wrote(seen.digest)
        self.holds(seen.token_id)
        self.target_written = seen.written

    def confirm(self, body: Mapping[str, Any] | None) -> bool:
        """The ClientCredential as just read from the API server, after a takeover found a
        newer token in the target than :attr:`state` knows (decision 0050): its status
        replaces the state kept from the watch, as a start reads it (decision 0005). Only
        the same object at the generation this record knows: a spec this process has not
        seen yet is the watch's to deliver. False: the state is left as it was."""
        meta = (body or {}).get("metadata") or {}
        if body is None or meta.get("uid") != self.uid:
            return False
        if int(meta.get("generation") or 0) != self.generation:
            return False
        self.state = progress.State.from_status(body.get("status") or {})
        self.resource_version = meta.get("resourceVersion") or self.resource_version
        return True

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Record:
        meta = body["metadata"]
        return cls(
            # One string per namespace, not one per credential (decision 0053).
            namespace=sys.intern(meta["namespace"]),
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            spec_json=compact(bounds.retained(body.get("spec") or {})),
            refresh_request=_refresh_request(meta.get("annotations") or {}),
            state=progress.State.from_status(body.get("status") or {}),
            target_name=(body.get("status") or {}).get("target"),
            resource_version=meta.get("resourceVersion"),
            deleting=bool(meta.get("deletionTimestamp")),
        )


class Verdict(enum.Enum):
    """What a target watch event means for its credential (:func:`judge`)."""

    #: Written by this process, or as this process last found it: nothing to do.
    OWN = "own"
    #: First sight since the start, and as status describes it: remember it as found.
    AGREES = "agrees"
    #: Deleted, edited, or written by another writer: read it again before anything else
    #: (the next attempt adopts a newer token, or rewrites the Secret with a new one).
    CHANGED = "changed"


def judge(record: Record, seen: target.Seen) -> Verdict:
    """Is a target Secret event a change by someone else? Pure, and cheap: an event for a
    version this process wrote compares two strings (decision 0035)."""
    if seen.deleted:
        if record.target_uid is not None and seen.uid != record.target_uid:
            return Verdict.OWN  # an earlier Secret of that name, replaced since
        return Verdict.CHANGED
    if seen.version and seen.version == record.target_version:
        return Verdict.OWN
    if seen.digest in (record.target_digest, record.target_previous):
        return Verdict.OWN  # our write before its response, or what we superseded
    if record.target_digest is None and _agrees(record.state, seen.times):
        return Verdict.AGREES  # nothing written or read since the start, as status says
    return Verdict.CHANGED


def _agrees(state: progress.State, times: target.TokenTimes | None) -> bool:
    """Whole, with the issue and expiry times status has (both whole seconds)."""
    if times is None or state.issued_at is None or state.expires_at is None:
        return False
    issued_at, expires_at, _ = times
    return model.format_time(issued_at) == model.format_time(state.issued_at) and (
        model.format_time(expires_at) == model.format_time(state.expires_at)
    )


#: A target event whose credential is not tracked yet is kept this long, for the credential
#: that the other listing of a start may bring next (decision 0035), and this many at most
#: (about 550 bytes each: 11 MiB; any tenant can label a Secret and name an owner).
UNCLAIMED_SECONDS = 60.0
UNCLAIMED_MAX = 20_000

#: A refresh request longer than this is remembered by its digest (an annotation value
#: may be up to 256 KiB; kubectl tokensync refresh writes a timestamp).
_REQUEST_KEPT = 256


def _refresh_request(annotations: Mapping[str, Any]) -> str | None:
    value = annotations.get(model.REFRESH_REQUESTED_ANNOTATION)
    if not isinstance(value, str) or len(value) <= _REQUEST_KEPT:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One watch event of a ClientCredential, as the watch's thread reduced it (decision
    0061): the key, and for one listed, added or modified, what :meth:`Record.from_body` and
    a standby read of it; None for one deleted."""

    namespace: str
    name: str
    body: dict[str, Any] | None


#: The metadata a credential's record reads (:meth:`Record.from_body`).
_META_KEPT = ("namespace", "name", "uid", "generation", "resourceVersion", "deletionTimestamp")


def summarize(kind: str, credential: Mapping[str, Any]) -> Event:
    """What the ClientCredentials' watch hands over of one event (``kind``: ADDED, MODIFIED,
    DELETED, or LISTED): the metadata a record reads, the spec and the status. Not the
    managed fields or other annotations, such as ``kubectl apply``'s copy of the whole
    object, which the event loop would otherwise hold until the event is handled."""
    meta = credential.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if kind == "DELETED":
        return Event(namespace, name, None)
    kept = {key: meta[key] for key in _META_KEPT if key in meta}
    asked = (meta.get("annotations") or {}).get(model.REFRESH_REQUESTED_ANNOTATION)
    if asked is not None:
        kept["annotations"] = {model.REFRESH_REQUESTED_ANNOTATION: asked}
    body: dict[str, Any] = {"metadata": kept, "spec": credential.get("spec") or {}}
    if "status" in credential:
        body["status"] = credential["status"]
    return Event(namespace, name, body)


class Tracker:
    """Every credential's :class:`Record`, and the Secret-to-credential index."""

    def __init__(self, *, shards: int = 1) -> None:
        self._shards = shards
        self._records: dict[Key, Record] = {}
        # The one reader's key, or a set of two or more. Most Secrets have one reader, and
        # a set costs 216 bytes (decision 0057); but one client Secret may be read by
        # thousands of credentials (one client, many scopes), where a tuple rebuilt at each
        # of their events made every event O(readers) and a start quadratic (10,000 readers:
        # 0.8 s of copying; 30,000: 8.4 s).
        self._by_secret: dict[Key, Key | set[Key]] = {}
        # Secret versions seen while their credential was being refreshed: checked when
        # that refresh ends, against the version it actually read (decision 0011).
        self._seen_while_running: dict[Key, dict[str, str]] = {}
        # The latest target Secret event of each credential whose attempt was running:
        # judged when it ends, against what it left (decision 0035).
        self._targets_while_running: dict[Key, target.Seen] = {}
        # Target events of credentials not tracked yet, oldest first: (when, event).
        self._unclaimed: dict[Key, tuple[float, target.Seen]] = {}
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
            if record is not None:
                self._unindex(record)  # deleted and created again while the watch was down
            record = fresh
            if self._shards > 1:
                record.shard = leases.shard_of(record.namespace, record.name, self._shards)
            self._records[record.key] = record
            self._index(record)
        else:
            if record.spec_json != fresh.spec_json:  # not on its own status patch's event
                self._unindex(record)
                record.spec_json = fresh.spec_json
                self._index(record)
            record.generation = fresh.generation
            record.refresh_request = fresh.refresh_request
            record.resource_version = fresh.resource_version
            record.deleting = fresh.deleting
        self._events += 1
        record.observed = self._events
        return record

    def records(self) -> list[Record]:
        return list(self._records.values())

    def in_shard(self, shard: int) -> list[Record]:
        return [record for record in self._records.values() if record.shard == shard]

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
        self._targets_while_running.pop(key, None)
        if record is not None:
            self._unindex(record)
        return record

    def is_referenced(self, namespace: str, secret: str) -> bool:
        """Does some tracked credential read its client proof from this Secret?"""
        return (namespace, secret) in self._by_secret

    def readers(self, namespace: str, secret: str, version: str) -> list[Record]:
        """The credentials reading the Secret whose last attempt read another version."""
        found = (self._records.get(key) for key in self._readers((namespace, secret)))
        return [r for r in found if r is not None and not r.has_secret_version(secret, version)]

    def seen_while_running(self, key: Key, secret: str, version: str) -> None:
        self._seen_while_running.setdefault(key, {})[secret] = version

    def park_target(self, found: target.Seen, *, now: float) -> None:
        """A target event whose credential is not tracked (yet): on a start the targets may
        be listed before the credentials. Kept :data:`UNCLAIMED_SECONDS`, at most
        :data:`UNCLAIMED_MAX` (a summary of a few hundred bytes each, no data)."""
        key = (found.namespace, found.owner[0])
        self._unclaimed.pop(key, None)
        self._unclaimed[key] = (now, found)
        while self._unclaimed:
            oldest = next(iter(self._unclaimed))
            if len(self._unclaimed) <= UNCLAIMED_MAX and (
                self._unclaimed[oldest][0] > now - UNCLAIMED_SECONDS
            ):
                break
            del self._unclaimed[oldest]

    def claim_target(self, key: Key) -> target.Seen | None:
        """The target event parked for a credential now tracked, if any."""
        parked = self._unclaimed.pop(key, None)
        return parked[1] if parked else None

    def target_seen_while_running(self, key: Key, found: target.Seen) -> None:
        """A target event while the credential's attempt ran: the latest describes the
        Secret as it is now, so only that one is kept."""
        self._targets_while_running[key] = found

    def stale_after_run(self, key: Key) -> bool:
        """Must the credential run again now? When a client Secret version seen during the
        run is not the one the run read, or its target was changed by someone else after
        the run's write (the next attempt then reads the target first)."""
        versions = self._seen_while_running.pop(key, {})
        found = self._targets_while_running.pop(key, None)
        record = self._records.get(key)
        if record is None:
            return False
        stale = any(
            not record.has_secret_version(name, version) for name, version in versions.items()
        )
        if found is not None and (found.name, found.owner[1]) == (record.target_name, record.uid):
            verdict = judge(record, found)
            if verdict is Verdict.AGREES:
                record.accept(found)
            elif verdict is Verdict.CHANGED:
                record.target_uid = None
                stale = True
        return stale

    def _readers(self, ref: Key) -> Collection[Key]:
        keys = self._by_secret.get(ref)
        if keys is None:
            return ()
        return keys if isinstance(keys, set) else (keys,)

    def _index(self, record: Record) -> None:
        for name in record.secret_names:
            ref = (record.namespace, name)
            keys = self._by_secret.get(ref)
            if keys is None or keys == record.key:
                self._by_secret[ref] = record.key
            elif isinstance(keys, set):
                keys.add(record.key)
            else:
                self._by_secret[ref] = {keys, record.key}

    def _unindex(self, record: Record) -> None:
        for name in record.secret_names:
            ref = (record.namespace, name)
            keys = self._by_secret.get(ref)
            if keys == record.key:
                del self._by_secret[ref]
            elif isinstance(keys, set):
                keys.discard(record.key)
                if len(keys) == 1:
                    self._by_secret[ref] = keys.pop()
