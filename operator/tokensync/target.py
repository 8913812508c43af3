"""The target Secret: its one shape, whether tokensync owns it, what its annotations say.

Pure functions over plain dicts (the JSON the API server speaks). One place renders the
target, so every write has the same shape; ``writer`` sends it.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Any

from tokensync import failures, model

CREDENTIAL_LABEL = f"{model.GROUP}/credential"
ISSUED_AT_ANNOTATION = f"{model.GROUP}/issued-at"
REFRESH_AT_ANNOTATION = f"{model.GROUP}/refresh-at"
# A label value holds at most 63 characters; a resource name may have 253.
_MAX_LABEL_VALUE = 63


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def conflict(name: str) -> failures.Failure:
    """A Secret of the target name that tokensync does not manage for this credential."""
    return failures.Failure(
        failures.Reason.TARGET_CONFLICT,
        f"Secret {name!r} exists and is not managed by this ClientCredential; "
        "delete it or choose another spec.target.name",
        kind=failures.Kind.PERMANENT,
    )


def owner_reference(*, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{model.GROUP}/{model.VERSION}",
        "kind": model.KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def render_target(
    *,
    namespace: str,
    credential: str,
    credential_uid: str,
    target: model.TargetSpec,
    access_token: str,
    token_type: str,
    expires_at: datetime.datetime,
    scope: str | None,
    issued_at: datetime.datetime | None = None,
    refresh_at: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The complete target Secret. Written in one request, so never torn.

    Its annotations also carry when the token was issued and is due for refresh, so an
    operator stopped between this write and the status write can resume from the Secret.
    """
    expiry = model.format_time(expires_at)
    labels = dict(target.labels)
    labels[model.MANAGED_BY_LABEL] = model.MANAGED_BY_VALUE
    # A convenience for `kubectl get secrets -l`; the ownerReference is what links the two.
    # A longer name would make the API server refuse the whole Secret, so it is left out.
    if len(credential) <= _MAX_LABEL_VALUE:
        labels[CREDENTIAL_LABEL] = credential
    annotations = dict(target.annotations)
    annotations[model.EXPIRES_AT_ANNOTATION] = expiry
    if issued_at is not None:
        annotations[ISSUED_AT_ANNOTATION] = model.format_time(issued_at)
    if refresh_at is not None:
        annotations[REFRESH_AT_ANNOTATION] = model.format_time(refresh_at)
    # None deletes the key in a merge patch: a scope from an earlier token must not linger.
    data: dict[str, str | None] = {
        "access_token": _b64(access_token),
        "token_type": _b64(token_type),
        "expires_at": _b64(expiry),
        "authorization": _b64(f"{_header_scheme(token_type)} {access_token}"),
        "scope": _b64(scope) if scope else None,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": target.name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(name=credential, uid=credential_uid)],
        },
        "data": data,
    }


def _header_scheme(token_type: str) -> str:
    # RFC 6750: the scheme is "Bearer"; servers send "bearer" as often as not.
    return "Bearer" if token_type.lower() == "bearer" else token_type


def for_create(rendered: Mapping[str, Any]) -> dict[str, Any]:
    """A create body: like the patch, without the null markers for removed keys."""
    body = dict(rendered)
    body["data"] = {k: v for k, v in rendered["data"].items() if v is not None}
    return body


def owned_by(secret: Mapping[str, Any], *, credential_uid: str) -> bool:
    """True when ``secret`` is managed by tokensync for the credential with that uid."""
    meta = secret.get("metadata") or {}
    if (meta.get("labels") or {}).get(model.MANAGED_BY_LABEL) != model.MANAGED_BY_VALUE:
        return False
    return any(ref.get("uid") == credential_uid for ref in meta.get("ownerReferences") or [])


def token_times(
    secret: Mapping[str, Any],
) -> tuple[datetime.datetime, datetime.datetime, datetime.datetime] | None:
    """(issued_at, expires_at, refresh_at) from a target Secret's annotations, if all set."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    issued = model.parse_time(annotations.get(ISSUED_AT_ANNOTATION))
    expires = model.parse_time(annotations.get(model.EXPIRES_AT_ANNOTATION))
    refresh = model.parse_time(annotations.get(REFRESH_AT_ANNOTATION))
    if issued is None or expires is None or refresh is None:
        return None
    return issued, expires, refresh
