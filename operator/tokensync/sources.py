"""Where the client's proof comes from: opted-in Secrets and ServiceAccounts.

Pure functions over plain dicts (the JSON the API server speaks). Every Secret a credential
reads its proof from (client secret, private key, client certificate) must carry the
opt-in label, and a ServiceAccount must list the audience before tokensync mints its
tokens: a tenant cannot make the operator use what its owner did not offer.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from tokensync import failures, model


class SourceProblem(failures.Failure):
    """A Secret holding the client's proof cannot be used: retried slowly, and at once when
    the Secret changes."""

    def __init__(self, reason: failures.Reason | str, message: str) -> None:
        super().__init__(reason, message, kind=failures.Kind.PERMANENT)


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
        raise SourceProblem(not_found, f"Secret {name!r} not found")
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(model.CLIENT_SECRET_LABEL) != "true":
        raise SourceProblem(
            "ClientSecretNotOptedIn",
            f"Secret {name!r} lacks the label {model.CLIENT_SECRET_LABEL}=true that "
            "allows its use as OAuth client credentials",
        )
    data: Mapping[str, Any] = secret.get("data") or {}
    return data


def _key(data: Mapping[str, Any], key: str, *, name: str, reason: str) -> str:
    value = _decode(data, key)
    if not value:
        raise SourceProblem(reason, f"Secret {name!r} has no non-empty key {key!r}")
    return value


def auth_material(
    sources: Mapping[str, Mapping[str, Any] | None],
    *,
    spec: model.ClientCredentialSpec,
    external_assertion: str | None = None,
) -> model.ClientAuthMaterial:
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
            raise SourceProblem(
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
        raise SourceProblem("ClientSecretKeyMissing", "spec.clientID is not set")
    return model.ClientAuthMaterial(
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
