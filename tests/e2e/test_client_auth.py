"""Client authentication without shared secrets, end to end.

The operator runs as a process under deploy/'s RBAC; the token server (Authlib, RFC 7523
assertions, RFC 8705 mTLS, discovery, federation) checks every request independently:
signatures against the client's registered public keys, certificates against its own CA,
ServiceAccount tokens against the kube-apiserver's published JWKS. Each negative case must
give a clear reason and leave the last good token in place.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from kubernetes import client

from localcluster import LocalCluster
from localcluster.pki import CertificateAuthority
from support import kubeoidc, manifests, testenv
from support.fixtures import operator
from support.operatorproc import OperatorProcess, may_mint_tokens, workload_identity_granted
from support.polling import wait_for
from support.tokenserver import TokenServer, mtls_server_context, x5t_s256

__all__ = ["operator"]

ISSUER_PATH = "/realms/test"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Long enough for HS512 (64 bytes): RFC 7518 section 3.2, enforced on both sides.
LONG_SECRET = "an-hmac-secret-long-enough-for-hs512-" + "0123456789" * 3


# -- keys ---------------------------------------------------------------------------------


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_jwk(key: Any, kid: str | None = None) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid:
        jwk["kid"] = kid
    return dict(jwk)


def private_jwk(key: Any, kid: str) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    return json.dumps({**jwk, "kid": kid})


def self_signed(key: rsa.RSAPrivateKey, name: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_ca() -> CertificateAuthority:
    return CertificateAuthority("tokensync-test-client-ca")


@pytest.fixture(scope="module")
def server_ca() -> CertificateAuthority:
    return CertificateAuthority("tokensync-test-server-ca")


@pytest.fixture(scope="module")
def server(
    client_ca: CertificateAuthority, server_ca: CertificateAuthority
) -> Iterator[TokenServer]:
    pair = server_ca.issue("token-endpoint", server_hosts=("127.0.0.1",))
    context = mtls_server_context(pair, [client_ca.cert_pem])
    with TokenServer(mtls_context=context, issuer_path=ISSUER_PATH, discovery="openid") as s:
        yield s


class Env(testenv.Env):
    """One test's namespace and its client id; ``log`` gives the operator's log on failure."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        server: TokenServer,
        *,
        log: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(api, namespace)
        self.log = log or (lambda: "")
        self.server = server
        self.client_id = f"client-{uuid.uuid4().hex[:8]}"

    def credential(self, name: str = "api", **spec: Any) -> None:
        self.create_credential(
            name, {"clientID": self.client_id, "refresh": {"minInterval": "1s"}, **spec}
        )

    def wait_failure(self, reason: str, name: str = "api") -> dict[str, Any]:
        """The last attempt failed with ``reason`` (Ready may stay True: token still valid)."""

        def check() -> dict[str, Any] | None:
            got = self.get(name)
            return got if (got.get("status") or {}).get("lastFailureReason") == reason else None

        try:
            return self.wait_for(check, what=f"{name} failing with {reason}")
        except AssertionError as exc:
            status = self.get(name).get("status")
            lines = [line for line in self.log().splitlines() if self.ns in line]
            raise AssertionError(
                f"{reason} not seen; status: {status}; log: {lines[-15:]}"
            ) from exc

    def issued_for_me(self) -> list[Any]:
        return [i for i in self.server.issued if i.client_id == self.client_id]


@pytest.fixture
def env(
    api_client: client.ApiClient, namespace: str, server: TokenServer, operator: OperatorProcess
) -> Env:
    return Env(api_client, namespace, server, log=operator.log)


def ca_bundle(env: Env, ca: CertificateAuthority) -> dict[str, str]:
    env.core.create_namespaced_config_map(
        env.ns, {"metadata": {"name": "server-ca"}, "data": {"ca.crt": ca.cert_pem.decode()}}
    )
    return {"kind": "ConfigMap", "name": "server-ca"}


# -- private_key_jwt and client_secret_jwt ------------------------------------------------


