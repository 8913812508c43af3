"""The target Secret: its one shape, whether tokensync owns it, what its annotations say.

Pure functions over plain dicts (the JSON the API server speaks). One place renders the
target, so every write has the same shape; ``writer`` sends it. What the watch of targets
needs of a Secret (:class:`Seen`: its owner, a digest of what tokensync wrote, its token's
times if it is whole) is taken here too, in the watch's thread (decision 0035).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
from collections.abc import Mapping
from typing import Any

from tokensync import failures, model

CREDENTIAL_LABEL = f"{model.GROUP}/credential"
ISSUED_AT_ANNOTATION = f"{model.GROUP}/issued-at"
REFRESH_AT_ANNOTATION = f"{model.GROUP}/refresh-at"
#: The server-side selector of the target watch: every Secret tokensync manages.
MANAGED_SELECTOR = f"{model.MANAGED_BY_LABEL}={model.MANAGED_BY_VALUE}"
#: What tokensync writes into a target, and so what a change to is repaired: the data keys
#: and the timing annotations (other keys, labels and annotations are the user's).
DATA_KEYS = ("access_token", "token_type", "expires_at", "authorization", "scope")
TIME_ANNOTATIONS = (ISSUED_AT_ANNOTATION, model.EXPIRES_AT_ANNOTATION, REFRESH_AT_ANNOTATION)
#: (issued_at, expires_at, refresh_at) of the token a target holds.
TokenTimes = tuple[datetime.datetime, datetime.datetime, datetime.datetime]
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


def token_times(secret: Mapping[str, Any]) -> TokenTimes | None:
    """(issued_at, expires_at, refresh_at) from a target Secret's annotations, if all set."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    issued = model.parse_time(annotations.get(ISSUED_AT_ANNOTATION))
    expires = model.parse_time(annotations.get(model.EXPIRES_AT_ANNOTATION))
    refresh = model.parse_time(annotations.get(REFRESH_AT_ANNOTATION))
    if issued is None or expires is None or refresh is None:
        return None
    return issued, expires, refresh


def whole_times(secret: Mapping[str, Any]) -> TokenTimes | None:
    """The token's times if the Secret is whole as tokensync writes it, else None.

    Whole: ``authorization`` is the scheme and ``access_token``, ``expires_at`` equals the
    expires-at annotation, and the three timing annotations are set. An ``access_token``
    edited by hand leaves ``authorization`` behind, and a timing annotation edited alone
    leaves ``expires_at`` or the others behind: such a Secret holds no token to adopt.
    """
    times = token_times(secret)
    if times is None:
        return None
    data = secret.get("data") or {}
    keys = ("access_token", "token_type", "expires_at", "authorization")
    token, token_type, expires, header = (_text(data.get(key)) for key in keys)
    if token is None or token_type is None or expires is None or header is None:
        return None
    if header != f"{_header_scheme(token_type)} {token}":
        return None
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    if expires != annotations.get(model.EXPIRES_AT_ANNOTATION):
        return None
    return times


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def digest(secret: Mapping[str, Any]) -> bytes:
    """A digest of what tokensync writes into a target (:data:`DATA_KEYS`, as base64, and
    :data:`TIME_ANNOTATIONS`): equal for a rendered body and the Secret it became."""
    data = secret.get("data") or {}
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    values = [data.get(key) for key in DATA_KEYS]
    values += [annotations.get(key) for key in TIME_ANNOTATIONS]
    hashed = hashlib.sha256()
    for value in values:
        if isinstance(value, str):
            encoded = value.encode()
            hashed.update(b"\x01" + len(encoded).to_bytes(4, "big") + encoded)
        else:
            hashed.update(b"\x00")
    return hashed.digest()[:16]


def owner(secret: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the ClientCredential that controls the Secret, from its
    ownerReferences; None when none does."""
    for ref in (secret.get("metadata") or {}).get("ownerReferences") or []:
        if (
            isinstance(ref, Mapping)
            and ref.get("kind") == model.KIND
            and str(ref.get("apiVersion", "")).startswith(f"{model.GROUP}/")
            and isinstance(ref.get("name"), str)
            and isinstance(ref.get("uid"), str)
        ):
            return ref["name"], ref["uid"]
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    """A target Secret as one watch event showed it: no data, only what is compared."""

    namespace: str
    name: str
    uid: str
    version: str
    #: The ClientCredential that owns it: (name, uid).
    owner: tuple[str, str]
    #: DELETED: deleted, or no longer labelled as managed (the watch is label-selected).
    deleted: bool
    digest: bytes
    #: Its token's (issued, expires, refresh), if the Secret is whole (:func:`whole_times`).
    times: TokenTimes | None


def seen(kind: str, secret: Mapping[str, Any]) -> Seen | None:
    """What the target watch keeps of one event (``kind``: ADDED, MODIFIED, DELETED, or
    LISTED); None for a Secret no ClientCredential owns."""
    found = owner(secret)
    if found is None:
        return None
    meta = secret.get("metadata") or {}
    return Seen(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        version=str(meta.get("resourceVersion") or ""),
        owner=found,
        deleted=kind == "DELETED",
        digest=digest(secret),
        times=whole_times(secret),
    )
