"""spec.grant (decision 0047): the parser's table, each grant's parameters, and each grant
against the real Authlib server (tests/support/tokenserver.py) over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from support import tokenserver
from support.grantkeys import KEY, KEY_PEM, SUBJECT_ISSUER, SUBJECT_KEY, public_jwks, subject_token
from support.tokenserver import TokenServer
from tokensync import clientauth, failures, grants, model, oauth, parsing, urlpolicy

M = model.AuthMethod
G = model.GrantType
URL = "https://login.example.com/oauth2/token"
SA = {"name": "billing", "audience": "https://sts.example.com"}
EXCHANGE = {"type": "token_exchange", "tokenExchange": {"subjectServiceAccountRef": SA}}
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def spec(**fields: Any) -> dict[str, Any]:
    return {"tokenURL": URL, "clientID": "reporting", **fields}


# -- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # Absent: client credentials, as before.
        ({"clientSecretRef": {"name": "c"}}, model.Grant()),
        ({"clientSecretRef": {"name": "c"}, "grant": {}}, model.Grant()),
        (
            {"grant": {"type": "jwt_bearer"}, "privateKeyRef": {"name": "k"}},
            model.Grant(type=G.JWT_BEARER),
        ),
        (
            {"grant": EXCHANGE},
            model.Grant(
                type=G.TOKEN_EXCHANGE,
                token_exchange=model.TokenExchange(
                    subject_service_account=model.ServiceAccountRef(**SA)
                ),
            ),
        ),
        (
            {
                "grant": {
                    "type": "token_exchange",
                    "tokenExchange": {
                        "subjectServiceAccountRef": SA,
                        "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token",
                        "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
                    },
                },
                "authMethod": "none",
            },
            model.Grant(
                type=G.TOKEN_EXCHANGE,
                token_exchange=model.TokenExchange(
                    subject_service_account=model.ServiceAccountRef(**SA),
                    subject_token_type="urn:ietf:params:oauth:token-type:id_token",
                    requested_token_type="urn:ietf:params:oauth:token-type:access_token",
                ),
            ),
        ),
        (
            {
                "grant": {"type": "custom", "grantTypeURI": "urn:example:grant"},
                "clientSecretRef": {"name": "c"},
            },
            model.Grant(type=G.CUSTOM, uri="urn:example:grant"),
        ),
    ],
)
def test_grants_parsed(fields: dict[str, Any], expected: model.Grant) -> None:
    assert parsing.parse_spec(spec(**fields), name="x").request.grant == expected


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"grant": {"type": "password"}}, "spec.grant.type", "must be one of"),
        ({"grant": "jwt_bearer"}, "spec.grant", "must be an object"),
        ({"grant": {"type": "jwt_bearer"}}, "spec.privateKeyRef", "signs the assertion"),
        (
            {"grant": {"type": "custom"}, "clientSecretRef": {"name": "c"}},
            "spec.grant.grantTypeURI",
            "required with type custom",
        ),
        (
            {"grant": {"grantTypeURI": "urn:x:y"}, "clientSecretRef": {"name": "c"}},
            "spec.grant.grantTypeURI",
            "and only then",
        ),
        (
            {
                "grant": {"type": "custom", "grantTypeURI": "not a uri"},
                "clientSecretRef": {"name": "c"},
            },
            "spec.grant.grantTypeURI",
            "absolute URI",
        ),
        (
            {
                "grant": {"type": "custom", "grantTypeURI": "refresh_token"},
                "clientSecretRef": {"name": "c"},
            },
            "spec.grant.grantTypeURI",
            "standard grant type",
        ),
        (
            {
                "grant": {"type": "custom", "grantTypeURI": model.JWT_BEARER_GRANT_TYPE},
                "clientSecretRef": {"name": "c"},
            },
            "spec.grant.grantTypeURI",
            "standard grant type",
        ),
        ({"grant": {"type": "token_exchange"}}, "spec.grant.tokenExchange", "required with type"),
        (
            {
                "grant": {"tokenExchange": {"subjectServiceAccountRef": SA}},
                "clientSecretRef": {"name": "c"},
            },
            "spec.grant.tokenExchange",
            "and only then",
        ),
        (
            {"grant": {"type": "token_exchange", "tokenExchange": {}}},
            "spec.grant.tokenExchange.subjectServiceAccountRef",
            "set exactly one of subjectServiceAccountRef and subjectTokenSecretRef",
        ),
        (
            {
                "grant": {
                    "type": "token_exchange",
                    "tokenExchange": {"subjectServiceAccountRef": SA, "subjectTokenType": "jwt"},
                }
            },
            "spec.grant.tokenExchange.subjectTokenType",
            "absolute URI",
        ),
        (
            {
                "grant": {
                    "type": "token_exchange",
                    "tokenExchange": {
                        "subjectServiceAccountRef": {"name": "Bad_Name", "audience": "a"}
                    },
                }
            },
            "spec.grant.tokenExchange.subjectServiceAccountRef.name",
            "not a valid ServiceAccount name",
        ),
        (
            {"authMethod": "none", "clientSecretRef": {"name": "c"}},
            "spec.authMethod",
            "none is only",
        ),
        (
            {"grant": EXCHANGE, "extraParams": {"subject_token": "x"}},
            "spec.extraParams",
            "grant type token_exchange sets it",
        ),
        (
            {
                "grant": {"type": "jwt_bearer"},
                "privateKeyRef": {"name": "k"},
                "extraParams": {"assertion": "x"},
            },
            "spec.extraParams",
            "grant type jwt_bearer sets it",
        ),
        # Client credentials still needs a proof of the client.
        ({"grant": {"type": "client_credentials"}}, "spec.clientSecretRef", "is required"),
        (
            {"grant": {"type": "custom", "grantTypeURI": "urn:x:y"}},
            "spec.clientSecretRef",
            "is required",
        ),
    ],
)
def test_bad_grants_refused(fields: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec(**fields), name="x")
    assert caught.value.field == field
    assert message in str(caught.value)


# -- each grant's parameters -----------------------------------------------------------------

EXCHANGE_GRANT = model.Grant(
    type=G.TOKEN_EXCHANGE,
    token_exchange=model.TokenExchange(
        subject_service_account=model.ServiceAccountRef("sa", "aud"),
        requested_token_type="urn:ietf:params:oauth:token-type:access_token",
    ),
)


@pytest.mark.parametrize(
    ("grant", "material", "expected"),
    [
        (model.Grant(), {}, [("grant_type", "client_credentials")]),
        (
            model.Grant(type=G.CUSTOM, uri="urn:example:grant"),
            {},
            [("grant_type", "urn:example:grant")],
        ),
        (
            EXCHANGE_GRANT,
            {"subject_token": "sa-token"},
            [
                ("grant_type", model.TOKEN_EXCHANGE_GRANT_TYPE),
                ("subject_token", "sa-token"),
                ("subject_token_type", model.TOKEN_TYPE_JWT),
                ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ],
        ),
    ],
)
def test_grant_parameters(
    grant: model.Grant, material: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    request = model.TokenRequest(token_url=URL, grant=grant)
    got = grants.parameters(request, model.ClientAuthMaterial("c", **material), now=NOW)
    assert got == expected


def test_jwt_bearer_assertion_claims() -> None:
    request = model.TokenRequest(token_url=URL, grant=model.Grant(type=G.JWT_BEARER))
    params = grants.parameters(
        request, model.ClientAuthMaterial("reporting", private_key=KEY_PEM), now=NOW
    )
    assert [k for k, _ in params] == ["grant_type", "assertion"]
    assert params[0] == ("grant_type", model.JWT_BEARER_GRANT_TYPE)
    claims = jwt.decode(
        params[1][1],
        KEY.public_key(),
        algorithms=["RS256"],
        audience=URL,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("reporting", "reporting", URL)


@pytest.mark.parametrize(
    ("grant", "material"),
    [(model.Grant(type=G.JWT_BEARER), {}), (EXCHANGE_GRANT, {})],
)
def test_missing_grant_proof_is_permanent(grant: model.Grant, material: dict[str, str]) -> None:
    request = model.TokenRequest(token_url=URL, grant=grant)
    with pytest.raises(failures.TokenError) as caught:
        grants.parameters(request, model.ClientAuthMaterial("c", **material), now=NOW)
    assert caught.value.permanent
    assert caught.value.reason is failures.Reason.CREDENTIALS_MISSING


@pytest.mark.parametrize(
    ("grant", "material", "expected"),
    [
        # Nothing else proves the client: none, for the grants that prove it themselves.
        (model.Grant(type=G.JWT_BEARER), {"private_key": KEY_PEM}, [M.NONE]),
        (EXCHANGE_GRANT, {}, [M.NONE]),
        (model.Grant(type=G.CUSTOM, uri="urn:x:y"), {}, []),
        (model.Grant(), {}, []),
        # A client secret is still used when there is one.
        (EXCHANGE_GRANT, {"client_secret": "s"}, [M.CLIENT_SECRET_BASIC, M.CLIENT_SECRET_POST]),
        (
            model.Grant(type=G.JWT_BEARER),
            {"private_key": KEY_PEM, "client_secret": "s"},
            [M.CLIENT_SECRET_BASIC, M.CLIENT_SECRET_POST],
        ),
        # With client credentials the private key is the client's proof, as before.
        (model.Grant(), {"private_key": KEY_PEM}, [M.PRIVATE_KEY_JWT]),
    ],
)
def test_auto_methods_per_grant(
    grant: model.Grant, material: dict[str, str], expected: list[model.AuthMethod]
) -> None:
    proof = grants.client_material(grant, model.ClientAuthMaterial("c", **material))
    got = clientauth.candidates(M.AUTO, proof, grant_proves_client=grant.proves_client)
    assert got == expected


# -- against the real server -----------------------------------------------------------------

LOOPBACK = urlpolicy.Allowance.parse(["127.0.0.0/8"])


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client(
            "bearer",
            jwks=public_jwks(),
            auth_methods=["private_key_jwt"],
            grant_types=[tokenserver.JWT_BEARER_GRANT],
        )
        running.add_client(
            "exchanger",
            auth_methods=["none"],
            grant_types=[tokenserver.TOKEN_EXCHANGE_GRANT],
            subject_issuer=(SUBJECT_ISSUER, lambda: public_jwks(SUBJECT_KEY, "sa")),
        )
        running.add_client("custom", "custom-secret", grant_types=[tokenserver.CUSTOM_GRANT_TYPE])
        running.add_client("plain", "plain-secret")
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as shared:
        yield shared


async def fetch(
    client: httpx.AsyncClient,
    server: TokenServer,
    material: model.ClientAuthMaterial,
    **fields: Any,
) -> oauth.responses.FetchResult:
    urlpolicy.check_token_url(server.url, allow_insecure_http=True, allowance=LOOPBACK)
    return await oauth.fetch_token(
        client,
        request=model.TokenRequest(token_url=server.url, **fields),
        credentials=material,
        default_lifetime=timedelta(hours=1),
        now=lambda: datetime.now(UTC),
        timeout=5.0,
    )


def issued_to(server: TokenServer, token: str) -> tokenserver.Issued:
    (found,) = [i for i in server.issued if i.access_token == token]
    return found


async def test_jwt_bearer_grant_against_authlib(
    server: TokenServer, client: httpx.AsyncClient
) -> None:
    result = await fetch(
        client,
        server,
        model.ClientAuthMaterial("bearer", private_key=KEY_PEM),
        grant=model.Grant(type=G.JWT_BEARER),
        scopes=("reports.read",),
    )
    assert result.auth_method is M.NONE
    issued = issued_to(server, result.token.access_token)
    assert issued.grant_type == tokenserver.JWT_BEARER_GRANT
    assert issued.grant_claims is not None
    assert issued.grant_claims["iss"] == "bearer"
    assert issued.scope == "reports.read"


async def test_jwt_bearer_with_an_unregistered_key_is_invalid_grant(
    server: TokenServer, client: httpx.AsyncClient
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(failures.TokenError) as caught:
        await fetch(
            client,
            server,
            model.ClientAuthMaterial("bearer", private_key=other.decode()),
            grant=model.Grant(type=G.JWT_BEARER),
        )
    assert caught.value.error_code == "invalid_grant"
    assert other.decode() not in str(caught.value)


async def test_token_exchange_against_a_grant_on_authlib(
    server: TokenServer, client: httpx.AsyncClient
) -> None:
    subject = subject_token()
    result = await fetch(
        client,
        server,
        model.ClientAuthMaterial("exchanger", subject_token=subject),
        grant=EXCHANGE_GRANT,
        audience="https://reports.example.com",
        resources=("https://reports.example.com/api",),
    )
    assert result.auth_method is M.NONE
    issued = issued_to(server, result.token.access_token)
    assert issued.grant_type == tokenserver.TOKEN_EXCHANGE_GRANT
    assert issued.grant_claims is not None
    assert issued.grant_claims["sub"] == "system:serviceaccount:apps:billing"
    assert issued.grant_params == {
        "audience": ["https://reports.example.com"],
        "resource": ["https://reports.example.com/api"],
        "subject_token_type": [model.TOKEN_TYPE_JWT],
        "requested_token_type": ["urn:ietf:params:oauth:token-type:access_token"],
    }


async def test_token_exchange_with_a_foreign_subject_token_is_invalid_grant(
    server: TokenServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(failures.TokenError) as caught:
        await fetch(
            client,
            server,
            model.ClientAuthMaterial("exchanger", subject_token=subject_token("https://evil")),
            grant=EXCHANGE_GRANT,
        )
    assert caught.value.error_code == "invalid_grant"


async def test_custom_grant_against_authlib(server: TokenServer, client: httpx.AsyncClient) -> None:
    result = await fetch(
        client,
        server,
        model.ClientAuthMaterial("custom", client_secret="custom-secret"),
        grant=model.Grant(type=G.CUSTOM, uri=tokenserver.CUSTOM_GRANT_TYPE),
        extra_params=(("account", "reporting"),),
    )
    issued = issued_to(server, result.token.access_token)
    assert (issued.grant_type, issued.grant_params) == (
        tokenserver.CUSTOM_GRANT_TYPE,
        {"account": ["reporting"]},
    )


async def test_a_grant_the_client_may_not_use_is_refused(
    server: TokenServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(failures.TokenError) as caught:
        await fetch(
            client,
            server,
            model.ClientAuthMaterial("plain", client_secret="plain-secret"),
            grant=model.Grant(type=G.CUSTOM, uri=tokenserver.CUSTOM_GRANT_TYPE),
            extra_params=(("account", "reporting"),),
        )
    assert caught.value.error_code == "unauthorized_client"


def test_refresh_url_has_the_token_urls_admission_rules() -> None:
    """spec.grant.refreshURL is a destination like spec.tokenURL (decision 0048)."""
    from test_crd_matches_model import spec_schema  # noqa: PLC0415 -- a sibling test module

    schema = spec_schema()["properties"]
    refresh = schema["grant"]["properties"]["refreshURL"]
    assert refresh["x-kubernetes-validations"] == schema["tokenURL"]["x-kubernetes-validations"]
    assert refresh["maxLength"] == schema["tokenURL"]["maxLength"]


@pytest.mark.parametrize(
    ("exchange", "expected"),
    [
        (
            {"subjectTokenSecretRef": {"name": "source-token"}},
            model.SecretKeyRef("source-token", "access_token"),
        ),
        (
            {"subjectTokenSecretRef": {"name": "source-token", "key": "token"}},
            model.SecretKeyRef("source-token", "token"),
        ),
    ],
)
def test_chained_subject_parsed(exchange: dict[str, Any], expected: model.SecretKeyRef) -> None:
    grant = {"type": "token_exchange", "tokenExchange": exchange}
    parsed = parsing.parse_spec(spec(grant=grant), name="x").request.grant.token_exchange
    assert parsed is not None
    assert (parsed.subject_secret, parsed.subject_service_account) == (expected, None)


def test_subject_is_one_of_a_service_account_and_a_secret() -> None:
    both = {"subjectServiceAccountRef": SA, "subjectTokenSecretRef": {"name": "s"}}
    with pytest.raises(model.SpecError, match="exactly one"):
        parsing.parse_spec(spec(grant={"type": "token_exchange", "tokenExchange": both}), name="x")


def test_allowed_destinations_written_on_the_target() -> None:
    from tokensync import target  # noqa: PLC0415 -- only this test renders a target

    parsed = parsing.parse_spec(
        spec(
            clientSecretRef={"name": "c"},
            target={"allowedDestinations": ["https://sts.example.com", "sts.example.org"]},
        ),
        name="source",
    )
    rendered = target.render_target(
        namespace="ns",
        credential="source",
        credential_uid="uid",
        target=parsed.target,
        access_token="at",
        token_type="Bearer",
        expires_at=NOW,
        scope=None,
    )
    annotations = rendered["metadata"]["annotations"]
    assert annotations[model.ALLOWED_DESTINATIONS_ANNOTATION] == (
        "https://sts.example.com sts.example.org"
    )
