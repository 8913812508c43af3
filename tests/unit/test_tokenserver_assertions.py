"""The test authorization server's newer client authentication, proven on its own.

The operator's private_key_jwt, client_secret_jwt, mTLS, discovery and workload identity
support is tested against support.tokenserver; these tests show that the server enforces
the RFCs (7523, 8705, 8414, OIDC Core 9 and Discovery) independently of the operator:
assertions are signed here with PyJWT, certificates made with cryptography, requests sent
with httpx.
"""

from __future__ import annotations

import datetime
import pathlib
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster.pki import CertificateAuthority, KeyPair
from support.tokenserver import (
    ASSERTION_TYPE,
    TokenServer,
    cert_sha256,
    mtls_server_context,
    x5t_s256,
)

KUBE_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_SUBJECT = "system:serviceaccount:apps:payments"
HMAC_SECRET = "h" * 64  # long enough for HS512 (RFC 7518 section 3.2)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_jwk(key: PrivateKey, kid: str | None, **extra: str) -> dict[str, Any]:
    algorithm: Any
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = jwt.algorithms.RSAAlgorithm
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = jwt.algorithms.ECAlgorithm
    else:
        algorithm = jwt.algorithms.OKPAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.pop("key_ops", None)
    if kid is not None:
        jwk["kid"] = kid
    return {**jwk, **extra}


def assertion(
    key: Any,
    alg: str,
    *,
    client_id: str,
    aud: str | list[str],
    kid: str | None = None,
    iss: str | None = None,
    exp_in: float = 120,
    jti: str | None = "new",
    headers: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": iss or client_id,
        "sub": client_id,
        "aud": aud,
        "iat": now,
        "exp": now + int(exp_in),
    }
    if jti is not None:
        claims["jti"] = uuid.uuid4().hex if jti == "new" else jti
    header = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def post(
    url: str, data: dict[str, str], *, verify: ssl.SSLContext | bool = False
) -> httpx.Response:
    form = {"grant_type": "client_credentials", **data}
    with httpx.Client(verify=verify, timeout=10) as client:
        return client.post(url, data=form)


def assertion_form(client_id: str, token: str) -> dict[str, str]:
    return {
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
    }


def assert_invalid_client(response: httpx.Response) -> None:
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == "invalid_client", response.text


# -- RFC 7523: private_key_jwt and client_secret_jwt -------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {
        "rsa": rsa.generate_private_key(65537, 2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "rsa-other": rsa.generate_private_key(65537, 2048),
    }


@pytest.fixture(scope="module")
def server(keys: dict[str, PrivateKey]) -> Iterator[TokenServer]:
    jwks = {"keys": [public_jwk(keys[name], name) for name in ("rsa", "ec", "ed")]}
    with TokenServer(lifetime=600, issuer_path="/realms/test", discovery="openid") as running:
        running.add_client("pkjwt", jwks=jwks, auth_methods=["private_key_jwt"])
        running.add_client(
            "pkjwt-issuer-aud",
            jwks=jwks,
            auth_methods=["private_key_jwt"],
            audiences=[running.issuer_url],
        )
        running.add_client(
            "pkjwt-nokid",
            jwks={"keys": [public_jwk(keys["rsa-other"], None), public_jwk(keys["rsa"], None)]},
            auth_methods=["private_key_jwt"],
        )
        running.add_client("secjwt", HMAC_SECRET, auth_methods=["client_secret_jwt"])
        running.add_client("short", "too-short", auth_methods=["client_secret_jwt"])
        running.add_client("default", "plain-secret")
        yield running


