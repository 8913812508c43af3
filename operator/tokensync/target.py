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
import hmac
from collections.abc import Mapping
from typing import Any

from tokensync import model, ownership, possession, shape

CREDENTIAL_LABEL = f"{model.GROUP}/credential"
ISSUED_AT_ANNOTATION = f"{model.GROUP}/issued-at"
REFRESH_AT_ANNOTATION = f"{model.GROUP}/refresh-at"
#: ``possession.token_id`` of the token the Secret holds: what the refresh endpoint checks
#: a proof against, read back after a restart (decision 0043). A hash of the proof, so
#: reading it does not give the proof.
TOKEN_ID_ANNOTATION = f"{model.GROUP}/token-id"
#: The server-side selector of the target watch: every Secret tokensync manages.
MANAGED_SELECTOR = ownership.MANAGED_SELECTOR
#: What tokensync writes into a target, and so what a change to is repaired: the data keys
#: and the timing annotations (other keys, labels and annotations are the user's). These
#: are the default shape's keys; a target of another shape lists its own (decision 0040).
DATA_KEYS = shape.DEFAULT_KEYS
#: The keys tokensync wrote into a target, and whether they are listed (:func:`written`).
Written = shape.Written
TIME_ANNOTATIONS = (ISSUED_AT_ANNOTATION, model.EXPIRES_AT_ANNOTATION, REFRESH_AT_ANNOTATION)
SHAPE_ANNOTATIONS = (shape.DATA_KEYS_ANNOTATION, shape.DATA_DIGEST_ANNOTATION)
#: (issued_at, expires_at, refresh_at) of the token a target holds.
TokenTimes = tuple[datetime.datetime, datetime.datetime, datetime.datetime]
# A label value holds at most 63 characters; a resource name may have 253.
_MAX_LABEL_VALUE = 63


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# Which Secret a credential may write, and the link between the two, are ownership's.
conflict = ownership.conflict
owner_reference = ownership.owner_reference


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
    token_id: bytes | None = None,
    previous: shape.Written | None = None,
    refresh_token: str | None = None,
) -> dict[str, Any]:
    """The complete target Secret. Written in one request, so never torn.

    Its annotations also carry when the token was issued and is due for refresh, so an
    operator stopped between this write and the status write can resume from the Secret.
    ``previous``: what tokensync wrote there before (:func:`written`), whose keys that this
    shape does not write are removed. Raises a TemplateFailed failure for a template that
    does not render (``shape.render``).
    """
    expiry = model.format_time(expires_at)
    labels = dict(target.labels)
    labels.update(ownership.labels(target))
    # A convenience for `kubectl get secrets -l`; the ownerReference or the link annotation
    # is what links the two.
    # A longer name would make the API server refuse the whole Secret, so it is left out.
    if len(credential) <= _MAX_LABEL_VALUE:
        labels[CREDENTIAL_LABEL] = credential
    annotations: dict[str, str | None] = dict(target.annotations)
    annotations[model.EXPIRES_AT_ANNOTATION] = expiry
    # Chaining (decision 0047): where another credential may send this token. None removes
    # a list the spec no longer has, but not from a Secret that something else owns (Merge).
    allowed = " ".join(target.allowed_destinations)
    if allowed or target.creation_policy is not model.CreationPolicy.MERGE:
        annotations[model.ALLOWED_DESTINATIONS_ANNOTATION] = allowed or None
    # On every target, so that Retain and Merge targets, which have no ownerReference, and
    # a target whose deletionPolicy changes, stay linked (decision 0041).
    annotations[ownership.LINK_ANNOTATION] = ownership.link_value(
        name=credential, uid=credential_uid
    )
    if issued_at is not None:
        annotations[ISSUED_AT_ANNOTATION] = model.format_time(issued_at)
    if refresh_at is not None:
        annotations[REFRESH_AT_ANNOTATION] = model.format_due(refresh_at)
    if token_id is not None:
        annotations[TOKEN_ID_ANNOTATION] = possession.format_id(token_id)
    token = shape.Token(
        access_token=access_token,
        token_type=token_type,
        expires_at=expires_at,
        scope=scope,
        issued_at=issued_at,
        refresh_token=refresh_token,
    )
    # None deletes the key in a merge patch: a scope from an earlier token must not linger.
    data = {k: None if v is None else _b64(v) for k, v in shape.render(target, token).items()}
    _mark_shape(target, data, annotations, previous)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": target.type.value,
        "metadata": {
            "name": target.name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": ownership.owner_references(
                target, name=credential, uid=credential_uid
            ),
        },
        "data": data,
    }


