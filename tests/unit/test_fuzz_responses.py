"""Fuzzing the token client over real loopback HTTP: 10,000 generated responses.

Each example is served by a real HTTP server on 127.0.0.1 and fetched by the real client
(streaming, body cap, parsing, error taxonomy). Every response must end as either a
complete token or a TokenError with a known reason whose message carries none of the
response's strings. Anything else (a crash, a half-parsed token) fails the test.
"""

from __future__ import annotations

import asyncio
import collections
import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokensync import failures, model, oauth, responses

EXAMPLES = 10_000
KNOWN_REASONS = {
    "InvalidClient",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "InvalidScope",
    "InvalidRequest",
    "InvalidGrant",
    "Forbidden",
    "NotFound",
    "RequestRejected",
    "RedirectRefused",
    "ServerError",
    "TemporarilyUnavailable",
    "RateLimited",
    "Timeout",
    "TooEarly",
    "ConnectionFailed",
    "BadResponse",
}
MARKER = "LEAKMARK"
OUTCOMES: collections.Counter[str] = collections.Counter()


class _Scripted(http.server.BaseHTTPRequestHandler):
    response: tuple[int, list[tuple[str, str]], bytes] = (200, [], b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, body = type(self).response
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/token"
    server.shutdown()
    server.server_close()
    thread.join()


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
expires = (
    st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["3600", " 60 ", "1e3", "0", "-1", "99999999999999999999", "NaN", "inf"])
    | values
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "access_token": st.text(max_size=40).map(lambda t: MARKER + t) | values,
        "token_type": st.sampled_from(["Bearer", "bearer", "", "mac"]) | values,
        "expires_in": expires,
        "scope": st.text(max_size=20) | values,
        "error": st.sampled_from(["invalid_client", "invalid_scope", "server_error", "x y"])
        | values,
        "error_description": st.text(max_size=40).map(lambda t: MARKER + t),
    },
)


# Mostly well-formed token responses, with the fields that vary in the wild fuzzed.
plausible = st.fixed_dictionaries(
    {
        "access_token": st.text(min_size=1, max_size=40).map(lambda t: MARKER + t),
        "token_type": st.sampled_from(["Bearer", "bearer", "DPoP"]),
    },
    optional={"expires_in": expires, "scope": st.text(max_size=20) | values},
)


def _json_body(doc: object) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


bodies = (
    plausible.map(_json_body)
    | documents.map(_json_body)
    | values.map(_json_body)
    | st.binary(max_size=300)
    | st.sampled_from([b"", b"null", b"[]", b"{", b"access_token=x&token_type=bearer"])
    | st.integers(min_value=1, max_value=3).map(lambda n: b'{"a": "' + b"x" * (n * 700_000) + b'"}')
)
statuses = st.sampled_from(
    [200, 200, 200, 201, 204, 301, 302, 400, 401, 403, 404, 408, 418, 425, 429, 500, 502, 503, 504]
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "text/html",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "",
    ]
)
retry_afters = st.none() | st.sampled_from(
    ["0", "5", "-3", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "1e9"]
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(status=statuses, body=bodies, content_type=content_types, retry_after=retry_afters)
def test_every_response_is_a_complete_token_or_a_clear_error(
    endpoint: str, status: int, body: bytes, content_type: str, retry_after: str | None
) -> None:
    headers = [("Content-Type", content_type)] if content_type else []
    if retry_after is not None:
        headers.append(("Retry-After", retry_after))
    _Scripted.response = (status, headers, body)
    outcome: responses.FetchResult | failures.TokenError
    try:
        outcome = RUNNER.run(_fetch(endpoint))
    except failures.TokenError as err:  # the expected outcome for most responses
        outcome = err
    if isinstance(outcome, failures.TokenError):
        assert outcome.reason in KNOWN_REASONS, outcome.reason
        assert MARKER not in str(outcome)
        assert outcome.retry_after is None or outcome.retry_after >= 0
        OUTCOMES[outcome.reason] += 1
        return
    token = outcome.token
    assert 200 <= status < 300
    assert token.access_token
    assert token.token_type
    assert token.expires_at > token.issued_at
    OUTCOMES["token"] += 1


# One loop and one client for all examples, as in the operator: a loop per example would
# cost more than the request.
RUNNER = asyncio.Runner()
CLIENT: httpx.AsyncClient | None = None


async def _fetch(url: str) -> responses.FetchResult:
    global CLIENT  # noqa: PLW0603 -- created inside the runner's loop, on first use
    if CLIENT is None:
        CLIENT = httpx.AsyncClient()
    return await oauth.fetch_token(
        CLIENT,
        request=model.TokenRequest(token_url=url, auth_method=model.AuthMethod.CLIENT_SECRET_POST),
        credentials=model.ClientAuthMaterial(client_id="fuzz", client_secret="fuzz-secret"),
        default_lifetime=timedelta(hours=1),
        now=lambda: datetime.now(UTC),
        timeout=5.0,
    )


def test_outcomes_cover_tokens_and_errors() -> None:
    """Runs after the fuzz test (file order): both outcomes really happened."""
    total = sum(OUTCOMES.values())
    print(f"fuzzed responses: {total}; outcomes: {dict(OUTCOMES)}")
    assert total >= EXAMPLES
    assert OUTCOMES["token"] > 0
    assert OUTCOMES["BadResponse"] > 0
