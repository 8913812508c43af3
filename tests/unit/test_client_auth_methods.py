"""Client authentication without shared secrets: which methods are tried, and what is sent.

``clientauth.candidates`` is a pure table. Requests are captured with httpx's MockTransport
(what we send is the subject here; real servers are exercised elsewhere), and every
assertion in them is verified with PyJWT against the key's public half or the shared secret.
"""

from __future__ import annotations

import datetime
import json
import urllib.parse
from collections.abc import AsyncIterator, Collection

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from tokensync import assertion, clientauth, failures, model, oauth

M = model.AuthMethod
URL = "https://login.example.com/oauth2/token"
H = datetime.timedelta(hours=1)
CLIENT_ID = "payments-service"
SECRET = "client-secret-" + "s" * 40  # long enough for HS256
EXTERNAL = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


PRIVATE_KEY = pem(RSA_KEY)


def creds(
    *,
    secret: bool = False,
    key: bool = False,
    tls: bool = False,
    external: bool = False,
) -> model.ClientAuthMaterial:
    return model.ClientAuthMaterial(
        client_id=CLIENT_ID,
        client_secret=SECRET if secret else None,
        private_key=PRIVATE_KEY if key else None,
        tls_certificate="-----BEGIN CERTIFICATE-----..." if tls else None,
        tls_key="-----BEGIN PRIVATE KEY-----..." if tls else None,
        external_assertion=EXTERNAL if external else None,
    )


# -- clientauth.candidates --------------------------------------------------------------------

ALL = {"secret": True, "key": True, "tls": True, "external": True}
TLS_BOTH = ["tls_client_auth", "self_signed_tls_client_auth"]
SECRET_ALL = ["client_secret_basic", "client_secret_post", "client_secret_jwt"]

AUTO_TABLE: list[tuple[str, dict[str, bool], Collection[str] | None, list[M]]] = [
    # (id, material, token_endpoint_auth_methods_supported, expected)
    ("secret", {"secret": True}, None, [M.CLIENT_SECRET_BASIC, M.CLIENT_SECRET_POST]),
    ("key", {"key": True}, None, [M.PRIVATE_KEY_JWT]),
    ("tls", {"tls": True}, None, [M.TLS_CLIENT_AUTH]),
    ("external", {"external": True}, None, [M.WORKLOAD_IDENTITY]),
    ("nothing", {}, None, []),
    (
        "everything-no-list",
        ALL,
        None,
        [
            M.WORKLOAD_IDENTITY,
            M.PRIVATE_KEY_JWT,
            M.TLS_CLIENT_AUTH,
            M.CLIENT_SECRET_BASIC,
            M.CLIENT_SECRET_POST,
        ],
    ),
    (
        "everything-all-listed",
        ALL,
        ["private_key_jwt", *TLS_BOTH, *SECRET_ALL],
        [
            M.WORKLOAD_IDENTITY,
            M.PRIVATE_KEY_JWT,
            M.CLIENT_SECRET_JWT,
            M.TLS_CLIENT_AUTH,
            M.CLIENT_SECRET_BASIC,
            M.CLIENT_SECRET_POST,
        ],
    ),
    # A federated ServiceAccount token is a private_key_jwt assertion to the server.
    ("external-listed", {"external": True}, ["private_key_jwt"], [M.WORKLOAD_IDENTITY]),
    ("external-unlisted", {"external": True}, ["client_secret_basic"], []),
    ("external-by-our-name", {"external": True}, ["workload_identity"], []),
    (
        "external-and-key",
        {"external": True, "key": True},
        ["private_key_jwt"],
        [M.WORKLOAD_IDENTITY, M.PRIVATE_KEY_JWT],
    ),
    ("key-unlisted", {"key": True}, ["client_secret_basic", "tls_client_auth"], []),
    # Both mTLS methods look the same on the wire: one attempt, the CA-issued one first.
    ("tls-both-listed", {"tls": True}, TLS_BOTH, [M.TLS_CLIENT_AUTH]),
    ("tls-ca-only", {"tls": True}, ["tls_client_auth"], [M.TLS_CLIENT_AUTH]),
    (
        "tls-self-signed-only",
        {"tls": True},
        ["self_signed_tls_client_auth"],
        [M.SELF_SIGNED_TLS_CLIENT_AUTH],
    ),
    # client_secret_jwt only where the server says it takes one.
    ("secret-jwt-listed", {"secret": True}, ["client_secret_jwt"], [M.CLIENT_SECRET_JWT]),
    (
        "secret-all-listed",
        {"secret": True},
        SECRET_ALL,
        [M.CLIENT_SECRET_JWT, M.CLIENT_SECRET_BASIC, M.CLIENT_SECRET_POST],
    ),
    # Our preference order, not the server's listing order.
    (
        "secret-server-order",
        {"secret": True},
        ["client_secret_post", "client_secret_basic"],
        [M.CLIENT_SECRET_BASIC, M.CLIENT_SECRET_POST],
    ),
    ("secret-json-never-auto", {"secret": True}, ["client_secret_json"], []),
    ("empty-list", ALL, [], []),
    (
        "key-and-secret",
        {"key": True, "secret": True},
        ["private_key_jwt", "client_secret_post"],
        [M.PRIVATE_KEY_JWT, M.CLIENT_SECRET_POST],
    ),
]