@pytest.mark.parametrize(
    ("alg", "kid"), [("RS256", "rsa"), ("PS256", "rsa"), ("ES256", "ec"), ("EdDSA", "ed")]
)
def test_private_key_jwt_accepted_per_algorithm(
    server: TokenServer, keys: dict[str, PrivateKey], alg: str, kid: str
) -> None:
    token = assertion(keys[kid], alg, client_id="pkjwt", aud=server.url, kid=kid)
    response = post(server.url, assertion_form("pkjwt", token))
    assert response.status_code == 200, response.text
    issued = next(i for i in server.issued if i.access_token == response.json()["access_token"])
    assert issued.auth_method == "private_key_jwt"
    assert issued.assertion_header is not None
    assert issued.assertion_header["alg"] == alg
    assert issued.assertion_header["kid"] == kid


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_client_secret_jwt_accepted_per_algorithm(server: TokenServer, alg: str) -> None:
    token = assertion(HMAC_SECRET.encode(), alg, client_id="secjwt", aud=server.url)
    response = post(server.url, assertion_form("secjwt", token))
    assert response.status_code == 200, response.text
    issued = server.issued[-1]
    assert issued.auth_method == "client_secret_jwt"
    assert issued.assertion_header == {"alg": alg, "typ": "JWT"}


def test_header_x5t_and_aud_list_recorded(server: TokenServer, keys: dict[str, PrivateKey]) -> None:
    thumb = x5t_s256(b"not a real certificate, only bytes to hash")
    token = assertion(
        keys["rsa"],
        "RS256",
        client_id="pkjwt",
        aud=["https://elsewhere.example", server.url],
        kid="rsa",
        headers={"x5t#S256": thumb},
    )
    response = post(server.url, assertion_form("pkjwt", token))
    assert response.status_code == 200, response.text
    assert server.issued[-1].assertion_header["x5t#S256"] == thumb  # type: ignore[index]


def test_without_kid_every_registered_key_is_tried(
    server: TokenServer, keys: dict[str, PrivateKey]
) -> None:
    token = assertion(keys["rsa"], "RS256", client_id="pkjwt-nokid", aud=server.url)
    assert post(server.url, assertion_form("pkjwt-nokid", token)).status_code == 200
    token = assertion(keys["ec"], "ES256", client_id="pkjwt-nokid", aud=server.url)
    assert_invalid_client(post(server.url, assertion_form("pkjwt-nokid", token)))


def test_client_id_in_body_is_optional(server: TokenServer, keys: dict[str, PrivateKey]) -> None:
    token = assertion(keys["ec"], "ES256", client_id="pkjwt", aud=server.url, kid="ec")
    form = assertion_form("pkjwt", token)
    del form["client_id"]
    assert post(server.url, form).status_code == 200


def test_extra_audience_per_client(server: TokenServer, keys: dict[str, PrivateKey]) -> None:
    for client_id, expected in (("pkjwt-issuer-aud", 200), ("pkjwt", 400)):
        token = assertion(keys["ec"], "ES256", client_id=client_id, aud=server.issuer_url, kid="ec")
        response = post(server.url, assertion_form(client_id, token))
        assert response.status_code == expected, response.text


def _refusal(server: TokenServer, keys: dict[str, PrivateKey], case: str) -> dict[str, str]:
    url = server.url

    def pk(**kwargs: Any) -> dict[str, str]:
        options: dict[str, Any] = {"client_id": "pkjwt", "aud": url, "kid": "rsa"}
        options.update(kwargs)
        key = options.pop("key", keys["rsa"])
        alg = options.pop("alg", "RS256")
        return assertion_form("pkjwt", assertion(key, alg, **options))

    def wrong_body() -> dict[str, str]:
        form = pk()
        form["client_id"] = "secjwt"
        return form

    def short_secret() -> dict[str, str]:
        # PyJWT warns about the short key; the server must refuse it outright.
        with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
            token = assertion(b"too-short", "HS256", client_id="short", aud=url)
        return assertion_form("short", token)

    cases: dict[str, Callable[[], dict[str, str]]] = {
        "wrong key": lambda: pk(key=keys["rsa-other"]),
        "expired": lambda: pk(exp_in=-300),
        "exp too far ahead": lambda: pk(exp_in=3600),
        "unknown kid": lambda: pk(kid="nope"),
        "kid of another key type": lambda: pk(kid="ec"),
        "wrong aud": lambda: pk(aud="https://elsewhere.example/token"),
        "iss != sub": lambda: pk(iss="someone-else"),
        "no jti": lambda: pk(jti=None),
        "client_id != sub": wrong_body,
        "HMAC for a private_key_jwt client": lambda: pk(key=b"k" * 64, alg="HS256", kid=None),
        "unsigned": lambda: pk(key=None, alg="none", kid=None),
        "secret too short for HS256": short_secret,
        "wrong secret": lambda: assertion_form(
            "secjwt", assertion(b"x" * 64, "HS256", client_id="secjwt", aud=url)
        ),
        "default client (secret methods only)": lambda: assertion_form(
            "default",
            assertion(b"plain-secret" * 4, "HS256", client_id="default", aud=url),
        ),
        "unknown client": lambda: assertion_form(
            "nobody", assertion(keys["rsa"], "RS256", client_id="nobody", aud=url, kid="rsa")
        ),
        "garbage": lambda: assertion_form("pkjwt", "not.a.jwt"),
    }
    return cases[case]()