def test_private_key_jwt_with_a_certificate(env: Env) -> None:
    """Entra ID's shape: RSA key, PS256, x5t#S256 of the certificate, aud = token endpoint."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(key, "billing")
    env.server.add_client(
        env.client_id, auth_methods=["private_key_jwt"], jwks={"keys": [public_jwk(key)]}
    )
    env.secret("signing-key", {"tls.key": pem(key), "tls.crt": cert})
    env.credential(
        tokenURL=env.server.url,
        authMethod="private_key_jwt",
        privateKeyRef={"name": "signing-key", "certificateKey": "tls.crt"},
        clientAssertion={"algorithm": "PS256"},
    )
    env.wait_ready(reason="TokenIssued")
    token = env.token()
    assert token is not None
    assert env.server.verify(token)
    (issued,) = env.issued_for_me()
    assert issued.auth_method == "private_key_jwt"
    assert issued.assertion_header["alg"] == "PS256"
    assert issued.assertion_header["x5t#S256"] == x5t_s256(cert.encode())
    claims = issued.assertion_claims
    assert claims["iss"] == claims["sub"] == env.client_id
    assert claims["aud"] == env.server.url
    assert 0 < claims["exp"] - claims["iat"] <= 120
    assert env.get()["status"]["authMethod"] == "private_key_jwt"


@pytest.mark.parametrize("kind", ["ec-jwk", "ed25519-pem"])
def test_private_key_jwt_key_types(env: Env, kind: str) -> None:
    if kind == "ec-jwk":
        key: Any = ec.generate_private_key(ec.SECP256R1())
        text, kid, alg = private_jwk(key, "ec-1"), "ec-1", "ES256"
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        text, kid, alg = pem(key), None, "EdDSA"
    env.server.add_client(
        env.client_id, auth_methods=["private_key_jwt"], jwks={"keys": [public_jwk(key, kid)]}
    )
    env.secret("signing-key", {"key": text})
    # auto: the only material is the key, so private_key_jwt.
    env.credential(tokenURL=env.server.url, privateKeyRef={"name": "signing-key", "key": "key"})
    env.wait_ready(reason="TokenIssued")
    (issued,) = env.issued_for_me()
    assert issued.assertion_header["alg"] == alg
    assert issued.assertion_header.get("kid") == kid


def test_client_secret_jwt(env: Env) -> None:
    env.server.add_client(env.client_id, LONG_SECRET, auth_methods=["client_secret_jwt"])
    env.secret("oauth-client", {"client_secret": LONG_SECRET})
    env.credential(
        tokenURL=env.server.url,
        authMethod="client_secret_jwt",
        clientSecretRef={"name": "oauth-client"},
        clientAssertion={"algorithm": "HS512"},
    )
    env.wait_ready(reason="TokenIssued")
    (issued,) = env.issued_for_me()
    assert (issued.auth_method, issued.assertion_header["alg"]) == ("client_secret_jwt", "HS512")


def test_client_secret_too_short_for_the_algorithm(env: Env) -> None:
    env.secret("oauth-client", {"client_secret": "short-secret"})
    requests = env.server.requests
    env.credential(
        tokenURL=env.server.url,
        authMethod="client_secret_jwt",
        clientSecretRef={"name": "oauth-client"},
    )
    ready = env.wait_ready(reason="ClientSecretTooShort")
    assert "short-secret" not in ready["message"]
    assert env.server.requests == requests


def test_wrong_key_keeps_the_last_good_token(env: Env) -> None:
    good = ec.generate_private_key(ec.SECP256R1())
    env.server.add_client(
        env.client_id, auth_methods=["private_key_jwt"], jwks={"keys": [public_jwk(good)]}
    )
    env.secret("signing-key", {"tls.key": pem(good)})
    env.credential(tokenURL=env.server.url, privateKeyRef={"name": "signing-key"})
    env.wait_ready(reason="TokenIssued")
    token = env.token()
    # A rotated key the provider does not know yet: refused, the old token stays.
    env.replace_secret("signing-key", {"tls.key": pem(ec.generate_private_key(ec.SECP256R1()))})
    failed = env.wait_failure("InvalidClient")
    assert env.token() == token
    assert len(env.issued_for_me()) == 1
    assert failed["status"]["conditions"][0]["reason"] == "InvalidClient"


def test_unknown_kid_is_refused(env: Env) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    env.server.add_client(
        env.client_id, auth_methods=["private_key_jwt"], jwks={"keys": [public_jwk(key, "k1")]}
    )
    env.secret("signing-key", {"tls.key": pem(key)})
    env.credential(
        tokenURL=env.server.url,
        privateKeyRef={"name": "signing-key"},
        clientAssertion={"keyID": "k2"},
    )
    ready = env.wait_ready(reason="InvalidClient")
    assert ready["status"] == "False"
    assert env.token() is None


def test_assertion_lifetime_the_server_refuses(env: Env) -> None:
    """An assertion valid longer than the server accepts (it allows 10 minutes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    env.server.add_client(
        env.client_id, auth_methods=["private_key_jwt"], jwks={"keys": [public_jwk(key)]}
    )
    env.secret("signing-key", {"tls.key": pem(key)})
    env.credential(
        tokenURL=env.server.url,
        privateKeyRef={"name": "signing-key"},
        clientAssertion={"lifetime": "1h"},
    )
    env.wait_ready(reason="InvalidClient")


def test_unusable_key_is_reported_before_any_request(env: Env) -> None:
    requests = env.server.requests
    env.secret("signing-key", {"tls.key": "-----BEGIN PRIVATE KEY-----\nnope\n"})
    env.credential(tokenURL=env.server.url, privateKeyRef={"name": "signing-key"})
    ready = env.wait_ready(reason="InvalidPrivateKey")
    assert "nope" not in ready["message"]
    assert env.server.requests == requests


def test_key_secret_must_opt_in(env: Env) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    env.core.create_namespaced_secret(
        env.ns, {"metadata": {"name": "some-tls"}, "stringData": {"tls.key": pem(key)}}
    )
    requests = env.server.requests
    env.credential(tokenURL=env.server.url, privateKeyRef={"name": "some-tls"})
    env.wait_ready(reason="ClientSecretNotOptedIn")
    assert env.server.requests == requests


# -- mTLS and discovery -------------------------------------------------------------------


def test_tls_client_auth_through_discovery(
    env: Env, client_ca: CertificateAuthority, server_ca: CertificateAuthority
) -> None:
    pair = client_ca.issue(env.client_id)
    env.server.add_client(
        env.client_id, auth_methods=["tls_client_auth"], tls_subject_dn=f"CN={env.client_id}"
    )
    env.secret(
        "client-tls",
        {"tls.crt": pair.cert_pem.decode(), "tls.key": pair.key_pem.decode()},
        type_="kubernetes.io/tls",
    )
    env.credential(
        issuerURL=env.server.issuer_url,
        clientCertificateRef={"name": "client-tls"},
        caBundleRef=ca_bundle(env, server_ca),
    )
    env.wait_ready(reason="TokenIssued")
    (issued,) = env.issued_for_me()
    assert issued.auth_method == "tls_client_auth"
    first_cert = issued.client_cert_sha256
    assert env.get()["status"]["authMethod"] == "tls_client_auth"

    # A renewed certificate is used from the next request on (its change triggers one).
    renewed = client_ca.issue(env.client_id)
    env.replace_secret(
        "client-tls", {"tls.crt": renewed.cert_pem.decode(), "tls.key": renewed.key_pem.decode()}
    )
    wait_for(lambda: len(env.issued_for_me()) == 2, what="a token with the renewed certificate")
    assert env.issued_for_me()[-1].client_cert_sha256 != first_cert

    # A certificate from another CA: refused in the handshake; the last token stays.
    token = env.token()
    stranger = CertificateAuthority("tokensync-test-other-ca").issue(env.client_id)
    env.replace_secret(
        "client-tls",
        {"tls.crt": stranger.cert_pem.decode(), "tls.key": stranger.key_pem.decode()},
    )
    env.wait_failure("ClientCertificateRejected")
    assert env.token() == token
    assert len(env.issued_for_me()) == 2


def test_discovery_is_cached_and_auto_follows_the_issuer(env: Env) -> None:
    env.server.add_client(env.client_id, LONG_SECRET, auth_methods=["client_secret_post"])
    env.secret("oauth-client", {"client_secret": LONG_SECRET})
    before = env.server.discovery_requests
    env.credential(issuerURL=env.server.issuer_url, clientSecretRef={"name": "oauth-client"})
    env.wait_ready(reason="TokenIssued")
    env.credential(
        "api2", issuerURL=env.server.issuer_url, clientSecretRef={"name": "oauth-client"}
    )
    env.wait_ready("api2", reason="TokenIssued")
    # At most one document fetch for both (another test may have cached it already).
    assert env.server.discovery_requests - before <= 1
    methods = {i.auth_method for i in env.issued_for_me()}
    assert methods == {"client_secret_post"}


def test_no_supported_method(env: Env) -> None:
    """auto with only a private key, at an issuer that lists only secret methods."""
    key = ec.generate_private_key(ec.SECP256R1())
    env.secret("signing-key", {"tls.key": pem(key)})
    with TokenServer(issuer_path="/realms/secrets-only", discovery="openid") as server:
        server.auth_methods_supported = ["client_secret_basic", "client_secret_post"]
        env.credential(issuerURL=server.issuer_url, privateKeyRef={"name": "signing-key"})
        env.wait_ready(reason="NoSupportedAuthMethod")
        assert server.requests == 0


def test_issuer_mismatch(env: Env) -> None:
    server = TokenServer(issuer_path="/realms/other", discovery="oauth")
    server.wrong_issuer = True
    with server:
        env.secret("oauth-client", {"client_secret": LONG_SECRET})
        env.credential(issuerURL=server.issuer_url, clientSecretRef={"name": "oauth-client"})
        ready = env.wait_ready(reason="IssuerMismatch")
        assert ready["status"] == "False"
        assert server.requests == 0  # no token request to an endpoint it named


def test_rfc8414_discovery(env: Env) -> None:
    with TokenServer(issuer_path="/tenant-a", discovery="oauth") as server:
        server.add_client(env.client_id, LONG_SECRET)
        env.secret("oauth-client", {"client_secret": LONG_SECRET})
        env.credential(issuerURL=server.issuer_url, clientSecretRef={"name": "oauth-client"})
        env.wait_ready(reason="TokenIssued")
        assert server.discovery_requests == 1
        assert [i.auth_method for i in server.issued] == ["client_secret_basic"]


# -- workload identity federation ---------------------------------------------------------


def service_account(env: Env, name: str, audiences: str | None) -> None:
    annotations = {"tokensync.dev/token-audiences": audiences} if audiences else {}
    annotations[testenv.ALLOWED_DESTINATIONS] = testenv.LOOPBACK
    env.core.create_namespaced_service_account(
        env.ns, {"metadata": {"name": name, "annotations": annotations}}
    )


@pytest.fixture
def workload_identity(env: Env) -> Iterator[None]:
    """The opt-in of deploy/components/workload-identity, removed after the test: the
    default install grants nothing on ServiceAccounts (test_security.py proves it)."""
    with workload_identity_granted(env.api, namespace=env.ns):
        yield


def test_workload_identity_federation(env: Env, workload_identity: None) -> None:
    audience = "api://tokensync-test-exchange"
    subject = f"system:serviceaccount:{env.ns}:billing"
    env.server.add_federated_client(
        env.client_id,
        issuer=SA_ISSUER,
        subject=subject,
        audience=audience,
        fetch_jwks=kubeoidc.jwks_fetcher(env.api, issuer=SA_ISSUER),
    )
    service_account(env, "billing", f"other-audience, {audience}")
    env.credential(
        tokenURL=env.server.url, serviceAccountRef={"name": "billing", "audience": audience}
    )
    env.wait_ready(reason="TokenIssued")
    (issued,) = env.issued_for_me()
    assert issued.auth_method == "workload_identity"
    assert issued.assertion_claims["sub"] == subject
    assert env.get()["status"]["authMethod"] == "workload_identity"
    # A force refresh mints a new ServiceAccount token for the new request.
    env.force_refresh()
    wait_for(lambda: len(env.issued_for_me()) == 2, what="a second federated token")


@pytest.mark.parametrize("audiences", [None, "api://something-else"])
def test_service_account_must_opt_in(
    env: Env, workload_identity: None, audiences: str | None
) -> None:
    audience = "api://tokensync-test-exchange"
    service_account(env, "billing", audiences)
    requests = env.server.requests
    env.credential(
        tokenURL=env.server.url, serviceAccountRef={"name": "billing", "audience": audience}
    )
    ready = env.wait_ready(reason="ServiceAccountNotOptedIn")
    assert "tokensync.dev/token-audiences" in ready["message"]
    assert env.server.requests == requests


def test_workload_identity_granted_in_one_namespace_only(
    env: Env, cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    """deploy/components/workload-identity-namespaced grants a Role and RoleBinding in one
    namespace: the operator mints tokens there, and is refused (ServiceAccountTokenForbidden,
    nothing sent) in a namespace where the same opted-in setup has no grant."""
    tree = manifests.kustomization(
        tmp_path,
        overlay="single-namespace",
        components=["workload-identity-namespaced"],
        watch_namespace=env.ns,
    )
    rendered = manifests.documents(manifests.Kubectl(cluster).kustomize(tree))
    grant = [d for d in rendered if d["metadata"]["name"] == "tokensync-workload-identity"]
    assert sorted((d["kind"], d["metadata"]["namespace"]) for d in grant) == [
        ("Role", env.ns),
        ("RoleBinding", env.ns),
    ]
    audience = "api://tokensync-test-exchange"
    other_ns = f"{env.ns}-other"
    env.core.create_namespace({"metadata": {"name": other_ns}})
    try:
        other = Env(env.api, other_ns, env.server, log=env.log)
        for each in (env, other):
            each.server.add_federated_client(
                each.client_id,
                issuer=SA_ISSUER,
                subject=f"system:serviceaccount:{each.ns}:billing",
                audience=audience,
                fetch_jwks=kubeoidc.jwks_fetcher(env.api, issuer=SA_ISSUER),
            )
            service_account(each, "billing", audience)
        with workload_identity_granted(env.api, grant, namespace=env.ns):
            assert not may_mint_tokens(env.api, other_ns)
            assert not may_mint_tokens(env.api, "kube-system")
            spec = {
                "tokenURL": env.server.url,
                "serviceAccountRef": {"name": "billing", "audience": audience},
            }
            requests = env.server.requests
            other.credential(**spec)
            refused = other.wait_ready(reason="ServiceAccountTokenForbidden")
            assert refused["status"] == "False"
            assert env.server.requests == requests
            env.credential(**spec)
            env.wait_ready(reason="TokenIssued")
            assert [i.auth_method for i in env.issued_for_me()] == ["workload_identity"]
    finally:
        env.core.delete_namespace(other_ns)


def test_no_key_material_anywhere(env: Env, operator: OperatorProcess) -> None:
    """Runs last in this module: nothing secret reached the log, events, status or metrics."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = pem(key)
    env.server.add_client(
        env.client_id, auth_methods=["private_key_jwt"], jwks={"keys": [public_jwk(key)]}
    )
    env.secret("signing-key", {"tls.key": key_pem})
    env.credential(tokenURL=env.server.url, privateKeyRef={"name": "signing-key"})
    env.wait_ready(reason="TokenIssued")
    # and a failing one, whose message is about the key
    env.secret("broken-key", {"tls.key": key_pem[:200] + LONG_SECRET})
    env.credential("broken", tokenURL=env.server.url, privateKeyRef={"name": "broken-key"})
    env.wait_ready("broken", reason="InvalidPrivateKey")
    token = env.token()
    assert token is not None
    body = "".join(key_pem.splitlines()[1:-1])
    seen = " ".join(
        [
            operator.log(),
            operator.metrics(),
            json.dumps([env.get(n).get("status") for n in ("api", "broken")]),
            " ".join(str(e.message) for e in env.core.list_namespaced_event(env.ns).items),
        ]
    )
    for leaked in (body[:40], body[-40:], LONG_SECRET, token):
        assert leaked not in seen