def _mark_shape(
    target: model.TargetSpec,
    data: dict[str, str | None],
    annotations: dict[str, str | None],
    previous: shape.Written | None,
) -> None:
    """Remove what an earlier shape wrote and this one does not; on a target of any shape
    but the default, list its keys and their digest, so that the Secret alone says whether
    it is whole (:func:`whole_times`) and what to remove next time."""
    if previous is not None:
        for key in sorted(previous.keys - data.keys()):
            data[key] = None
    if shape.is_default(target):
        if previous is not None and previous.listed:
            annotations[shape.DATA_KEYS_ANNOTATION] = None
            annotations[shape.DATA_DIGEST_ANNOTATION] = None
        return
    keys = tuple(sorted(key for key, value in data.items() if value is not None))
    annotations[shape.DATA_KEYS_ANNOTATION] = ",".join(keys)
    annotations[shape.DATA_DIGEST_ANNOTATION] = shape.data_digest(
        data, keys, tuple(annotations.get(key) for key in TIME_ANNOTATIONS)
    )


def for_create(rendered: Mapping[str, Any]) -> dict[str, Any]:
    """A create body: like the patch, without the null markers for removed keys and
    annotations."""
    body = dict(rendered)
    body["data"] = {k: v for k, v in rendered["data"].items() if v is not None}
    meta = rendered["metadata"]
    body["metadata"] = dict(meta)
    if "ownerReferences" in meta:
        body["metadata"]["ownerReferences"] = ownership.for_create(meta["ownerReferences"])
    if None in (meta.get("annotations") or {}).values():
        body["metadata"]["annotations"] = {
            k: v for k, v in meta["annotations"].items() if v is not None
        }
    return body


def written(secret: Mapping[str, Any]) -> shape.Written:
    """The keys tokensync wrote into a target Secret (or a rendered body): those its
    annotation lists, else the default shape's."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    listed = shape.listed_keys(annotations)
    if listed is None:
        return shape.DEFAULT_WRITTEN
    return shape.Written(frozenset(listed), listed=True)


def owned_by(secret: Mapping[str, Any], *, credential_uid: str) -> bool:
    """True when ``secret`` is managed by tokensync for the credential with that uid."""
    return ownership.linked_to(secret, uid=credential_uid)


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
    A target of another shape (decision 0040) is whole when its listed keys and timing
    annotations have the digest its data-digest annotation says.
    """
    times = token_times(secret)
    if times is None:
        return None
    data = secret.get("data") or {}
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    listed = shape.listed_keys(annotations)
    if listed is not None:
        return times if _listed_whole(data, annotations, listed) else None
    keys = ("access_token", "token_type", "expires_at", "authorization")
    token, token_type, expires, header = (_text(data.get(key)) for key in keys)
    if token is None or token_type is None or expires is None or header is None:
        return None
    if header != shape.header_value(token_type, token):
        return None
    if expires != annotations.get(model.EXPIRES_AT_ANNOTATION):
        return None
    return times


def _listed_whole(
    data: Mapping[str, Any], annotations: Mapping[str, Any], listed: tuple[str, ...]
) -> bool:
    """Every listed key is there, and they and the times have the digest written."""
    if not listed or not all(isinstance(data.get(key), str) for key in listed):
        return False
    wanted = shape.data_digest(data, listed, tuple(annotations.get(k) for k in TIME_ANNOTATIONS))
    found = annotations.get(shape.DATA_DIGEST_ANNOTATION)
    return isinstance(found, str) and hmac.compare_digest(wanted, found)


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def digest(secret: Mapping[str, Any]) -> bytes:
    """A digest of what tokensync writes into a target (:data:`DATA_KEYS`, or the keys a
    target of another shape lists, as base64, and :data:`TIME_ANNOTATIONS`): equal for a
    rendered body and the Secret it became."""
    data = secret.get("data") or {}
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    listed = shape.listed_keys(annotations)
    values = [data.get(key) for key in (DATA_KEYS if listed is None else listed)]
    values += [annotations.get(key) for key in TIME_ANNOTATIONS]
    if listed is not None:
        values += [annotations.get(key) for key in SHAPE_ANNOTATIONS]
    hashed = hashlib.sha256()
    for value in values:
        if isinstance(value, str):
            encoded = value.encode()
            hashed.update(b"\x01" + len(encoded).to_bytes(4, "big") + encoded)
        else:
            hashed.update(b"\x00")
    return hashed.digest()[:16]


def token_id(secret: Mapping[str, Any]) -> bytes | None:
    """The id of the token a target Secret holds, from its annotation; None without one
    (written before the refresh endpoint existed, or edited)."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return possession.parse_id(annotations.get(TOKEN_ID_ANNOTATION))


def owner(secret: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the ClientCredential the Secret is written for: its ownerReference,
    else (Retain, Merge) the link annotation; None when neither says."""
    return ownership.link(secret)


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
    #: The token id its annotation holds (:func:`token_id`).
    token_id: bytes | None = None
    #: The keys tokensync wrote there (:func:`written`): removed when the shape changes.
    written: shape.Written = shape.DEFAULT_WRITTEN


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
        token_id=token_id(secret),
        written=written(secret),
    )