@pytest.mark.parametrize(
    ("material", "supported", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in AUTO_TABLE],
)
def test_auto_candidates(
    material: dict[str, bool], supported: Collection[str] | None, expected: list[M]
) -> None:
    assert clientauth.candidates(M.AUTO, creds(**material), supported) == expected


@pytest.mark.parametrize("method", [m for m in M if m is not M.AUTO])
@pytest.mark.parametrize("supported", [None, [], ["client_secret_basic"]])
@pytest.mark.parametrize("material", [{}, ALL], ids=["no-material", "all-material"])
def test_an_explicit_method_is_returned_as_is(
    method: M, supported: list[str] | None, material: dict[str, bool]
) -> None:
    # The configured method is what the operator asked for: not filtered, not reordered.
    assert clientauth.candidates(method, creds(**material), supported) == [method]


SERVICE_ACCOUNT_TABLE: list[tuple[str, dict[str, bool], Collection[str] | None, list[M]]] = [
    # (id, material, token_endpoint_auth_methods_supported, expected), with a serviceAccountRef
    # and no token minted yet.
    ("alone", {}, None, [M.WORKLOAD_IDENTITY]),
    ("listed", {}, ["private_key_jwt"], [M.WORKLOAD_IDENTITY]),
    ("unlisted", {}, ["client_secret_basic"], []),
    (
        "and-a-secret",
        {"secret": True},
        ["private_key_jwt", "client_secret_basic"],
        [M.WORKLOAD_IDENTITY, M.CLIENT_SECRET_BASIC],
    ),
    ("already-minted", {"external": True}, None, [M.WORKLOAD_IDENTITY]),
]


@pytest.mark.parametrize(
    ("material", "supported", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in SERVICE_ACCOUNT_TABLE],
)
def test_a_service_account_ref_makes_workload_identity_a_candidate(
    material: dict[str, bool], supported: Collection[str] | None, expected: list[M]
) -> None:
    methods = clientauth.candidates(M.AUTO, creds(**material), supported, service_account=True)
    assert methods == expected


def test_without_a_service_account_ref_workload_identity_needs_the_token() -> None:
    assert clientauth.candidates(M.AUTO, creds(secret=True), None) == [
        M.CLIENT_SECRET_BASIC,
        M.CLIENT_SECRET_POST,
    ]


def test_auto_skips_client_secret_jwt_with_a_secret_too_short_to_sign() -> None:
    # A listed client_secret_jwt must not stop auto with ClientSecretTooShort (permanent)
    # before the methods that can use a short secret.
    short = model.ClientAuthMaterial(client_id=CLIENT_ID, client_secret="short-secret")
    assert clientauth.candidates(M.AUTO, short, SECRET_ALL) == [
        M.CLIENT_SECRET_BASIC,
        M.CLIENT_SECRET_POST,
    ]
    # Asked for by the spec's algorithm, it is tried, so that the reason is reported.
    assert clientauth.candidates(M.AUTO, short, SECRET_ALL, algorithm="HS256")[0] is (
        M.CLIENT_SECRET_JWT
    )


def test_every_method_has_one_client_auth() -> None:
    concrete = [m for m in M if m is not M.AUTO]
    assert sorted(a.method for a in clientauth.STRONGEST_FIRST) == sorted(concrete)
    for method in concrete:
        assert clientauth.for_method(method).method is method
    with pytest.raises(ValueError, match="not a concrete"):
        clientauth.for_method(M.AUTO)


def test_each_method_needs_what_the_spec_validation_asks_for() -> None:
    # model's spec check names the Secret each method needs; the classes must agree.
    proof = {
        clientauth.Proof.CLIENT_SECRET: model.SECRET_METHODS,
        clientauth.Proof.CLIENT_CERTIFICATE: model.TLS_METHODS,
        clientauth.Proof.PRIVATE_KEY: {M.PRIVATE_KEY_JWT},
        clientauth.Proof.SERVICE_ACCOUNT_TOKEN: {M.WORKLOAD_IDENTITY},
        clientauth.Proof.GRANT: {M.NONE},
    }
    for auth in clientauth.STRONGEST_FIRST:
        assert auth.method in proof[auth.proof]


