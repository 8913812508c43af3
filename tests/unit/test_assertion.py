"""Client assertions (RFC 7523): keys loaded from PEM or JWK, signed, and verified by PyJWT.

Every assertion signed here is verified independently with the key's public half, as a
provider would; the ``x5t#S256`` thumbprint is recomputed from the certificate's DER.
Refusals say why (``KeyProblem.reason``) and never carry the key material.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import traceback
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tokensync import assertion

CLIENT_ID = "payments-service"
AUDIENCE = "https://login.example.com/oauth2/token"
LIFETIME = datetime.timedelta(minutes=2)
HMAC_SECRET = "k" * 64  # long enough for HS512 (RFC 7518 section 3.2)


# -- key material, made here -------------------------------------------------------------


_FACTORIES: dict[str, Callable[[], Any]] = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa-other": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    # Refused by the module; made here only to see it refused.
    "rsa1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ed448": ed448.Ed448PrivateKey.generate,
}


@functools.cache
def make_key(kind: str) -> Any:
    return _FACTORIES[kind]()


def pem(key: Any, *, traditional: bool = False) -> str:
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if traditional else None
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            fmt or serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def public_pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def to_jwk(key: Any, **extra: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        document = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        document = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        document = OKPAlgorithm.to_jwk(key, as_dict=True)
    return {**document, **extra}


def certificate(key: Any, *, common_name: str = CLIENT_ID) -> str:
    """A self-signed certificate for ``key`` (how Entra ID and others register a key)."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def thumbprint(certificate_pem: str) -> str:
    """base64url(SHA-256(DER)) without padding, computed independently of the module."""
    der = x509.load_pem_x509_certificate(certificate_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def secret_parts(text: str) -> list[str]:
    """Substrings of a key's text that must never appear in an error or a repr."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
        except ValueError:
            return [stripped]
        return [v for k, v in document.items() if k in ("d", "p", "q", "dp", "dq", "qi", "k")]
    lines = [line for line in stripped.splitlines() if line and not line.startswith("-----")]
    return [line for line in lines if len(line) >= 16]


def sign(
    key: assertion.SigningKey, *, jti: str = "jti-1", now: datetime.datetime | None = None
) -> str:
    return assertion.sign(
        key,
        client_id=CLIENT_ID,
        audience=AUDIENCE,
        now=now or datetime.datetime.now(datetime.UTC),
        lifetime=LIFETIME,
        jti=jti,
    )


def verify(token: str, public_key: Any, algorithm: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key,
        algorithms=[algorithm],
        audience=AUDIENCE,
        issuer=CLIENT_ID,
        options={"require": ["iss", "sub", "aud", "jti", "iat", "nbf", "exp"]},
    )
    return claims


def load(
    text: str,
    *,
    certificate: str | None = None,
    algorithm: str | None = None,
    key_id: str | None = None,
) -> assertion.SigningKey:
    return assertion.load_private_key(
        text, certificate=certificate, algorithm=algorithm, key_id=key_id
    )


# -- natural algorithms, PEM (PKCS#8 and traditional) and JWK ---------------------------

KEY_FORMS = [
    # (key kind, form, natural algorithm)
    ("rsa", "pkcs8", "RS256"),
    ("rsa", "traditional", "RS256"),  # PKCS#1 "BEGIN RSA PRIVATE KEY"
    ("rsa", "jwk", "RS256"),
    ("p256", "pkcs8", "ES256"),
    ("p256", "traditional", "ES256"),  # SEC1 "BEGIN EC PRIVATE KEY"
    ("p256", "jwk", "ES256"),
    ("p384", "pkcs8", "ES384"),
    ("p384", "traditional", "ES384"),
    ("p384", "jwk", "ES384"),
    ("p521", "pkcs8", "ES512"),
    ("ed25519", "pkcs8", "EdDSA"),  # Ed25519 has no traditional PEM form
    ("ed25519", "jwk", "EdDSA"),
    ("ed448", "pkcs8", "EdDSA"),
]


def key_text(kind: str, form: str) -> str:
    key = make_key(kind)
    if form == "jwk":
        return json.dumps(to_jwk(key))
    return pem(key, traditional=form == "traditional")


@pytest.mark.parametrize(
    ("kind", "form", "algorithm"),
    [pytest.param(*case, id="-".join(case[:2])) for case in KEY_FORMS],
)
def test_signs_with_the_natural_algorithm_and_verifies(
    kind: str, form: str, algorithm: str
) -> None:
    key = make_key(kind)
    text = key_text(kind, form)
    if form == "traditional":
        assert "BEGIN PRIVATE KEY" not in text  # really the traditional form
    signing = load(text)
    assert signing.algorithm == algorithm
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    token = sign(signing, jti="unique-jti", now=now)

    claims = verify(token, key.public_key(), algorithm)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == AUDIENCE
    assert claims["jti"] == "unique-jti"
    assert claims["iat"] == claims["nbf"] == int(now.timestamp())
    assert claims["exp"] - claims["iat"] == LIFETIME.total_seconds()
    header = jwt.get_unverified_header(token)
    assert header == {"alg": algorithm, "typ": "JWT"}  # no kid, no thumbprint unless given


@pytest.mark.parametrize("kind", ["rsa", "p256", "ed25519"])
def test_another_key_does_not_verify_the_signature(kind: str) -> None:
    # The verification above is real: another key of the same kind refuses the same token.
    token = sign(load(pem(make_key(kind))))
    algorithm = jwt.get_unverified_header(token)["alg"]
    stranger = _FACTORIES[kind]()  # fresh, not the cached key
    with pytest.raises(jwt.InvalidSignatureError):
        verify(token, stranger.public_key(), algorithm)


@pytest.mark.parametrize("algorithm", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_explicit_rsa_algorithms(algorithm: str) -> None:
    key = make_key("rsa")
    signing = load(pem(key), algorithm=algorithm)
    assert signing.algorithm == algorithm
    token = sign(signing)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert verify(token, key.public_key(), algorithm)["sub"] == CLIENT_ID
    # PSS signatures are randomised, PKCS#1 v1.5 ones deterministic: the padding really is
    # the one the header names.
    now = datetime.datetime.now(datetime.UTC)
    again = sign(signing, now=now) == sign(signing, now=now)
    assert again is algorithm.startswith("RS")


@pytest.mark.parametrize(
    ("kind", "algorithm"), [("p256", "ES256"), ("p384", "ES384"), ("ed25519", "EdDSA")]
)
def test_explicit_algorithm_that_fits_is_kept(kind: str, algorithm: str) -> None:
    key = make_key(kind)
    token = sign(load(pem(key), algorithm=algorithm))
    assert verify(token, key.public_key(), algorithm)["aud"] == AUDIENCE


# -- headers: kid and x5t#S256 -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384", "ed25519"])
def test_certificate_thumbprint_goes_into_x5t_s256(kind: str) -> None:
    key = make_key(kind)
    cert = certificate(key)
    signing = load(pem(key), certificate=cert, key_id="key-2026")
    assert signing.thumbprint == thumbprint(cert)
    token = sign(signing)
    header = jwt.get_unverified_header(token)
    assert header["x5t#S256"] == thumbprint(cert)
    assert "=" not in header["x5t#S256"]
    assert header["kid"] == "key-2026"
    assert header["typ"] == "JWT"
    verify(token, x509.load_pem_x509_certificate(cert.encode()).public_key(), signing.algorithm)


def test_jwk_kid_is_the_default_and_key_id_wins() -> None:
    key = make_key("p256")
    text = json.dumps(to_jwk(key, kid="jwk-kid"))
    assert jwt.get_unverified_header(sign(load(text)))["kid"] == "jwk-kid"
    assert jwt.get_unverified_header(sign(load(text, key_id="spec-kid")))["kid"] == "spec-kid"
    # A PEM key has no kid of its own.
    assert "kid" not in jwt.get_unverified_header(sign(load(pem(key))))


def test_each_assertion_carries_its_own_jti() -> None:
    key = make_key("rsa")
    signing = load(pem(key))
    first, second = sign(signing, jti="a" * 32), sign(signing, jti="b" * 32)
    assert first != second
    claims = [verify(t, key.public_key(), "RS256")["jti"] for t in (first, second)]
    assert claims == ["a" * 32, "b" * 32]


def test_a_sub_second_lifetime_still_expires_after_it_is_issued() -> None:
    signing = load(pem(make_key("p256")))
    now = datetime.datetime.now(datetime.UTC)
    token = assertion.sign(
        signing,
        client_id=CLIENT_ID,
        audience=AUDIENCE,
        now=now,
        lifetime=datetime.timedelta(milliseconds=10),
        jti="j",
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1


# -- refusals ------------------------------------------------------------------------------


def _encrypted(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ).decode()
    )


def _public_jwk(kind: str) -> str:
    document = to_jwk(make_key(kind))
    return json.dumps(
        {k: v for k, v in document.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    )


GARBAGE_KEY = "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----"
GARBAGE_CERT = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----"
# Key and certificate texts by name, built lazily (key generation is not free).
TEXTS: dict[str, Callable[[], str]] = {
    "rsa": lambda: pem(make_key("rsa")),
    "p256": lambda: pem(make_key("p256")),
    "ed25519": lambda: pem(make_key("ed25519")),
    "rsa1024": lambda: pem(make_key("rsa1024")),
    "rsa1024-jwk": lambda: json.dumps(to_jwk(make_key("rsa1024"))),
    "public-pem": lambda: public_pem(make_key("rsa")),
    "public-jwk-rsa": lambda: _public_jwk("rsa"),
    "public-jwk-ec": lambda: _public_jwk("p256"),
    "public-jwk-okp": lambda: _public_jwk("ed25519"),
    "garbage-pem": lambda: GARBAGE_KEY,
    "not-pem": lambda: "hello, world",
    "empty": lambda: "",
    "encrypted": lambda: _encrypted(make_key("p256")),
    "broken-json": lambda: '{"kty": "RSA",',
    "no-kty": lambda: "{}",
    "bad-coordinates": lambda: '{"kty":"EC","crv":"P-256","x":"AA","y":"AA","d":"AA"}',
    "x25519": lambda: '{"kty":"OKP","crv":"X25519","x":"AA","d":"AA"}',
    "oct": lambda: '{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}',
    "secp256k1": lambda: pem(make_key("secp256k1")),
    "cert-rsa-other": lambda: certificate(make_key("rsa-other")),
    "cert-ed25519": lambda: certificate(make_key("ed25519")),
    "garbage-cert": lambda: GARBAGE_CERT,
    "not-cert": lambda: "not a certificate",
}
BAD_KEY, BAD_CERT = "InvalidPrivateKey", "InvalidCertificate"
REFUSALS = [
    # (id, key, algorithm, certificate, reason, fragment of the message)
    ("ES256-on-RSA", "rsa", "ES256", None, BAD_KEY, "does not fit"),
    ("RS256-on-EC", "p256", "RS256", None, BAD_KEY, "does not fit"),
    ("ES384-on-P256", "p256", "ES384", None, BAD_KEY, "does not fit"),
    ("PS256-on-Ed25519", "ed25519", "PS256", None, BAD_KEY, "does not fit"),
    ("EdDSA-on-RSA", "rsa", "EdDSA", None, BAD_KEY, "does not fit"),
    ("HS256-for-RSA", "rsa", "HS256", None, BAD_KEY, "client_secret_jwt"),
    ("HS512-for-EC", "p256", "HS512", None, BAD_KEY, "client_secret_jwt"),
    ("rsa-1024", "rsa1024", None, None, BAD_KEY, "1024 bits"),
    ("rsa-1024-jwk", "rsa1024-jwk", None, None, BAD_KEY, "at least 2048"),
    ("public-pem", "public-pem", None, None, BAD_KEY, "not an unencrypted PEM"),
    ("public-jwk-rsa", "public-jwk-rsa", None, None, BAD_KEY, "a public key?"),
    ("public-jwk-ec", "public-jwk-ec", None, None, BAD_KEY, "a public key?"),
    ("public-jwk-okp", "public-jwk-okp", None, None, BAD_KEY, "a public key?"),
    ("garbage-pem", "garbage-pem", None, None, BAD_KEY, "not an unencrypted PEM"),
    ("not-pem-at-all", "not-pem", None, None, BAD_KEY, "not an unencrypted PEM"),
    ("empty", "empty", None, None, BAD_KEY, "not an unencrypted PEM"),
    ("encrypted-pem", "encrypted", None, None, BAD_KEY, "unencrypted"),
    ("broken-json", "broken-json", None, None, BAD_KEY, "not a valid JWK"),
    ("jwk-without-kty", "no-kty", None, None, BAD_KEY, "not a valid JWK"),
    ("jwk-bad-coordinates", "bad-coordinates", None, None, BAD_KEY, "not a valid JWK"),
    ("jwk-unknown-curve", "x25519", None, None, BAD_KEY, "not a valid JWK"),
    ("jwk-oct", "oct", None, None, BAD_KEY, "not an RSA, EC or Ed25519"),
    ("secp256k1", "secp256k1", None, None, BAD_KEY, "secp256k1 is not supported"),
    ("cert-of-another-key", "rsa", None, "cert-rsa-other", BAD_CERT, "does not belong"),
    ("cert-of-another-kind", "p256", None, "cert-ed25519", BAD_CERT, "does not belong"),
    ("garbage-cert", "p256", None, "garbage-cert", BAD_CERT, "not a PEM X.509"),
    ("cert-not-pem", "p256", None, "not-cert", BAD_CERT, "not a PEM X.509"),
    ("key-as-cert", "p256", None, "p256", BAD_CERT, "not a PEM X.509"),
]


def assert_no_material(exc: BaseException, *texts: str) -> None:
    shown = " ".join(
        [str(exc), repr(exc), *map(str, exc.args), "".join(traceback.format_exception(exc))]
    )
    for text in texts:
        for part in secret_parts(text):
            assert part not in shown


@pytest.mark.parametrize(
    ("key", "algorithm", "cert", "reason", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_refusals_say_why_without_key_material(
    key: str, algorithm: str | None, cert: str | None, reason: str, fragment: str
) -> None:
    text = TEXTS[key]()
    cert_text = TEXTS[cert]() if cert else None
    with pytest.raises(assertion.KeyProblem) as caught:
        load(text, algorithm=algorithm, certificate=cert_text)
    assert caught.value.reason == reason
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert caught.value.__cause__ is None  # raised "from None" or fresh: no library text
    assert_no_material(caught.value, text)


@pytest.mark.parametrize(
    "alg", [pytest.param("none", id="alg-none"), pytest.param(["RS256"], id="alg-list")]
)
def test_a_jwk_with_an_unusable_alg_member_is_a_key_problem(alg: object) -> None:
    text = json.dumps(to_jwk(make_key("rsa"), alg=alg))  # type: ignore[arg-type]
    with pytest.raises(assertion.KeyProblem) as caught:
        load(text)
    assert caught.value.reason == "InvalidPrivateKey"


def test_signing_key_repr_shows_no_key_material() -> None:
    key = make_key("rsa")
    text = pem(key)
    signing = load(text, certificate=certificate(key), key_id="kid-1")
    shown = repr(signing) + str(signing)
    for part in secret_parts(text):
        assert part not in shown
    numbers = key.private_numbers()
    assert str(numbers.d) not in shown
    assert str(numbers.p) not in shown
    assert "kid-1" in shown  # the harmless parts are there
    assert "RS256" in shown
    hmac = assertion.hmac_key(HMAC_SECRET, algorithm=None, key_id=None)
    assert HMAC_SECRET not in repr(hmac) + str(hmac)
    assert HMAC_SECRET.encode().hex() not in repr(hmac)


def test_loaded_keys_are_cached_by_content() -> None:
    text = pem(make_key("p384"))
    assert load(text) is load(text)
    assert load(text, key_id="other") is not load(text)


# -- client_secret_jwt: HMAC keys ------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [(None, "HS256"), ("HS256", "HS256"), ("HS384", "HS384"), ("HS512", "HS512")],
)
def test_hmac_assertions_verify_with_the_secret(algorithm: str | None, expected: str) -> None:
    signing = assertion.hmac_key(HMAC_SECRET, algorithm=algorithm, key_id="hmac-kid")
    assert signing.algorithm == expected
    token = sign(signing)
    claims = verify(token, HMAC_SECRET.encode(), expected)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert jwt.get_unverified_header(token) == {"alg": expected, "typ": "JWT", "kid": "hmac-kid"}
    assert HMAC_SECRET not in token
    with pytest.raises(jwt.InvalidSignatureError):
        verify(token, ("x" * 64).encode(), expected)


@pytest.mark.parametrize(("algorithm", "shortest"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_hmac_secret_length_is_checked_in_bytes(algorithm: str, shortest: int) -> None:
    assert (
        assertion.hmac_key("s" * shortest, algorithm=algorithm, key_id=None).algorithm == algorithm
    )
    too_short = "s" * (shortest - 1)
    with pytest.raises(assertion.KeyProblem) as caught:
        assertion.hmac_key(too_short, algorithm=algorithm, key_id=None)
    assert caught.value.reason == "ClientSecretTooShort"
    assert f"shorter than {shortest} bytes" in str(caught.value)
    assert too_short not in str(caught.value)
    # Bytes, not characters: 16 two-byte characters are 32 bytes.
    if algorithm == "HS256":
        assert assertion.hmac_key("é" * 16, algorithm=algorithm, key_id=None)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA", "none", "HS1024"])
def test_hmac_refuses_other_algorithms(algorithm: str) -> None:
    with pytest.raises(assertion.KeyProblem) as caught:
        assertion.hmac_key(HMAC_SECRET, algorithm=algorithm, key_id=None)
    assert "HS256, HS384 or HS512" in str(caught.value)
    assert HMAC_SECRET not in str(caught.value)
