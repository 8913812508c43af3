"""Keys and tokens for the grant tests (decision 0047): the client's signing key for the
JWT bearer grant, and an issuer of subject tokens for token exchange, shaped like a
ServiceAccount token (RS256, iss, sub, aud, exp)."""

from __future__ import annotations

import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
SUBJECT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SUBJECT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwks(key: rsa.RSAPrivateKey = KEY, kid: str = "k1") -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.pop("key_ops", None)
    return {"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}


def subject_token(issuer: str = SUBJECT_ISSUER) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "system:serviceaccount:apps:billing",
        "aud": "sts",
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, SUBJECT_KEY, algorithm="RS256", headers={"kid": "sa"})