# -- request building --------------------------------------------------------------------------

TOKEN_BODY = {"access_token": "tok", "token_type": "Bearer", "expires_in": 300}


class Recorder:
    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await request.aread()
        return self.responses.pop(0) if self.responses else httpx.Response(200, json=TOKEN_BODY)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, httpx.AsyncClient]]:
    rec = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(rec)) as client:
        yield rec, client


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def form(content: bytes) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(content.decode(), keep_blank_values=True, strict_parsing=True)


def build(
    method: M,
    credentials: model.ClientAuthMaterial,
    request: model.TokenRequest | None = None,
) -> tuple[dict[str, str], bytes]:
    return oauth._build(
        method=method,
        request=request or model.TokenRequest(token_url=URL, auth_method=method),
        credentials=credentials,
        now=now(),
    )


def assertion_of(body: bytes) -> str:
    fields = form(body)
    assert fields["client_assertion_type"] == [
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    ]
    assert fields["client_id"] == [CLIENT_ID]
    assert fields["grant_type"] == ["client_credentials"]
    assert "client_secret" not in fields
    (value,) = fields["client_assertion"]
    return value


def assert_no_shared_secret(headers: dict[str, str], body: bytes) -> None:
    assert "Authorization" not in headers
    assert "authorization" not in {k.lower() for k in headers}
    assert SECRET not in body.decode()
    assert urllib.parse.quote(SECRET, safe="") not in body.decode()


async def test_private_key_jwt_sends_a_verifiable_assertion(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    request = model.TokenRequest(token_url=URL, auth_method=M.PRIVATE_KEY_JWT, scopes=("a",))
    # A client secret is present too: it must not leak into a private_key_jwt request.
    credentials = creds(key=True, secret=True)
    result = await oauth.fetch_token(
        client, request=request, credentials=credentials, default_lifetime=H, now=now
    )
    assert result.auth_method is M.PRIVATE_KEY_JWT
    sent = rec.requests[0]
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in sent.headers
    assert SECRET not in sent.content.decode()
    token = assertion_of(sent.content)
    assert form(sent.content)["scope"] == ["a"]
    claims = jwt.decode(
        token,
        RSA_KEY.public_key(),
        algorithms=["RS256"],
        audience=URL,  # the token endpoint by default
        issuer=CLIENT_ID,
        options={"require": ["exp", "iat", "nbf", "jti", "sub"]},
    )
    assert claims["sub"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == model.DEFAULT_ASSERTION_LIFETIME.total_seconds()


async def test_assertion_options_from_the_spec(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    options = model.AssertionOptions(
        audience="https://login.example.com/tenant",
        algorithm="PS384",
        key_id="key-7",
        lifetime=datetime.timedelta(seconds=45),
    )
    request = model.TokenRequest(token_url=URL, auth_method=M.PRIVATE_KEY_JWT, assertion=options)
    await oauth.fetch_token(
        client, request=request, credentials=creds(key=True), default_lifetime=H, now=now
    )
    token = assertion_of(rec.requests[0].content)
    assert jwt.get_unverified_header(token) == {"alg": "PS384", "typ": "JWT", "kid": "key-7"}
    claims = jwt.decode(
        token,
        RSA_KEY.public_key(),
        algorithms=["PS384"],
        audience="https://login.example.com/tenant",
    )
    assert claims["exp"] - claims["iat"] == 45
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, RSA_KEY.public_key(), algorithms=["PS384"], audience=URL)


def test_private_key_jwt_with_an_ec_key_and_a_jwk() -> None:
    document = ECAlgorithm.to_jwk(EC_KEY, as_dict=True) | {"kid": "ec-1"}
    credentials = model.ClientAuthMaterial(client_id=CLIENT_ID, private_key=json.dumps(document))
    headers, body = build(M.PRIVATE_KEY_JWT, credentials)
    assert_no_shared_secret(headers, body)
    token = assertion_of(body)
    assert jwt.get_unverified_header(token)["kid"] == "ec-1"
    jwt.decode(token, EC_KEY.public_key(), algorithms=["ES256"], audience=URL)


def test_client_secret_jwt_is_an_hmac_that_does_not_carry_the_secret() -> None:
    headers, body = build(M.CLIENT_SECRET_JWT, creds(secret=True))
    assert_no_shared_secret(headers, body)
    token = assertion_of(body)
    assert SECRET not in token
    claims = jwt.decode(
        token, SECRET.encode(), algorithms=["HS256"], audience=URL, issuer=CLIENT_ID
    )
    assert claims["sub"] == CLIENT_ID
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, b"another-secret-" + b"x" * 40, algorithms=["HS256"], audience=URL)


def test_workload_identity_sends_the_external_token_verbatim() -> None:
    headers, body = build(M.WORKLOAD_IDENTITY, creds(external=True, secret=True, key=True))
    assert_no_shared_secret(headers, body)
    assert assertion_of(body) == EXTERNAL
    # Verbatim on the wire too: only form encoding, no re-signing or re-wrapping.
    assert b"client_assertion=" + EXTERNAL.encode() in body


@pytest.mark.parametrize("method", [M.TLS_CLIENT_AUTH, M.SELF_SIGNED_TLS_CLIENT_AUTH])
def test_tls_methods_send_the_client_id_only(method: M) -> None:
    headers, body = build(method, creds(tls=True, secret=True, key=True))
    assert_no_shared_secret(headers, body)
    assert form(body) == {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID]}
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("method", [M.PRIVATE_KEY_JWT, M.CLIENT_SECRET_JWT])
def test_each_assertion_has_a_fresh_jti(method: M) -> None:
    credentials = creds(key=True, secret=True)
    jtis = set()
    for _ in range(20):
        _, body = build(method, credentials)
        jti = jwt.decode(assertion_of(body), options={"verify_signature": False})["jti"]
        assert len(jti) >= 22  # at least 128 bits, base64url
        jtis.add(jti)
    assert len(jtis) == 20