@pytest.mark.parametrize(
    "case",
    [
        "wrong key",
        "expired",
        "exp too far ahead",
        "unknown kid",
        "kid of another key type",
        "wrong aud",
        "iss != sub",
        "no jti",
        "client_id != sub",
        "HMAC for a private_key_jwt client",
        "unsigned",
        "secret too short for HS256",
        "wrong secret",
        "default client (secret methods only)",
        "unknown client",
        "garbage",
    ],
)
def test_assertion_refused(server: TokenServer, keys: dict[str, PrivateKey], case: str) -> None:
    before = len(server.issued)
    assert_invalid_client(post(server.url, _refusal(server, keys, case)))
    assert len(server.issued) == before


def test_replayed_jti_refused(server: TokenServer, keys: dict[str, PrivateKey]) -> None:
    token = assertion(keys["ed"], "EdDSA", client_id="pkjwt", aud=server.url, kid="ed")
    assert post(server.url, assertion_form("pkjwt", token)).status_code == 200
    assert_invalid_client(post(server.url, assertion_form("pkjwt", token)))
    # The same jti in a fresh assertion is a replay too.
    jti = uuid.uuid4().hex
    first = assertion(keys["ec"], "ES256", client_id="pkjwt", aud=server.url, kid="ec", jti=jti)
    again = assertion(keys["rsa"], "RS256", client_id="pkjwt", aud=server.url, kid="rsa", jti=jti)
    assert post(server.url, assertion_form("pkjwt", first)).status_code == 200
    assert_invalid_client(post(server.url, assertion_form("pkjwt", again)))


def test_set_jwks_rotates_keys(keys: dict[str, PrivateKey]) -> None:
    with TokenServer() as running:
        running.add_client(
            "rot", jwks={"keys": [public_jwk(keys["ec"], "k1")]}, auth_methods=["private_key_jwt"]
        )
        old = assertion(keys["ec"], "ES256", client_id="rot", aud=running.url, kid="k1")
        assert post(running.url, assertion_form("rot", old)).status_code == 200
        running.set_jwks("rot", {"keys": [public_jwk(keys["ed"], "k2")]})
        old = assertion(keys["ec"], "ES256", client_id="rot", aud=running.url, kid="k1")
        assert_invalid_client(post(running.url, assertion_form("rot", old)))
        new = assertion(keys["ed"], "EdDSA", client_id="rot", aud=running.url, kid="k2")
        assert post(running.url, assertion_form("rot", new)).status_code == 200


def test_registration_refuses_private_keys_and_missing_data() -> None:
    server = TokenServer()
    private = jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), True)
    with pytest.raises(ValueError, match="not a public key"):
        server.add_client("x", jwks={"keys": [private]}, auth_methods=["private_key_jwt"])
    with pytest.raises(ValueError, match="missing registration data"):
        server.add_client("x", auth_methods=["private_key_jwt"])
    with pytest.raises(ValueError, match="missing registration data"):
        server.add_client("x")  # the default secret methods need a secret
    with pytest.raises(ValueError, match="need TokenServer"):
        server.add_client("x", tls_subject_dn="CN=x", auth_methods=["tls_client_auth"])


