"""The target Secret's shape, ownership, and reading the client Secret without leaking it."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest

from tokensync import model, ownership, parsing, sources, target

EXPIRES = datetime.datetime(2026, 11, 22, 23, 15, tzinfo=datetime.UTC)
UID = "0b5e0a4c-7f1e-4c38-9d7a-2f3c1d2e4f50"
TARGET = model.TargetSpec(
    name="billing-api-token",
    labels=(("team", "payments"),),
    annotations=(("reloader.stakater.com/match", "true"),),
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(value: str) -> str:
    return base64.b64decode(value).decode()


def render(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "namespace": "payments",
        "credential": "billing-api",
        "credential_uid": UID,
        "target": TARGET,
        "access_token": "eyJ.token.sig",
        "token_type": "Bearer",
        "expires_at": EXPIRES,
        "scope": "payments.read payments.write",
    }
    arguments.update(overrides)
    return target.render_target(**arguments)


# -- render_target --------------------------------------------------------------------------


def test_render_target_is_a_complete_owned_secret() -> None:
    rendered = render()
    assert rendered == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "billing-api-token",
            "namespace": "payments",
            "labels": {
                "team": "payments",
                model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE,
                target.CREDENTIAL_LABEL: "billing-api",
            },
            "annotations": {
                "reloader.stakater.com/match": "true",
                model.EXPIRES_AT_ANNOTATION: "2026-11-22T23:15:00Z",
                # No chaining allowed: a list from an earlier spec is removed (decision 0047).
                model.ALLOWED_DESTINATIONS_ANNOTATION: None,
                ownership.LINK_ANNOTATION: f"billing-api/{UID}",
            },
            "ownerReferences": [
                {
                    "apiVersion": "tokensync.dev/v1alpha1",
                    "kind": "ClientCredential",
                    "name": "billing-api",
                    "uid": UID,
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "data": {
            "access_token": b64("eyJ.token.sig"),
            "token_type": b64("Bearer"),
            "expires_at": b64("2026-11-22T23:15:00Z"),
            "authorization": b64("Bearer eyJ.token.sig"),
            "scope": b64("payments.read payments.write"),
        },
    }
    # Only the null marker of the allowed destinations to drop.
    created = target.for_create(rendered)
    assert model.ALLOWED_DESTINATIONS_ANNOTATION not in created["metadata"]["annotations"]
    annotations = dict(rendered["metadata"]["annotations"])
    del annotations[model.ALLOWED_DESTINATIONS_ANNOTATION]
    assert created == {**rendered, "metadata": {**rendered["metadata"], "annotations": annotations}}


@pytest.mark.parametrize(
    ("token_type", "header"),
    [
        ("Bearer", "Bearer eyJ.token.sig"),
        ("bearer", "Bearer eyJ.token.sig"),  # RFC 6750 scheme, whatever the server wrote
        ("BEARER", "Bearer eyJ.token.sig"),
        ("DPoP", "DPoP eyJ.token.sig"),
    ],
)
def test_authorization_header(token_type: str, header: str) -> None:
    data = render(token_type=token_type)["data"]
    assert unb64(data["authorization"]) == header
    assert unb64(data["token_type"]) == token_type  # as the server sent it


def test_expiry_is_written_in_utc() -> None:
    cet = datetime.timezone(datetime.timedelta(hours=1))
    rendered = render(expires_at=datetime.datetime(2026, 11, 23, 0, 15, 30, 999, tzinfo=cet))
    assert unb64(rendered["data"]["expires_at"]) == "2026-11-22T23:15:30Z"
    assert rendered["metadata"]["annotations"][model.EXPIRES_AT_ANNOTATION] == (
        "2026-11-22T23:15:30Z"
    )


@pytest.mark.parametrize("scope", [None, ""])
def test_a_missing_scope_removes_the_key(scope: str | None) -> None:
    rendered = render(scope=scope)
    # In the merge patch, null deletes a scope left by an earlier token ...
    assert "scope" in rendered["data"]
    assert rendered["data"]["scope"] is None
    # ... and a create body has no nulls at all.
    created = target.for_create(rendered)
    assert "scope" not in created["data"]
    assert None not in created["data"].values()
    assert set(created["data"]) == {"access_token", "token_type", "expires_at", "authorization"}
    assert rendered["data"]["scope"] is None  # for_create leaves the patch body alone
    annotations = dict(rendered["metadata"]["annotations"])
    assert annotations.pop(model.ALLOWED_DESTINATIONS_ANNOTATION) is None
    assert created["metadata"] == {**rendered["metadata"], "annotations": annotations}


def test_tokensync_labels_and_annotations_win() -> None:
    # parse_spec refuses these keys; render_target does not rely on it.
    wanted = model.TargetSpec(
        name="t",
        labels=((model.MANAGED_BY_LABEL, "someone-else"), (target.CREDENTIAL_LABEL, "other")),
        annotations=((model.EXPIRES_AT_ANNOTATION, "never"),),
    )
    meta = render(target=wanted)["metadata"]
    assert meta["labels"][model.MANAGED_BY_LABEL] == model.MANAGED_BY_VALUE
    assert meta["labels"][target.CREDENTIAL_LABEL] == "billing-api"
    assert meta["annotations"][model.EXPIRES_AT_ANNOTATION] == "2026-11-22T23:15:00Z"


def test_the_credential_label_is_left_out_when_the_name_is_too_long_for_a_label() -> None:
    fits, too_long = "a" * 63, "a" * 64  # label values hold 63 characters, names 253
    assert render(credential=fits)["metadata"]["labels"][target.CREDENTIAL_LABEL] == fits
    rendered = render(credential=too_long)
    assert target.CREDENTIAL_LABEL not in rendered["metadata"]["labels"]
    assert rendered["metadata"]["ownerReferences"][0]["name"] == too_long
    assert target.owned_by(rendered, credential_uid=UID)


# -- owned_by -------------------------------------------------------------------------------


def secret_with(
    *, labels: dict[str, str] | None = None, owners: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "billing-api-token"}
    if labels is not None:
        meta["labels"] = labels
    if owners is not None:
        meta["ownerReferences"] = owners
    return {"metadata": meta}


MANAGED = {model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE}
OWNER = target.owner_reference(name="billing-api", uid=UID)
OTHER_OWNER = target.owner_reference(name="billing-api", uid="another-uid")


@pytest.mark.parametrize(
    ("secret", "owned"),
    [
        pytest.param(render(), True, id="rendered"),
        pytest.param(secret_with(labels=MANAGED, owners=[OWNER]), True, id="label-and-owner"),
        pytest.param(
            secret_with(labels=MANAGED, owners=[OTHER_OWNER, OWNER]), True, id="one-of-owners"
        ),
        pytest.param(secret_with(owners=[OWNER]), False, id="no-labels"),
        pytest.param(
            secret_with(labels={model.MANAGED_BY_LABEL: "helm"}, owners=[OWNER]),
            False,
            id="managed-by-someone-else",
        ),
        pytest.param(secret_with(labels=MANAGED), False, id="no-owner"),
        pytest.param(secret_with(labels=MANAGED, owners=[]), False, id="empty-owners"),
        pytest.param(
            # same name, recreated: a different uid is a different ClientCredential
            secret_with(labels=MANAGED, owners=[OTHER_OWNER]),
            False,
            id="owner-with-other-uid",
        ),
        pytest.param({}, False, id="no-metadata"),
        pytest.param({"metadata": None}, False, id="null-metadata"),
    ],
)
def test_owned_by(secret: dict[str, Any], owned: bool) -> None:
    assert target.owned_by(secret, credential_uid=UID) is owned


# -- auth_material -------------------------------------------------------------------------

CLIENT_SECRET = "s3cr3t-Client-Value"
SPEC = parsing.parse_spec(
    {"tokenURL": "https://login.example.com/t", "clientSecretRef": {"name": "oauth-client"}},
    name="billing-api",
)


def client_secret(
    data: dict[str, Any] | None, *, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta = {
        "name": "oauth-client",
        "labels": {model.CLIENT_SECRET_LABEL: "true"} if labels is None else labels,
    }
    return {"metadata": meta, "data": data}


def spec_with(**changes: Any) -> model.ClientCredentialSpec:
    raw: dict[str, Any] = {
        "tokenURL": "https://login.example.com/t",
        "clientSecretRef": {"name": "oauth-client"},
    }
    raw.update(changes)
    return parsing.parse_spec(raw, name="billing-api")


def auth_material(
    secret: dict[str, Any] | None, *, spec: model.ClientCredentialSpec
) -> model.ClientAuthMaterial:
    """The client Secret ``oauth-client`` read as ``secret`` (None: not found)."""
    return sources.auth_material({"oauth-client": secret}, spec=spec)


GOOD = {"client_id": b64("billing-service"), "client_secret": b64(CLIENT_SECRET)}


def test_client_credentials() -> None:
    creds = auth_material(client_secret(GOOD), spec=SPEC)
    assert creds == model.ClientAuthMaterial(
        "billing-service", CLIENT_SECRET, client_secret_key="client_secret"
    )
    assert CLIENT_SECRET not in repr(creds)


def test_values_are_stripped_of_surrounding_whitespace() -> None:
    # `echo secret | kubectl create secret --from-file` leaves a newline behind.
    data = {"client_id": b64(" billing-service\n"), "client_secret": b64(CLIENT_SECRET + "\n")}
    creds = auth_material(client_secret(data), spec=SPEC)
    assert (creds.client_id, creds.client_secret) == ("billing-service", CLIENT_SECRET)


def test_custom_keys() -> None:
    spec = spec_with(
        clientSecretRef={"name": "oauth-client", "clientIDKey": "id", "clientSecretKey": "pw"}
    )
    data = {"id": b64("svc"), "pw": b64(CLIENT_SECRET), "client_id": b64("ignored")}
    creds = auth_material(client_secret(data), spec=spec)
    assert (creds.client_id, creds.client_secret) == ("svc", CLIENT_SECRET)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(GOOD, id="spec-wins-over-secret"),
        pytest.param({"client_secret": b64(CLIENT_SECRET)}, id="secret-has-no-id"),
    ],
)
def test_client_id_from_the_spec(data: dict[str, str]) -> None:
    creds = auth_material(client_secret(data), spec=spec_with(clientID="from-spec"))
    assert (creds.client_id, creds.client_secret) == ("from-spec", CLIENT_SECRET)


PROBLEMS = [
    # (id, client Secret, spec, reason, fragment of the message)
    ("not-found", None, SPEC, "ClientSecretNotFound", "'oauth-client' not found"),
    (
        "no-labels",
        client_secret(GOOD, labels={}),
        SPEC,
        "ClientSecretNotOptedIn",
        f"{model.CLIENT_SECRET_LABEL}=true",
    ),
    (
        "label-false",
        client_secret(GOOD, labels={model.CLIENT_SECRET_LABEL: "false"}),
        SPEC,
        "ClientSecretNotOptedIn",
        "lacks the label",
    ),
    (
        "label-True",
        client_secret(GOOD, labels={model.CLIENT_SECRET_LABEL: "True"}),
        SPEC,
        "ClientSecretNotOptedIn",
        "lacks the label",
    ),
    (
        "secret-key-missing",
        client_secret({"client_id": b64("billing-service")}),
        SPEC,
        "ClientSecretKeyMissing",
        "no non-empty key 'client_secret'",
    ),
    ("no-data", client_secret(None), SPEC, "ClientSecretKeyMissing", "'client_secret'"),
    (
        "secret-empty",
        client_secret({**GOOD, "client_secret": ""}),
        SPEC,
        "ClientSecretKeyMissing",
        "'client_secret'",
    ),
    (
        "secret-only-whitespace",
        client_secret({**GOOD, "client_secret": b64(" \n")}),
        SPEC,
        "ClientSecretKeyMissing",
        "'client_secret'",
    ),
    (
        "id-key-missing",
        client_secret({"client_secret": b64(CLIENT_SECRET)}),
        SPEC,
        "ClientSecretKeyMissing",
        "no non-empty key 'client_id' and spec.clientID is not set",
    ),
    (
        "custom-id-key-missing",
        client_secret(GOOD),
        spec_with(clientSecretRef={"name": "oauth-client", "clientIDKey": "id"}),
        "ClientSecretKeyMissing",
        "'id'",
    ),
    (
        "bad-base64",
        client_secret({**GOOD, "client_secret": CLIENT_SECRET + "!"}),
        SPEC,
        "ClientSecretKeyMissing",
        "'client_secret'",
    ),
    (
        "not-utf8",
        client_secret({**GOOD, "client_secret": base64.b64encode(b"\xff\xfe").decode()}),
        SPEC,
        "ClientSecretKeyMissing",
        "'client_secret'",
    ),
    (
        "value-not-a-string",
        client_secret({**GOOD, "client_secret": 42}),
        SPEC,
        "ClientSecretKeyMissing",
        "'client_secret'",
    ),
]


@pytest.mark.parametrize(
    ("secret", "spec", "reason", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in PROBLEMS],
)
def test_client_secret_problems(
    secret: dict[str, Any] | None, spec: model.ClientCredentialSpec, reason: str, fragment: str
) -> None:
    with pytest.raises(sources.SourceProblem) as caught:
        auth_material(secret, spec=spec)
    assert caught.value.reason == reason
    assert fragment in str(caught.value)
    # Secrets stay secret: neither the value nor its encoding reaches status or events.
    text = " ".join([str(caught.value), repr(caught.value), *map(str, caught.value.args)])
    for leaked in ("s3cr3t", CLIENT_SECRET, b64(CLIENT_SECRET), "billing-service"):
        assert leaked not in text


# -- several Secrets: private keys, client certificates ----------------------------------------


def pem_block(label: str, body: str) -> str:
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"


# Only their shape matters here: reading Secrets does not parse keys.
KEY_PEM = pem_block("PRIVATE KEY", "MC4CAQAwBQYDK2VwBCIEIKeyMaterialForTests0123456789ab")
CERT_PEM = pem_block("CERTIFICATE", "MIIBCertificateMaterialForTests0123456789")
TLS_KEY_PEM = pem_block("EC PRIVATE KEY", "MHcCAQEEITlsKeyMaterialForTests0123456789")
OPTED_IN = {model.CLIENT_SECRET_LABEL: "true"}


def named_secret(
    name: str, data: dict[str, Any] | None, *, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": OPTED_IN if labels is None else labels},
        "data": data,
    }


def keyless_spec(**fields: Any) -> model.ClientCredentialSpec:
    raw: dict[str, Any] = {
        "tokenURL": "https://login.example.com/t",
        "clientID": "payments-service",
    }
    raw.update(fields)
    return parsing.parse_spec(raw, name="billing-api")


KEY_SPEC = keyless_spec(privateKeyRef={"name": "signing-key"})
CERT_SPEC = keyless_spec(clientCertificateRef={"name": "client-tls"})
KEY_SECRET = named_secret("signing-key", {"tls.key": b64(KEY_PEM)})
TLS_SECRET = named_secret("client-tls", {"tls.crt": b64(CERT_PEM), "tls.key": b64(TLS_KEY_PEM)})


def test_private_key_from_its_secret() -> None:
    creds = sources.auth_material({"signing-key": KEY_SECRET}, spec=KEY_SPEC)
    assert creds == model.ClientAuthMaterial(client_id="payments-service", private_key=KEY_PEM)
    assert KEY_PEM not in repr(creds)
    assert "KeyMaterial" not in repr(creds)


def test_private_key_with_custom_keys_and_its_certificate() -> None:
    spec = keyless_spec(
        privateKeyRef={"name": "signing-key", "key": "key.jwk", "certificateKey": "cert.pem"}
    )
    data = {"key.jwk": b64('{"kty":"OKP"}\n'), "cert.pem": b64(CERT_PEM), "tls.key": b64("x")}
    creds = sources.auth_material({"signing-key": named_secret("signing-key", data)}, spec=spec)
    assert (creds.private_key, creds.certificate) == ('{"kty":"OKP"}', CERT_PEM)
    assert creds.tls_certificate is None


def test_client_certificate_from_a_tls_secret() -> None:
    creds = sources.auth_material({"client-tls": TLS_SECRET}, spec=CERT_SPEC)
    assert (creds.tls_certificate, creds.tls_key) == (CERT_PEM, TLS_KEY_PEM)
    assert (creds.private_key, creds.client_secret, creds.certificate) == (None, None, None)
    assert "TlsKeyMaterial" not in repr(creds)
    assert "CertificateMaterial" not in repr(creds)


def test_several_secrets_at_once() -> None:
    spec = keyless_spec(
        clientSecretRef={"name": "oauth-client"},
        privateKeyRef={"name": "signing-key", "certificateKey": "tls.crt"},
        clientCertificateRef={"name": "client-tls"},
    )
    key_secret = named_secret("signing-key", {"tls.key": b64(KEY_PEM), "tls.crt": b64(CERT_PEM)})
    found = {
        "oauth-client": client_secret(GOOD),
        "signing-key": key_secret,
        "client-tls": TLS_SECRET,
    }
    creds = sources.auth_material(found, spec=spec, external_assertion="sa-token")
    assert creds == model.ClientAuthMaterial(
        client_id="payments-service",  # spec.clientID wins over the Secret's
        client_secret=CLIENT_SECRET,
        client_secret_key="client_secret",
        private_key=KEY_PEM,
        certificate=CERT_PEM,
        tls_certificate=CERT_PEM,
        tls_key=TLS_KEY_PEM,
        external_assertion="sa-token",
    )
    assert "sa-token" not in repr(creds)


def test_one_secret_holding_the_client_secret_and_the_key() -> None:
    spec = spec_with(privateKeyRef={"name": "oauth-client", "key": "private.pem"})
    data = {**GOOD, "private.pem": b64(KEY_PEM)}
    creds = auth_material(client_secret(data), spec=spec)
    assert (creds.client_id, creds.client_secret, creds.private_key) == (
        "billing-service",
        CLIENT_SECRET,
        KEY_PEM,
    )


def test_workload_identity_reads_no_secret() -> None:
    spec = keyless_spec(serviceAccountRef={"name": "payments", "audience": "api://x"})
    creds = sources.auth_material({}, spec=spec, external_assertion="eyJ.sa.token")
    assert creds == model.ClientAuthMaterial(
        client_id="payments-service", external_assertion="eyJ.sa.token"
    )


MULTI_SPEC = keyless_spec(
    clientSecretRef={"name": "oauth-client"},
    privateKeyRef={"name": "signing-key"},
    clientCertificateRef={"name": "client-tls"},
)
ALL_SOURCES: dict[str, dict[str, Any] | None] = {
    "oauth-client": client_secret(GOOD),
    "signing-key": KEY_SECRET,
    "client-tls": TLS_SECRET,
}
UNLABELLED = {"app": "payments"}

MATERIAL_PROBLEMS = [
    # (id, spec, Secrets that differ from ALL_SOURCES, reason, fragment of the message)
    (
        "key-not-found",
        KEY_SPEC,
        {"signing-key": None},
        "PrivateKeyNotFound",
        "'signing-key' not found",
    ),
    (
        "cert-not-found",
        CERT_SPEC,
        {"client-tls": None},
        "ClientCertificateNotFound",
        "'client-tls' not found",
    ),
    (
        "key-unlabelled",
        KEY_SPEC,
        {"signing-key": named_secret("signing-key", {"tls.key": b64(KEY_PEM)}, labels=UNLABELLED)},
        "ClientSecretNotOptedIn",
        "'signing-key' lacks the label",
    ),
    (
        "key-label-false",
        KEY_SPEC,
        {
            "signing-key": named_secret(
                "signing-key",
                {"tls.key": b64(KEY_PEM)},
                labels={model.CLIENT_SECRET_LABEL: "false"},
            )
        },
        "ClientSecretNotOptedIn",
        "lacks the label",
    ),
    (
        "cert-unlabelled",
        CERT_SPEC,
        {"client-tls": {**TLS_SECRET, "metadata": {"name": "client-tls"}}},
        "ClientSecretNotOptedIn",
        "'client-tls' lacks the label",
    ),
    (
        "key-missing",
        KEY_SPEC,
        {"signing-key": named_secret("signing-key", {"private.pem": b64(KEY_PEM)})},
        "PrivateKeyMissing",
        "no non-empty key 'tls.key'",
    ),
    (
        "key-empty",
        KEY_SPEC,
        {"signing-key": named_secret("signing-key", {"tls.key": b64(" \n")})},
        "PrivateKeyMissing",
        "'tls.key'",
    ),
    (
        "key-not-base64",
        KEY_SPEC,
        {"signing-key": named_secret("signing-key", {"tls.key": KEY_PEM})},
        "PrivateKeyMissing",
        "'tls.key'",
    ),
    (
        "key-no-data",
        KEY_SPEC,
        {"signing-key": named_secret("signing-key", None)},
        "PrivateKeyMissing",
        "'tls.key'",
    ),
    (
        "key-cert-missing",
        keyless_spec(privateKeyRef={"name": "signing-key", "certificateKey": "tls.crt"}),
        {},
        "PrivateKeyMissing",
        "'tls.crt'",
    ),
    (
        "tls-crt-missing",
        CERT_SPEC,
        {"client-tls": named_secret("client-tls", {"tls.key": b64(TLS_KEY_PEM)})},
        "ClientCertificateMissing",
        "'tls.crt'",
    ),
    (
        "tls-key-missing",
        CERT_SPEC,
        {"client-tls": named_secret("client-tls", {"tls.crt": b64(CERT_PEM)})},
        "ClientCertificateMissing",
        "'tls.key'",
    ),
    # With several Secrets, each must be there and opted in, not just the first.
    (
        "multi-client-secret-missing",
        MULTI_SPEC,
        {"oauth-client": None},
        "ClientSecretNotFound",
        "'oauth-client'",
    ),
    ("multi-key-missing", MULTI_SPEC, {"signing-key": None}, "PrivateKeyNotFound", "'signing-key'"),
    (
        "multi-cert-missing",
        MULTI_SPEC,
        {"client-tls": None},
        "ClientCertificateNotFound",
        "'client-tls'",
    ),
    (
        "multi-cert-unlabelled",
        MULTI_SPEC,
        {"client-tls": named_secret("client-tls", TLS_SECRET["data"], labels={})},
        "ClientSecretNotOptedIn",
        "'client-tls'",
    ),
]


@pytest.mark.parametrize(
    ("spec", "changes", "reason", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in MATERIAL_PROBLEMS],
)
def test_material_problems(
    spec: model.ClientCredentialSpec,
    changes: dict[str, dict[str, Any] | None],
    reason: str,
    fragment: str,
) -> None:
    found = {**ALL_SOURCES, **changes}
    with pytest.raises(sources.SourceProblem) as caught:
        sources.auth_material(found, spec=spec)
    assert caught.value.reason == reason
    assert fragment in str(caught.value)
    text = " ".join([str(caught.value), repr(caught.value), *map(str, caught.value.args)])
    for leaked in ("KeyMaterial", "CertificateMaterial", b64(KEY_PEM), CLIENT_SECRET):
        assert leaked not in text


def test_a_secret_absent_from_the_sources_is_not_found() -> None:
    with pytest.raises(sources.SourceProblem) as caught:
        sources.auth_material({"unrelated": KEY_SECRET}, spec=KEY_SPEC)
    assert caught.value.reason == "PrivateKeyNotFound"


# -- service_account_allows ----------------------------------------------------------------------


def account(annotations: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "payments", "namespace": "apps"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("listed", "audience", "allowed"),
    [
        ("api://AzureADTokenExchange", "api://AzureADTokenExchange", True),
        ("sts.amazonaws.com,api://AzureADTokenExchange", "api://AzureADTokenExchange", True),
        ("sts.amazonaws.com, api://AzureADTokenExchange", "sts.amazonaws.com", True),
        ("sts.amazonaws.com api://AzureADTokenExchange", "api://AzureADTokenExchange", True),
        ("  sts.amazonaws.com ,,\n api://x  ", "api://x", True),
        ("sts.amazonaws.com", "api://AzureADTokenExchange", False),
        # Whole entries only: no prefix, suffix or substring matches.
        ("api://AzureADTokenExchange", "api://AzureAD", False),
        ("api://AzureADTokenExchange-evil", "api://AzureADTokenExchange", False),
        ("sts.amazonaws.com", "amazonaws.com", False),
        ("sts.amazonaws.com", "STS.AMAZONAWS.COM", False),
        ("", "sts.amazonaws.com", False),
        (" , ", "sts.amazonaws.com", False),
    ],
)
def test_service_account_allows(listed: str, audience: str, *, allowed: bool) -> None:
    annotations = {model.TOKEN_AUDIENCES_ANNOTATION: listed}
    assert sources.service_account_allows(account(annotations), audience) is allowed


@pytest.mark.parametrize(
    "sa",
    [
        pytest.param(account(None), id="no-annotations"),
        pytest.param(account({}), id="empty-annotations"),
        pytest.param(account({"other/annotation": "sts.amazonaws.com"}), id="other-annotation"),
        pytest.param(account({model.TOKEN_AUDIENCES_ANNOTATION: None}), id="null"),
        pytest.param(account({model.TOKEN_AUDIENCES_ANNOTATION: ["sts.amazonaws.com"]}), id="list"),
        pytest.param({"metadata": None}, id="null-metadata"),
        pytest.param({}, id="no-metadata"),
    ],
)
def test_service_account_without_the_annotation_allows_nothing(sa: dict[str, Any]) -> None:
    assert sources.service_account_allows(sa, "sts.amazonaws.com") is False


def test_the_audiences_annotation_name() -> None:
    assert model.TOKEN_AUDIENCES_ANNOTATION == "tokensync.dev/token-audiences"
