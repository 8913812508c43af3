"""The two Secrets a credential touches: reading the client Secret, rendering the target.

Pure functions over plain dicts (the JSON the API server speaks): what a target Secret
looks like, whether tokensync owns an existing one, and which client credentials a client
Secret holds. One place renders the target, so every write has the same shape.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping
from typing import Any

from tokensync import model

CREDENTIAL_LABEL = f"{model.GROUP}/credential"
ISSUED_AT_ANNOTATION = f"{model.GROUP}/issued-at"
REFRESH_AT_ANNOTATION = f"{model.GROUP}/refresh-at"
# A label value holds at most 63 characters; a resource name may have 253.
_MAX_LABEL_VALUE = 63


class ClientSecretProblem(Exception):
    """The client Secret cannot be used; ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _decode(data: Mapping[str, Any], key: str) -> str | None:
    raw = data.get(key)
    if not isinstance(raw, str):
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        return None


def decoded(secret: Mapping[str, Any], key: str) -> str | None:
    """The text value of ``key`` in a Secret's ``data``, or None."""
    return _decode(secret.get("data") or {}, key)


def _opted_in(secret: Mapping[str, Any] | None, *, name: str, not_found: str) -> Mapping[str, Any]:
    """The Secret's data, if it exists and carries the opt-in label."""
    if secret is None:
        raise ClientSecretProblem(not_found, f"Secret {name!r} not found")
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(model.CLIENT_SECRET_LABEL) != "true":
        raise ClientSecretProblem(
            "ClientSecretNotOptedIn",
            f"Secret {name!r} lacks the label {model.CLIENT_SECRET_LABEL}=true that "
            "allows its use as OAuth client credentials",
        )
    data: Mapping[str, Any] = secret.get("data") or {}
    return data


def _key(data: Mapping[str, Any], key: str, *, name: str, reason: str) -> str:
    value = _decode(data, key)
    if not value:
        raise ClientSecretProblem(reason, f"Secret {name!r} has no non-empty key {key!r}")
    return value


def client_credentials(
    sources: Mapping[str, Mapping[str, Any] | None],
    *,
    spec: model.CredentialSpec,
    external_assertion: str | None = None,
) -> model.ClientCredentials:
    """Collect the client's credentials from its Secrets (``sources``: by name).

    Every Secret used must have opted in with the label, whatever it holds: a private key
    or client certificate can be abused as much as a client secret.
    """
    client_secret = client_id = private_key = certificate = tls_cert = tls_key = None
    if spec.secret_ref is not None:
        ref = spec.secret_ref
        data = _opted_in(sources.get(ref.name), name=ref.name, not_found="ClientSecretNotFound")
        client_secret = _key(
            data, ref.client_secret_key, name=ref.name, reason="ClientSecretKeyMissing"
        )
        client_id = spec.client_id or _decode(data, ref.client_id_key)
        if not client_id:
            raise ClientSecretProblem(
                "ClientSecretKeyMissing",
                f"Secret {ref.name!r} has no non-empty key {ref.client_id_key!r} "
                "and spec.clientID is not set",
            )
    if spec.private_key_ref is not None:
        key_ref = spec.private_key_ref
        data = _opted_in(
            sources.get(key_ref.name), name=key_ref.name, not_found="PrivateKeyNotFound"
        )
        private_key = _key(data, key_ref.key, name=key_ref.name, reason="PrivateKeyMissing")
        if key_ref.certificate_key:
            certificate = _key(
                data, key_ref.certificate_key, name=key_ref.name, reason="PrivateKeyMissing"
            )
    if spec.client_certificate_ref is not None:
        name = spec.client_certificate_ref
        data = _opted_in(sources.get(name), name=name, not_found="ClientCertificateNotFound")
        tls_cert = _key(data, model.TLS_CERT_KEY, name=name, reason="ClientCertificateMissing")
        tls_key = _key(data, model.TLS_KEY_KEY, name=name, reason="ClientCertificateMissing")
    client_id = spec.client_id or client_id
    if not client_id:  # parse_spec refuses this; a second line for direct callers
        raise ClientSecretProblem("ClientSecretKeyMissing", "spec.clientID is not set")
    return model.ClientCredentials(
        client_id=client_id,
        client_secret=client_secret,
        private_key=private_key,
        certificate=certificate,
        tls_certificate=tls_cert,
        tls_key=tls_key,
        external_assertion=external_assertion,
    )


def service_account_allows(account: Mapping[str, Any], audience: str) -> bool:
    """Has the ServiceAccount opted in to tokens for ``audience`` (its annotation)?"""
    annotations = (account.get("metadata") or {}).get("annotations") or {}
    listed = annotations.get(model.TOKEN_AUDIENCES_ANNOTATION)
    if not isinstance(listed, str):
        return False
    return audience in listed.replace(",", " ").split()


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
