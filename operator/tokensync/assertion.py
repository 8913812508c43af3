"""Signed client assertions (RFC 7523 section 2.2, OpenID Connect Core section 9).

A client assertion is a short-lived JWT the client signs to prove who it is:
``iss`` = ``sub`` = the client id, ``aud`` = the token endpoint (or what the provider asks
for), a unique ``jti`` and a short ``exp``. Signing is PyJWT's (backed by ``cryptography``);
this module only loads keys, picks the algorithm that fits them, and fills in the claims.

Keys come as PEM (PKCS#8, PKCS#1 or SEC1) or as a JWK (a JSON object with the private
parameters). A certificate, when given, must hold the key's public half; its SHA-256
thumbprint goes into the ``x5t#S256`` header, which is how Entra ID and others find the key.
Loading is cached by content, so a refresh costs a signature, not a key parse.

PyJWT and ``cryptography`` are imported by the first key loaded or assertion signed, not
with this module: they cost about 9 MiB in every process, and most operators sign nothing
(issue 19, decision 0053).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    PrivateKey = (
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey
    )

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Below this an RSA key is refused: providers refuse it too, and later than we would.
MIN_RSA_BITS = 2048
#: HMAC keys shorter than the hash output are weak (RFC 7518 section 3.2).
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class KeyProblem(ValueError):
    """The key or certificate cannot sign assertions; the message names no key material."""

    def __init__(self, message: str, *, reason: str = "InvalidPrivateKey") -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    key: Any = dataclasses.field(repr=False)  # a cryptography private key, or HMAC bytes
    algorithm: str
    key_id: str | None = None
    #: base64url SHA-256 of the certificate's DER, for the ``x5t#S256`` header.
    thumbprint: str | None = None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _natural_algorithm(key: PrivateKey) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: PLC0415 -- late

    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise KeyProblem(f"EC curve {key.curve.name} is not supported (use P-256)")
        return algorithm
    return "EdDSA"


def _check_algorithm(key: PrivateKey, algorithm: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: PLC0415 -- late

    if isinstance(key, rsa.RSAPrivateKey):
        fits = algorithm in _RSA_ALGORITHMS
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        fits = algorithm == _EC_ALGORITHMS.get(key.curve.name)
    else:
        fits = algorithm == "EdDSA"
    if not fits:
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise KeyProblem(f"algorithm {algorithm} does not fit the private key ({kind})")


def _parse_private_key(text: str) -> tuple[PrivateKey, str | None]:
    """The key and, for a JWK, its ``kid``."""
    import jwt  # noqa: PLC0415 -- imported late (module docstring)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa  # noqa: PLC0415

    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
            jwk = jwt.PyJWK(document)
        # PyJWK raises whatever its key parsers raise (NotImplementedError for "alg": "none",
        # TypeError for a list where a string belongs): any of them means a bad JWK.
        except (ValueError, TypeError, KeyError, NotImplementedError, jwt.PyJWTError):
            raise KeyProblem("the private key is not a valid JWK") from None
        key = jwk.key
        kid = document.get("kid") if isinstance(document.get("kid"), str) else None
    else:
        try:
            key = serialization.load_pem_private_key(stripped.encode(), password=None)
        except (ValueError, TypeError):
            raise KeyProblem(
                "the private key is not an unencrypted PEM private key or a JWK"
            ) from None
        kid = None
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise KeyProblem("the key is not an RSA, EC or Ed25519 private key (a public key?)")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise KeyProblem(f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} needed")
    return key, kid


def _thumbprint(certificate: str, key: PrivateKey) -> str:
    from cryptography import x509  # noqa: PLC0415 -- imported late (module docstring)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        cert = x509.load_pem_x509_certificate(certificate.strip().encode())
    except ValueError:
        raise KeyProblem(
            "the certificate is not a PEM X.509 certificate", reason="InvalidCertificate"
        ) from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, raw) != key.public_key().public_bytes(der, raw):
        raise KeyProblem(
            "the certificate does not belong to the private key", reason="InvalidCertificate"
        )
    return _b64url(hashlib.sha256(cert.public_bytes(der)).digest())


# Loading an RSA key costs about 45 ms (cryptography validates it), signing 0.3-0.4 ms;
# EC and Ed25519 keys load in 0.1 ms. The cache holds a few KiB per key.
@functools.lru_cache(maxsize=4096)
def load_private_key(
    text: str, *, certificate: str | None, algorithm: str | None, key_id: str | None
) -> SigningKey:
    """A private key ready to sign, or :class:`KeyProblem`. ``key_id`` wins over a JWK kid."""
    key, jwk_kid = _parse_private_key(text)
    if algorithm is None:
        algorithm = _natural_algorithm(key)
    elif algorithm.startswith("HS"):
        raise KeyProblem(f"{algorithm} is for client_secret_jwt, not a private key")
    else:
        _check_algorithm(key, algorithm)
    thumbprint = _thumbprint(certificate, key) if certificate else None
    return SigningKey(key=key, algorithm=algorithm, key_id=key_id or jwk_kid, thumbprint=thumbprint)


def hmac_key(secret: str, *, algorithm: str | None, key_id: str | None) -> SigningKey:
    """client_secret_jwt: the client secret is the HMAC key (HS256 unless told otherwise)."""
    algorithm = algorithm or "HS256"
    if algorithm not in _HMAC_MIN_BYTES:
        raise KeyProblem(f"client_secret_jwt signs with HS256, HS384 or HS512, not {algorithm}")
    raw = secret.encode()
    if len(raw) < _HMAC_MIN_BYTES[algorithm]:
        # PyJWT refuses short HMAC keys too; say why before the provider is asked.
        raise KeyProblem(
            f"the client secret is shorter than {_HMAC_MIN_BYTES[algorithm]} bytes, "
            f"too short for {algorithm}",
            reason="ClientSecretTooShort",
        )
    return SigningKey(key=raw, algorithm=algorithm, key_id=key_id)


def sign(
    key: SigningKey,
    *,
    client_id: str,
    audience: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    jti: str,
) -> str:
    """One client assertion. ``jti`` must never repeat (the caller draws it at random)."""
    import jwt  # noqa: PLC0415 -- imported late (module docstring)

    issued = int(now.timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": issued,
        "nbf": issued,
        "exp": issued + max(1, int(lifetime.total_seconds())),
    }
    headers: dict[str, str] = {"typ": "JWT"}
    if key.key_id:
        headers["kid"] = key.key_id
    if key.thumbprint:
        headers["x5t#S256"] = key.thumbprint
    try:
        return jwt.encode(claims, key.key, algorithm=key.algorithm, headers=headers)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise KeyProblem(f"signing the client assertion failed ({type(exc).__name__})") from None
