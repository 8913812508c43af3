"""Reading and writing the target Secret, refusing Secrets tokensync does not own.

Every write is one request with the whole Secret (never torn), conditional on the uid
tokensync last saw (decision 0007): a Secret deleted and recreated by someone else under
the same name is never overwritten. It is also conditional on the resourceVersion this
process last wrote or read (decision 0036): when the Secret changed since (another operator
process, an edit), it is read again, and a token issued in the same second or later that
tokensync could have written wins (``provenance.supersedes``): the write is dropped and the
attempt adopts that token, so a Secret's issue time never goes backwards. Which Secret may
be written at all is ``ownership.decide``'s (decision 0041): one tokensync created or was
handed over; a Merge target is never created; a Secret of another type than the spec asks
for is refused (TargetTypeMismatch): a type is immutable and tokensync deletes no Secret,
so the user deletes it. Raises ``failures.Failure``: a Secret the API server refuses as
invalid is permanent (TargetInvalid), other refusals are transient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tokensync import failures, kube, model, ownership, target, tracking

#: Reads and writes against a target that changes at each of them, before the attempt
#: fails (transient, retried with backoff).
CONFLICT_ATTEMPTS = 4
#: Does the token a Secret holds (its whole times, or None) win over the one being written?
Winner = Callable[[target.TokenTimes | None], bool]


def _never(times: target.TokenTimes | None) -> bool:
    return False


def _older_than_known(record: tracking.Record, body: Mapping[str, Any]) -> bool:
    """Was the token being written issued before the one this process last knew to be in
    the target (``state.issued_at``: written, read or adopted), to the second?"""
    times, known = target.token_times(body), record.state.issued_at
    if times is None or known is None or record.target_name != body["metadata"]["name"]:
        return False
    return times[0] < known.replace(microsecond=0)


class TargetListings:
    """Which watches of target Secrets (decision 0035) have delivered their first listing.

    Once every watch that covers a namespace has, a managed Secret there that no event named
    is almost surely absent, and a new credential's first attempt creates its target without
    reading it first (decision 0052). A Secret the watches cannot see (one that is not
    tokensync's, or one created while a watch was down) meets the create's 409, which reads
    it and judges it as before.
    """

    def __init__(self) -> None:
        #: Watches per scope (a namespace, or None for all) yet to list, and the scopes seen.
        self._pending: dict[str | None, int] = {}

    def expect(self, namespace: str | None) -> None:
        self._pending[namespace] = self._pending.get(namespace, 0) + 1

    def listed(self, namespace: str | None) -> None:
        self._pending[namespace] = max(0, self._pending.get(namespace, 0) - 1)

    def complete(self, namespace: str) -> bool:
        scopes = [scope for scope in self._pending if scope is None or scope == namespace]
        return bool(scopes) and all(self._pending[scope] == 0 for scope in scopes)


class TargetWriter:
    def __init__(self, *, kube_api: kube.Kube, listings: TargetListings | None = None) -> None:
        self._kube = kube_api
        self._listings = listings or TargetListings()

    async def check(
        self, record: tracking.Record, policy: model.TargetSpec
    ) -> dict[str, Any] | None:
        """Refuse a target the credential may not write before asking the provider for a
        token it cannot store: foreign, not handed over, a missing Merge target, of another
        type than spec.target asks for.

        Returns the target Secret when it was read and tokensync wrote it: the first
        attempt after a start, the first after the target watch saw it changed (decision
        0035), and the first after a change of the spec (its policies or type may have
        changed). A Secret just handed over is read but not returned: a token found in it
        was not written by tokensync and is not adopted.
        """
        name = policy.name
        changed = record.generation != record.state.handled_generation
        if record.target_uid and record.target_name == name and not changed:
            return None
        if self._unseen(record, policy):
            existing = None  # the create's 409 reads it, should it be there after all
        else:
            try:
                existing = await self._kube.read_secret(record.namespace, name)
            except failures.ApiError as exc:
                raise failures.from_api_error(exc) from None
        take = self._decide(record, policy, existing, ownership.wanted_type(policy))
        if existing is None:
            return None
        record.read_target(existing)
        if take is ownership.Take.WRITE:
            return existing
        # Just handed over: tokensync wrote none of its keys, so a key of the default shape
        # that is there (a CronJob's access_token) is not one to remove for a template.
        record.target_written = None
        return None

    def _unseen(self, record: tracking.Record, policy: model.TargetSpec) -> bool:
        """A credential that never had a target, never attempted, whose namespace the target
        watches have listed with no Secret of it: its first attempt need not read a Secret
        that is not there (decision 0052). Only under Owner: a Merge target must exist and
        an Adopt target may be one handed over, which the watches do not see."""
        return (
            policy.creation_policy is model.CreationPolicy.OWNER
            and record.target_name is None
            and record.state.handled_generation is None
            and record.state.failed_attempts == 0
            and self._listings.complete(record.namespace)
        )

    @staticmethod
    def _decide(
        record: tracking.Record,
        policy: model.TargetSpec,
        existing: dict[str, Any] | None,
        wanted_type: str,
    ) -> ownership.Take:
        take = ownership.decide(
            existing,
            name=policy.name,
            policy=policy,
            credential=record.name,
            uid=record.uid,
            wanted_type=wanted_type,
        )
        if isinstance(take, failures.Failure):
            raise take
        return take

    async def write(
        self,
        record: tracking.Record,
        body: dict[str, Any],
        *,
        policy: model.TargetSpec,
        wins: Winner = _never,
    ) -> target.TokenTimes | None:
        """Write the whole target Secret in one request. None when written; when the Secret
        changed since this process last saw it and holds a token that ``wins``, nothing is
        written and that token's times are returned."""
        try:
            return await self._write(record, body, wins, policy)
        except failures.ApiError as exc:
            if exc.status == 422:
                # From a create, or a patch with the uid just read (a replaced Secret's 422
                # never gets here): the Secret itself is invalid, and a new token will not
                # change that. Only the reason is kept: the body may echo the Secret.
                raise failures.Failure(
                    failures.Reason.TARGET_INVALID,
                    f"the API server refused the target Secret {body['metadata']['name']!r} "
                    f"as invalid ({exc}): spec.target's labels and annotations may exceed "
                    "256 KiB, or the token the 1 MiB a Secret may hold",
                    kind=failures.Kind.PERMANENT,
                ) from None
            raise failures.from_api_error(exc, reason=failures.Reason.TARGET_WRITE_FAILED) from None

    async def _write(
        self, record: tracking.Record, body: dict[str, Any], wins: Winner, policy: model.TargetSpec
    ) -> target.TokenTimes | None:
        name = body["metadata"]["name"]
        ours, before = target.digest(body), record.target_digest
        if _older_than_known(record, body):
            # This process last saw a later token there (adopted from a writer whose clock
            # runs ahead): compare with what is there now rather than write blindly.
            return await self._resolve(record, body, wins, policy, before=before)
        if record.target_uid and record.target_name == name:
            record.wrote(ours)  # its watch event may come before the response
            try:
                await self._patch(
                    record, body, uid=record.target_uid, version=record.target_version
                )
            except failures.ApiError as exc:
                # 404: deleted. 422 "metadata.uid: field is immutable": deleted and replaced
                # by another Secret of the same name: start over with a create. 409: changed
                # since this process wrote or read it: read it and compare.
                # A 422 may also be a type the spec changed (immutable): the create's 409
                # leads to the read, which refuses it (TargetTypeMismatch).
                if exc.status == 409:
                    return await self._resolve(record, body, wins, policy, before=before)
                if exc.status not in (404, 422):
                    raise
                record.target_uid = None
            else:
                return None
        # A Merge target is never created: the read says whether it is there.
        if policy.creation_policy is not model.CreationPolicy.MERGE and await self._create(
            record, body
        ):
            return None
        return await self._resolve(record, body, wins, policy, before=before)

    async def _create(self, record: tracking.Record, body: dict[str, Any]) -> bool:
        """Create the Secret; False if one of that name exists (409)."""
        record.wrote(target.digest(body))
        try:
            created = await self._kube.create_secret(record.namespace, target.for_create(body))
        except failures.ApiError as exc:
            if exc.status != 409:
                raise
            return False
        self._wrote(record, body["metadata"]["name"], created)
        return True

    async def _resolve(
        self,
        record: tracking.Record,
        body: dict[str, Any],
        wins: Winner,
        policy: model.TargetSpec,
        *,
        before: bytes | None,
    ) -> target.TokenTimes | None:
        """The Secret exists and is not as this process last saw it: read it, and write over
        it only if its token does not win; each write conditional on the version just read."""
        name = body["metadata"]["name"]
        ours = target.digest(body)
        wanted_type = str(body.get("type") or ownership.DEFAULT_TYPE)
        for _ in range(CONFLICT_ATTEMPTS):
            existing = await self._kube.read_secret(record.namespace, name)
            take = self._decide(record, policy, existing, wanted_type)
            if existing is None:
                if await self._create(record, body):
                    return None
                continue  # created by someone else meanwhile
            found = target.whole_times(existing) if take is ownership.Take.WRITE else None
            if wins(found):
                record.read_target(existing)
                record.target_previous = before
                return found
            uid, version = existing["metadata"]["uid"], existing["metadata"].get("resourceVersion")
            # What is superseded here may still come by on the watch: not a change then.
            record.target_previous, record.target_digest = target.digest(existing), ours
            try:
                await self._patch(record, body, uid=uid, version=version)
            except failures.ApiError as exc:
                if exc.status not in (404, 409):
                    raise
            else:
                return None
        raise failures.Failure(
            failures.Reason.TARGET_WRITE_FAILED,
            f"the target Secret {name!r} changed at each of {CONFLICT_ATTEMPTS} writes",
            kind=failures.Kind.TRANSIENT,
        )

    async def _patch(
        self, record: tracking.Record, body: dict[str, Any], *, uid: str, version: str | None
    ) -> None:
        # The uid makes the patch conditional: if the Secret was deleted and someone else
        # created one with the same name, the API server refuses to change its uid (422).
        # The resourceVersion makes it conditional on nobody having written it since (409).
        meta: dict[str, Any] = {**body["metadata"], "uid": uid}
        if version:
            meta["resourceVersion"] = version
        patched = await self._kube.patch_secret(
            record.namespace, body["metadata"]["name"], {**body, "metadata": meta}
        )
        self._wrote(record, body["metadata"]["name"], patched, uid=uid)

    @staticmethod
    def _wrote(
        record: tracking.Record, name: str, response: Mapping[str, Any] | None, uid: str = ""
    ) -> None:
        meta = (response or {}).get("metadata") or {}
        record.target_name = name
        record.target_uid = meta.get("uid") or uid
        record.target_version = meta.get("resourceVersion")
