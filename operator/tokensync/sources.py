"""Where the client's proof comes from: opted-in Secrets and ServiceAccounts.

Pure functions over plain dicts (the JSON the API server speaks). Every Secret a credential
reads its proof or a request header's value from (client secret, private key, client
certificate, an API key) must carry the opt-in label, and a ServiceAccount must list the
audience before tokensync mints its tokens: a tenant cannot make the operator use what its
owner did not offer.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from tokensync import failures, headers, model


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
    client_secret_key: str | None = None
    fallback_secrets: tuple[tuple[str, str], ...] = ()
    if spec.secret_ref is not None:
        ref = spec.secret_ref
        data = _opted_in(sources.get(ref.name), name=ref.name, not_found="ClientSecretNotFound")
        client_secret = _key(
            data, ref.client_secret_key, name=ref.name, reason="ClientSecretKeyMissing"
        )
        client_secret_key = ref.client_secret_key
        fallback_secrets = _fallbacks(data, ref, primary=client_secret)
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
        client_secret_key=client_secret_key,
        fallback_secrets=fallback_secrets,
    )


def _fallbacks(
    data: Mapping[str, Any], ref: model.SecretRef, *, primary: str
) -> tuple[tuple[str, str], ...]:
    """The fallback keys present in the Secret, each value once (decision 0045).

    An absent key is skipped rather than refused: the old secret's key is removed from the
    Secret when the rollover is over, and the spec may still list it for a while.
    """
    found: list[tuple[str, str]] = []
    values = {primary}
    for key in ref.fallback_client_secret_keys[: model.MAX_CLIENT_SECRET_KEYS - 1]:
        value = _decode(data, key)
        if value and value not in values:
            values.add(value)
            found.append((key, value))
    return tuple(found)


def header_values(
    sources: Mapping[str, Mapping[str, Any] | None], *, spec: model.ClientCredentialSpec
) -> tuple[tuple[str, str], ...]:
    """spec.requestHeaders with their values, those from Secrets read from ``sources``
    (decision 0044). A Secret must have opted in, as for the client's proof; a message
    names the Secret and key, never the value."""
    found: list[tuple[str, str]] = []
    for header in spec.request_headers:
        if header.secret is None:
            assert header.value is not None  # parse_spec: exactly one of value and valueFrom
            found.append((header.name, header.value))
            continue
        ref = header.secret
        data = _opted_in(
            sources.get(ref.name), name=ref.name, not_found="RequestHeaderSecretNotFound"
        )
        value = _key(data, ref.key, name=ref.name, reason="RequestHeaderValueInvalid")
        if len(value) > headers.MAX_SECRET_VALUE or not headers.valid_value(value):
            raise SourceProblem(
                "RequestHeaderValueInvalid",
                f"Secret {ref.name!r} key {ref.key!r} (header {header.name}) is not one line "
                f"of visible ASCII of at most {headers.MAX_SECRET_VALUE} characters",
            )
        found.append((header.name, value))
    return tuple(found)


def service_account_allows(account: Mapping[str, Any], audience: str) -> bool:
    """Has the ServiceAccount opted in to tokens for ``audience`` (its annotation)?"""
    annotations = (account.get("metadata") or {}).get("annotations") or {}
    listed = annotations.get(model.TOKEN_AUDIENCES_ANNOTATION)
    if not isinstance(listed, str):
        return False
    return audience in listed.replace(",", " ").split()