def test_secret_methods_still_work_under_issuer_path(server: TokenServer) -> None:
    assert server.url.endswith("/realms/test/oauth2/token")
    response = post(server.url, {"client_id": "default", "client_secret": "plain-secret"})
    assert response.status_code == 200, response.text
    assert server.issued[-1].auth_method == "client_secret_post"
    assert server.issued[-1].assertion_header is None


# -- RFC 8705: mTLS ------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    common_name: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    san_dns: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate, self-signed unless ``issuer`` is given; client usage unless ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if san_dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san_dns)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256()), key


def pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    return KeyPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class Tls:
    """Client-side TLS contexts trusting the server's CA, with or without a certificate."""

    def __init__(self, ca: CertificateAuthority, directory: pathlib.Path) -> None:
        self.ca = ca
        self.directory = directory

    def context(self, client: KeyPair | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        if client is not None:
            name = uuid.uuid4().hex
            cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
            cert.write_bytes(client.cert_pem)
            key.write_bytes(client.key_pem)
            context.load_cert_chain(cert, key)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ca = CertificateAuthority("tokenserver-test-ca")
    san_ca = make_cert("san-ca", ca=True)
    self_signed = make_cert("self-signed-a")
    other_self_signed = make_cert("self-signed-b")
    return {
        "ca": ca,
        "tls": Tls(ca, tmp_path_factory.mktemp("mtls")),
        "serving": ca.issue("tokenserver", server_hosts=("127.0.0.1", "localhost")),
        "client": ca.issue("client-a", organizations=("tokensync",)),
        "wrong-subject": ca.issue("client-b", organizations=("tokensync",)),
        "other-ca": CertificateAuthority("another-ca").issue(
            "client-a", organizations=("tokensync",)
        ),
        "san-ca": san_ca,
        "san": pair(*make_cert("whatever", issuer=san_ca, san_dns="workload.example")),
        "self-signed": pair(*self_signed),
        "other-self-signed": pair(*other_self_signed),
        "unregistered-self-signed": pair(*make_cert("self-signed-c")),
    }


@pytest.fixture(scope="module")
def mtls(pki: dict[str, Any]) -> Iterator[TokenServer]:
    san_ca_pem = pki["san-ca"][0].public_bytes(serialization.Encoding.PEM)
    context = mtls_server_context(pki["serving"], [pki["ca"].cert_pem, san_ca_pem])
    with TokenServer(mtls_context=context, discovery="oauth") as running:
        # RFC 4514 writes the last RDN first: pki puts CN before O in the certificate.
        running.add_client(
            "dn", auth_methods=["tls_client_auth"], tls_subject_dn="O=tokensync,CN=client-a"
        )
        running.add_client("san", auth_methods=["tls_client_auth"], tls_san_dns="workload.example")
        running.add_client(
            "self",
            auth_methods=["self_signed_tls_client_auth"],
            tls_cert_pem=pki["self-signed"].cert_pem,
        )
        running.add_client(
            "self-b",
            auth_methods=["self_signed_tls_client_auth"],
            tls_cert_pem=pki["other-self-signed"].cert_pem,
        )
        running.add_client("secret", "s", auth_methods=["client_secret_post"])
        yield running


def mtls_post(server: TokenServer, pki: dict[str, Any], client_id: str, cert: str | None) -> Any:
    context = pki["tls"].context(pki[cert] if cert else None)
    return post(server.mtls_url, {"client_id": client_id}, verify=context)


@pytest.mark.parametrize(
    ("client_id", "cert", "method"),
    [
        ("dn", "client", "tls_client_auth"),
        ("san", "san", "tls_client_auth"),
        ("self", "self-signed", "self_signed_tls_client_auth"),
    ],
)
def test_mtls_accepted(
    mtls: TokenServer, pki: dict[str, Any], client_id: str, cert: str, method: str
) -> None:
    response = mtls_post(mtls, pki, client_id, cert)
    assert response.status_code == 200, response.text
    issued = mtls.issued[-1]
    assert (issued.client_id, issued.auth_method) == (client_id, method)
    assert issued.client_cert_sha256 == cert_sha256(pki[cert].cert_pem)


@pytest.mark.parametrize(
    ("client_id", "cert"),
    [
        ("dn", "wrong-subject"),
        ("dn", None),
        ("self", None),
        ("self", "other-self-signed"),  # trusted (registered for self-b) but not self's
        ("self", "client"),  # a CA-issued certificate is not the registered one
        ("dn", "self-signed"),  # a registered self-signed certificate is not PKI-issued
        ("san", "client"),
    ],
)
def test_mtls_refused(
    mtls: TokenServer, pki: dict[str, Any], client_id: str, cert: str | None
) -> None:
    assert_invalid_client(mtls_post(mtls, pki, client_id, cert))


@pytest.mark.parametrize("cert", ["other-ca", "unregistered-self-signed"])
def test_mtls_untrusted_certificate_fails_the_handshake(
    mtls: TokenServer, pki: dict[str, Any], cert: str
) -> None:
    with pytest.raises(httpx.TransportError):
        mtls_post(mtls, pki, "dn", cert)


def test_mtls_port_still_serves_secret_clients(mtls: TokenServer, pki: dict[str, Any]) -> None:
    context = pki["tls"].context()
    response = post(mtls.mtls_url, {"client_id": "secret", "client_secret": "s"}, verify=context)
    assert response.status_code == 200, response.text
    # The certificate methods are refused on the plain port: no certificate there.
    assert_invalid_client(post(mtls.url, {"client_id": "dn"}))


# -- discovery ----------------------------------------------------------------------------


def test_openid_discovery(server: TokenServer) -> None:
    assert server.issuer_url == server.origin + "/realms/test"
    assert server.discovery_url == server.issuer_url + "/.well-known/openid-configuration"
    before = server.discovery_requests
    document = httpx.get(server.discovery_url).json()
    assert document["issuer"] == server.issuer_url
    assert document["token_endpoint"] == server.url
    assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
    assert "EdDSA" in document["token_endpoint_auth_signing_alg_values_supported"]
    assert "mtls_endpoint_aliases" not in document
    assert server.discovery_requests == before + 1
    # The RFC 8414 location is not served by an "openid" server, nor a path without issuer.
    rfc8414 = f"{server.origin}/.well-known/oauth-authorization-server/realms/test"
    assert httpx.get(rfc8414).status_code == 404
    assert httpx.get(f"{server.origin}/.well-known/openid-configuration").status_code == 404
    assert server.discovery_requests == before + 1


def test_oauth_discovery_with_mtls_alias(mtls: TokenServer, pki: dict[str, Any]) -> None:
    assert mtls.discovery_url == f"{mtls.origin}/.well-known/oauth-authorization-server"
    document = httpx.get(mtls.discovery_url).json()
    assert document["issuer"] == mtls.issuer_url == mtls.origin
    assert document["mtls_endpoint_aliases"] == {"token_endpoint": mtls.mtls_url}
    assert "tls_client_auth" in document["token_endpoint_auth_methods_supported"]
    # Served on the mTLS port as well.
    context = pki["tls"].context()
    aliased = mtls.mtls_url.replace("/oauth2/token", "/.well-known/oauth-authorization-server")
    assert httpx.get(aliased, verify=context).json() == document


def test_oauth_discovery_under_issuer_path_and_switches() -> None:
    with TokenServer(issuer_path="/tenant/a", discovery="oauth") as running:
        assert running.discovery_url == (
            f"{running.origin}/.well-known/oauth-authorization-server/tenant/a"
        )
        assert httpx.get(running.discovery_url).json()["issuer"] == running.issuer_url
        wrong = f"{running.issuer_url}/.well-known/openid-configuration"
        assert httpx.get(wrong).status_code == 404
        running.wrong_issuer = True
        running.auth_methods_supported = ["client_secret_basic"]
        document = httpx.get(running.discovery_url).json()
        assert document["issuer"] != running.issuer_url
        assert document["token_endpoint_auth_methods_supported"] == ["client_secret_basic"]
        assert running.discovery_requests == 2


def test_no_discovery_by_default() -> None:
    with TokenServer() as running:
        url = f"{running.origin}/.well-known/openid-configuration"
        assert httpx.get(url).status_code == 404
        with pytest.raises(RuntimeError):
            _ = running.discovery_url


# -- workload identity federation ----------------------------------------------------------


@pytest.fixture(scope="module")
def issuer_keys() -> dict[str, PrivateKey]:
    """Keys standing in for kube-apiserver's ServiceAccount signing key."""
    return {
        "rsa": rsa.generate_private_key(65537, 2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "rogue": rsa.generate_private_key(65537, 2048),
    }


@pytest.fixture(scope="module")
def federated(issuer_keys: dict[str, PrivateKey]) -> Iterator[TokenServer]:
    jwks = {
        "keys": [
            public_jwk(issuer_keys["rsa"], "sa-rsa", use="sig", alg="RS256"),
            public_jwk(issuer_keys["ec"], "sa-ec", use="sig", alg="ES256"),
        ]
    }
    with TokenServer() as running:
        running.add_federated_client(
            "wif",
            issuer=KUBE_ISSUER,
            subject=SA_SUBJECT,
            audience="tokensync-test",
            fetch_jwks=lambda: jwks,
        )
        running.add_client("plain", "plain-secret")
        yield running


def sa_token(key: Any, alg: str, kid: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": KUBE_ISSUER,
        "sub": SA_SUBJECT,
        "aud": ["tokensync-test"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "payments"}},
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "sa-rsa"), ("ES256", "sa-ec")])
def test_federated_token_accepted(
    federated: TokenServer, issuer_keys: dict[str, PrivateKey], alg: str, kid: str
) -> None:
    key = issuer_keys["rsa" if alg == "RS256" else "ec"]
    token = sa_token(key, alg, kid)
    response = post(federated.url, assertion_form("wif", token))
    assert response.status_code == 200, response.text
    issued = federated.issued[-1]
    assert (issued.client_id, issued.auth_method) == ("wif", "workload_identity")
    assert issued.assertion_header == {"alg": alg, "kid": kid, "typ": "JWT"}
    assert issued.assertion_claims["sub"] == SA_SUBJECT  # type: ignore[index]
    # Not one-time: the same ServiceAccount token may be used again until it expires.
    assert post(federated.url, assertion_form("wif", token)).status_code == 200


