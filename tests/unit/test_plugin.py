"""The kubectl plugin's pure parts: token decoding, durations, the status row."""

from __future__ import annotations

import base64
import datetime
import json

import jwt
import pytest

from tokensync import plugin

NOW = datetime.datetime(2026, 11, 22, 23, 0, tzinfo=datetime.UTC)


def segment(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def test_decodes_a_jwt_without_the_key() -> None:
    token = jwt.encode({"sub": "svc", "exp": 2000000000}, "k" * 32, algorithm="HS256")
    decoded = plugin.decode_token(token)
    assert decoded.format == "jwt"
    assert decoded.claims == {"sub": "svc", "exp": 2000000000}
    assert decoded.header is not None
    assert decoded.header["alg"] == "HS256"


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token-value",
        "a.b.c",  # three segments, not base64 JSON
        f"{segment(['not', 'an', 'object'])}.{segment({'sub': 'x'})}.sig",
        f"{segment({'typ': 'JWT'})}.{segment({'sub': 'x'})}.sig",  # no alg: not a JOSE header
        f"{segment({'alg': 'none'})}.{segment('claims as a string')}.sig",
        "2YotnFZFEjr1zCsicMWpAA",  # RFC 6749's example access token
    ],
)
def test_anything_else_is_opaque(token: str) -> None:
    assert plugin.decode_token(token).format == "opaque"


def test_an_encrypted_jwt_is_recognised() -> None:
    token = ".".join([segment({"alg": "RSA-OAEP", "enc": "A256GCM"}), "k", "iv", "ct", "tag"])
    decoded = plugin.decode_token(token)
    assert decoded.format == "jwe"
    assert decoded.claims is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (125, "2m5s"),
        (720, "12m"),
        (3600, "1h"),
        (3660, "1h1m"),
        (90000, "1d1h"),
        (172800, "2d"),
    ],
)
def test_short_duration(seconds: float, text: str) -> None:
    assert plugin.short_duration(seconds) == text


def test_relative_times() -> None:
    assert plugin.relative(NOW + datetime.timedelta(minutes=5), NOW) == "in 5m"
    assert plugin.relative(NOW - datetime.timedelta(seconds=30), NOW) == "30s ago"
    assert plugin.relative(None, NOW) == "-"


def credential(status: dict[str, object] | None) -> dict[str, object]:
    body: dict[str, object] = {"metadata": {"namespace": "ns", "name": "api"}}
    if status is not None:
        body["status"] = status
    return body


def test_status_row_of_a_new_credential() -> None:
    row = plugin.status_row(credential(None), NOW)
    assert row == {
        "namespace": "ns",
        "name": "api",
        "ready": "Unknown",
        "reason": "-",
        "expires": "-",
        "next refresh": "-",
        "last error": "-",
    }


@pytest.mark.parametrize(
    ("status", "reason", "error"),
    [
        ("True", "TokenIssued", "-"),
        ("True", "RefreshFailing", "ServerError: 503"),
        ("False", "InvalidClient", "ServerError: 503"),
    ],
)
def test_last_error_only_when_failing(status: str, reason: str, error: str) -> None:
    condition = {"type": "Ready", "status": status, "reason": reason, "message": "ServerError: 503"}
    row = plugin.status_row(credential({"conditions": [condition]}), NOW)
    assert row["last error"] == error
    assert row["reason"] == reason


def test_fingerprint_is_short_and_stable() -> None:
    assert plugin.fingerprint("abc") == plugin.fingerprint("abc")
    assert plugin.fingerprint("abc") != plugin.fingerprint("abd")
    assert len(plugin.fingerprint("abc")) == len("sha256:") + 12
