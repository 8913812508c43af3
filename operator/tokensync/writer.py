"""Reading and writing the target Secret, refusing Secrets tokensync does not own.

Every write is one request with the whole Secret (never torn), and conditional on the uid
tokensync last saw (decision 0007): a Secret deleted and recreated by someone else under
the same name is never overwritten. Raises ``failures.Failure``: a Secret the API server
refuses as invalid is permanent (TargetInvalid), other refusals are transient.
"""

from __future__ import annotations

from typing import Any

from tokensync import failures, kube, target, tracking


class TargetWriter:
    def __init__(self, *, kube_api: kube.Kube) -> None:
        self._kube = kube_api

    async def check(self, record: tracking.Record, name: str) -> dict[str, Any] | None:
        """Refuse a foreign target before asking the provider for a token we cannot store.

        Returns the target Secret when it was read (the first attempt after a start).
        """
        if record.target_uid and record.target_name == name:
            return None
        try:
            existing = await self._kube.read_secret(record.namespace, name)
        except failures.ApiError as exc:
            raise failures.from_api_error(exc) from None
        if existing is None:
            return None
        if not target.owned_by(existing, credential_uid=record.uid):
            raise target.conflict(name)
        record.target_name, record.target_uid = name, existing["metadata"]["uid"]
        return existing

    async def write(self, record: tracking.Record, body: dict[str, Any]) -> None:
        """Write the whole target Secret in one request."""
        try:
            await self._write(record, body)
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

    async def _write(self, record: tracking.Record, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if record.target_uid and record.target_name == name:
            try:
                await self._patch(record, body, uid=record.target_uid)
            except failures.ApiError as exc:
                # 404: deleted. 422 "metadata.uid: field is immutable": deleted and replaced
                # by another Secret of the same name. Either way, start over and check.
                if exc.status not in (404, 409, 422):
                    raise
                record.target_uid = None
            else:
                return
        try:
            created = await self._kube.create_secret(record.namespace, target.for_create(body))
        except failures.ApiError as exc:
            if exc.status != 409:
                raise
        else:
            record.target_name, record.target_uid = name, created["metadata"]["uid"]
            return
        existing = await self._kube.read_secret(record.namespace, name)
        if existing is None or not target.owned_by(existing, credential_uid=record.uid):
            raise target.conflict(name)
        await self._patch(record, body, uid=existing["metadata"]["uid"])

    async def _patch(self, record: tracking.Record, body: dict[str, Any], *, uid: str) -> None:
        # The uid makes the patch conditional: if the Secret was deleted and someone else
        # created one with the same name, the API server refuses to change its uid (422).
        patch = {**body, "metadata": {**body["metadata"], "uid": uid}}
        await self._kube.patch_secret(record.namespace, body["metadata"]["name"], patch)
        record.target_name, record.target_uid = body["metadata"]["name"], uid