async def test_a_retry_with_another_method_signs_a_new_assertion(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    rec.responses = [httpx.Response(401)]
    credentials = creds(external=True, key=True)
    result = await oauth.fetch_token(
        client,
        request=model.TokenRequest(token_url=URL),
        credentials=credentials,
        default_lifetime=H,
        now=now,
        methods=[M.WORKLOAD_IDENTITY, M.PRIVATE_KEY_JWT],
    )
    assert result.auth_method is M.PRIVATE_KEY_JWT
    first, second = (assertion_of(r.content) for r in rec.requests)
    assert first == EXTERNAL
    jwt.decode(second, RSA_KEY.public_key(), algorithms=["RS256"], audience=URL)


@pytest.mark.parametrize(
    ("method", "material"),
    [
        (M.PRIVATE_KEY_JWT, {"secret": True, "tls": True, "external": True}),
        (M.CLIENT_SECRET_JWT, {"key": True, "tls": True, "external": True}),
        (M.WORKLOAD_IDENTITY, {"key": True, "secret": True, "tls": True}),
        (M.CLIENT_SECRET_BASIC, {"key": True}),
        (M.CLIENT_SECRET_POST, {"key": True}),
        (M.CLIENT_SECRET_JSON, {"key": True}),
    ],
)
async def test_missing_material_is_a_permanent_credentials_missing(
    recorder: tuple[Recorder, httpx.AsyncClient], method: M, material: dict[str, bool]
) -> None:
    rec, client = recorder
    with pytest.raises(failures.TokenError) as caught:
        await oauth.fetch_token(
            client,
            request=model.TokenRequest(token_url=URL, auth_method=method),
            credentials=creds(**material),
            default_lifetime=H,
            now=now,
        )
    assert (caught.value.reason, caught.value.permanent) == ("CredentialsMissing", True)
    assert rec.requests == []  # nothing sent without the proof


@pytest.mark.parametrize("method", [M.TLS_CLIENT_AUTH, M.SELF_SIGNED_TLS_CLIENT_AUTH])
def test_tls_methods_without_a_certificate_are_credentials_missing(method: M) -> None:
    with pytest.raises(failures.TokenError) as caught:
        build(method, creds(secret=True, key=True))
    assert (caught.value.reason, caught.value.permanent) == ("CredentialsMissing", True)


@pytest.mark.parametrize(
    ("private_key", "algorithm", "reason"),
    [
        ("not a key", None, "InvalidPrivateKey"),
        (PRIVATE_KEY, "ES256", "InvalidPrivateKey"),
        (PRIVATE_KEY, "HS256", "InvalidPrivateKey"),
    ],
)
async def test_an_unusable_key_is_a_permanent_error_before_sending(
    recorder: tuple[Recorder, httpx.AsyncClient],
    private_key: str,
    algorithm: str | None,
    reason: str,
) -> None:
    rec, client = recorder
    request = model.TokenRequest(
        token_url=URL,
        auth_method=M.PRIVATE_KEY_JWT,
        assertion=model.AssertionOptions(algorithm=algorithm),
    )
    credentials = model.ClientAuthMaterial(client_id=CLIENT_ID, private_key=private_key)
    with pytest.raises(failures.TokenError) as caught:
        await oauth.fetch_token(
            client, request=request, credentials=credentials, default_lifetime=H, now=now
        )
    assert (caught.value.reason, caught.value.permanent) == (reason, True)
    assert rec.requests == []
    assert "PRIVATE KEY" not in str(caught.value)


async def test_a_short_secret_is_client_secret_too_short(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    credentials = model.ClientAuthMaterial(client_id=CLIENT_ID, client_secret="short-secret")
    with pytest.raises(failures.TokenError) as caught:
        await oauth.fetch_token(
            client,
            request=model.TokenRequest(token_url=URL, auth_method=M.CLIENT_SECRET_JWT),
            credentials=credentials,
            default_lifetime=H,
            now=now,
        )
    assert (caught.value.reason, caught.value.permanent) == ("ClientSecretTooShort", True)
    assert "short-secret" not in str(caught.value)
    assert rec.requests == []


async def test_no_method_at_all_is_no_supported_auth_method(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    with pytest.raises(failures.TokenError) as caught:
        await oauth.fetch_token(
            client,
            request=model.TokenRequest(token_url=URL),
            credentials=creds(secret=True, key=True),
            default_lifetime=H,
            now=now,
            methods=[],
        )
    assert (caught.value.reason, caught.value.permanent) == ("NoSupportedAuthMethod", True)
    assert rec.requests == []


async def test_auto_without_any_material_is_no_supported_auth_method(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    with pytest.raises(failures.TokenError) as caught:
        await oauth.fetch_token(
            client,
            request=model.TokenRequest(token_url=URL),
            credentials=model.ClientAuthMaterial(client_id=CLIENT_ID),
            default_lifetime=H,
            now=now,
        )
    assert caught.value.reason == "NoSupportedAuthMethod"
    assert rec.requests == []


def test_the_assertion_type_constant() -> None:
    assert assertion.ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.mark.parametrize("supported", [None, ["client_secret_jwt", "private_key_jwt"]])
def test_an_hmac_algorithm_asks_auto_for_client_secret_jwt(supported: list[str] | None) -> None:
    both = model.ClientAuthMaterial(client_id="c", client_secret="s" * 64, private_key="k")
    methods = clientauth.candidates(M.AUTO, both, supported, algorithm="HS256")
    assert methods[0] is M.CLIENT_SECRET_JWT
    assert M.PRIVATE_KEY_JWT not in methods
    # An asymmetric algorithm leaves the usual order.
    assert clientauth.candidates(M.AUTO, both, supported, algorithm="ES256")[0] is (
        M.PRIVATE_KEY_JWT
    )


def is_basic(request: httpx.Request) -> bool:
    return request.headers.get("authorization", "").startswith("Basic ")


async def test_auto_sends_client_secret_jwt_before_the_secret_itself(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    # The issuer lists client_secret_jwt: the first request signs with the secret and does
    # not carry it; no Basic or form-body request goes out before it.
    rec, client = recorder
    supported = ["client_secret_basic", "client_secret_post", "client_secret_jwt"]
    credentials = creds(secret=True)
    result = await oauth.fetch_token(
        client,
        request=model.TokenRequest(token_url=URL),
        credentials=credentials,
        default_lifetime=H,
        now=now,
        methods=clientauth.candidates(M.AUTO, credentials, supported),
    )
    assert result.auth_method is M.CLIENT_SECRET_JWT
    (first,) = rec.requests
    assert_no_shared_secret(dict(first.headers), first.content)
    jwt.decode(assertion_of(first.content), SECRET.encode(), algorithms=["HS256"], audience=URL)


async def test_auto_moves_on_from_client_secret_jwt_when_the_client_is_refused(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    rec.responses = [httpx.Response(401, json={"error": "invalid_client"})]
    supported = ["client_secret_jwt", "client_secret_basic"]
    credentials = creds(secret=True)
    result = await oauth.fetch_token(
        client,
        request=model.TokenRequest(token_url=URL),
        credentials=credentials,
        default_lifetime=H,
        now=now,
        methods=clientauth.candidates(M.AUTO, credentials, supported),
    )
    assert result.auth_method is M.CLIENT_SECRET_BASIC
    first, second = rec.requests
    assert "client_assertion" in form(first.content)
    assert not is_basic(first)
    assert is_basic(second)