@pytest.mark.parametrize(
    "case",
    [
        "other subject",
        "other audience",
        "other issuer",
        "expired",
        "rogue key",
        "unknown kid",
        "HMAC",
        "no client_id",
        "to a non-federated client",
    ],
)
def test_federated_token_refused(
    federated: TokenServer, issuer_keys: dict[str, PrivateKey], case: str
) -> None:
    rsa_key = issuer_keys["rsa"]
    client_id = "wif"
    if case == "other subject":
        token = sa_token(rsa_key, "RS256", "sa-rsa", sub="system:serviceaccount:apps:other")
    elif case == "other audience":
        token = sa_token(rsa_key, "RS256", "sa-rsa", aud=["https://kubernetes.default.svc"])
    elif case == "other issuer":
        token = sa_token(rsa_key, "RS256", "sa-rsa", iss="https://evil.example")
    elif case == "expired":
        token = sa_token(rsa_key, "RS256", "sa-rsa", exp=int(time.time()) - 300)
    elif case == "rogue key":
        token = sa_token(issuer_keys["rogue"], "RS256", "sa-rsa")
    elif case == "unknown kid":
        token = sa_token(rsa_key, "RS256", "sa-other")
    elif case == "HMAC":
        token = sa_token(b"k" * 64, "HS256", "sa-rsa")
    else:
        token = sa_token(rsa_key, "RS256", "sa-rsa")
        client_id = "plain"
    form = assertion_form(client_id, token)
    if case == "no client_id":
        del form["client_id"]
    assert_invalid_client(post(federated.url, form))


def test_short_hmac_secret_accepted_when_enforcement_is_off() -> None:
    with TokenServer() as running:
        running.enforce_hmac_key_length = False
        running.add_client("short", "short-secret", auth_methods=["client_secret_jwt"])
        with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
            token = assertion(b"short-secret", "HS256", client_id="short", aud=running.url)
        response = post(running.url, assertion_form("short", token))
        assert response.status_code == 200, response.text
