"""The token client: response parsing and error taxonomy (``responses``), request building
and sending (``oauth``), URL checks (``urlpolicy``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import failures, model, oauth, responses, urlpolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
URL = "https://login.example.com/oauth2/token"
# Characters that break naive Basic encoding: ':' splits, '%' and '+' decode, non-ASCII.
CREDS = model.ClientAuthMaterial(client_id="svc:a%b+ü", client_secret="p@ss:w%rd +é")


def parse(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> responses.Token:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return responses.parse_token_response(
        status_code=status, headers=headers or {}, body=raw, sent_at=T0, default_lifetime=H
    )


def jwt_with(claims: object) -> str:
    def segment(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join([segment(b'{"alg":"none"}'), segment(json.dumps(claims).encode()), "sig"])


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(3600, H), (90.5, timedelta(seconds=90.5)), ("3600", H), (" 60 ", timedelta(seconds=60))],
)
def test_expires_in_number_or_numeric_string(expires_in: object, lifetime: timedelta) -> None:
    token = parse({"access_token": "abc", "token_type": "Bearer", "expires_in": expires_in})
    assert (token.issued_at, token.lifetime, token.lifetime_source) == (T0, lifetime, "expires_in")
    assert token.expires_at == T0 + lifetime


@pytest.mark.parametrize(
    "expires_in", [True, False, 0, -1, "abc", "1e3", "nan", 1e30, float("inf"), [], {}, "0"]
)
def test_bad_expires_in_is_a_bad_response(expires_in: object) -> None:
    with pytest.raises(failures.TokenError) as caught:
        parse({"access_token": "abc", "token_type": "Bearer", "expires_in": expires_in})
    assert (caught.value.reason, caught.value.permanent) == ("BadResponse", False)


def test_lifetime_falls_back_to_jwt_exp_then_default() -> None:
    exp = int((T0 + timedelta(minutes=10)).timestamp())
    token = parse({"access_token": jwt_with({"exp": exp}), "token_type": "Bearer"})
    assert (token.lifetime, token.lifetime_source) == (timedelta(minutes=10), "jwt_exp")
    token = parse({"access_token": "opaque", "token_type": "Bearer", "expires_in": None})
    assert (token.lifetime, token.lifetime_source) == (H, "default")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": True},
        {"exp": "1767226200"},
        {"exp": 1e20},
        {"exp": (T0 + timedelta(days=5000)).timestamp()},
        {"sub": "no exp"},
        [1, 2],
    ],
)
def test_unusable_jwt_exp_uses_default_lifetime(claims: object) -> None:
    token = parse({"access_token": jwt_with(claims), "token_type": "Bearer"})
    assert token.lifetime_source == "default"


@pytest.mark.parametrize("access_token", ["a.b.c", "a.!!!.c", "a..c", "x.eyJleHAiOg.y", "é.é.é"])
def test_dotted_opaque_tokens_use_default_lifetime(access_token: str) -> None:
    assert parse({"access_token": access_token, "token_type": "x"}).lifetime_source == "default"


@pytest.mark.parametrize("expires_in", [None, 3600, "3600"])
@pytest.mark.parametrize("past", [timedelta(minutes=1), timedelta(0)], ids=["past", "now"])
def test_expired_jwt_exp_is_a_bad_response(expires_in: object, past: timedelta) -> None:
    """Whatever expires_in says: a resource server refuses the token (decision 0031)."""
    exp = (T0 - past).timestamp()
    body = {"access_token": jwt_with({"exp": exp}), "token_type": "Bearer"}
    with pytest.raises(failures.TokenError, match="clock skew") as caught:
        parse({**body, "expires_in": expires_in})
    assert (caught.value.reason, caught.value.permanent) == ("BadResponse", False)


@pytest.mark.parametrize(
    ("expires_in", "exp_after", "lifetime", "source"),
    [
        (3600, timedelta(minutes=10), timedelta(minutes=10), "jwt_exp"),  # exp is earlier
        (600, H, timedelta(minutes=10), "expires_in"),  # expires_in is earlier
        (600, timedelta(minutes=10), timedelta(minutes=10), "expires_in"),  # a tie
        (60, timedelta(seconds=59.5), timedelta(seconds=59.5), "jwt_exp"),
        (600, timedelta(days=5000), timedelta(minutes=10), "expires_in"),  # exp in ms: ignored
    ],
)
def test_the_earlier_of_expires_in_and_jwt_exp_wins(
    expires_in: int, exp_after: timedelta, lifetime: timedelta, source: str
) -> None:
    exp = (T0 + exp_after).timestamp()
    body = {"access_token": jwt_with({"exp": exp}), "token_type": "Bearer"}
    token = parse({**body, "expires_in": expires_in})
    assert (token.lifetime, token.lifetime_source) == (lifetime, source)
    assert token.expires_at == T0 + lifetime


def test_content_type_is_not_trusted_and_scope_is_kept() -> None:
    body = {"access_token": "abc", "token_type": "bearer", "expires_in": 60, "scope": "a b"}
    token = parse(body, headers={"content-type": "text/plain", "cache-control": "max-age=9"})
    assert (token.token_type, token.scope) == ("bearer", "a b")
    assert "abc" not in repr(token)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"token"',
        b"null",
        b"[" * 100_000,
        b"{}",
        b'{"access_token": "", "token_type": "Bearer"}',
        b'{"access_token": 42, "token_type": "Bearer"}',
        b'{"access_token": "abc"}',
        b'{"access_token": "abc", "token_type": ""}',
        b'{"token_type": "Bearer"}',
        b" " * (responses.MAX_BODY_BYTES + 1),
    ],
)
def test_unusable_bodies_are_transient_bad_responses(body: bytes) -> None:
    with pytest.raises(failures.TokenError) as caught:
        parse(body)
    assert (caught.value.reason, caught.value.permanent) == ("BadResponse", False)


# -- error taxonomy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "reason", "permanent", "code"),
    [
        (400, {"error": "invalid_client"}, "InvalidClient", True, "invalid_client"),
        (401, {"error": "invalid_client"}, "InvalidClient", True, "invalid_client"),
        (400, {"error": "unauthorized_client"}, "UnauthorizedClient", True, "unauthorized_client"),
        (400, {"error": "unsupported_grant_type"}, "UnsupportedGrantType", True, None),
        (400, {"error": "invalid_scope"}, "InvalidScope", True, "invalid_scope"),
        (400, {"error": "invalid_request"}, "InvalidRequest", True, "invalid_request"),
        (400, {"error": "invalid_grant"}, "InvalidGrant", True, "invalid_grant"),
        (200, {"error": "invalid_scope", "access_token": "x"}, "InvalidScope", True, None),
        (200, {"error": "server_error"}, "ServerError", False, "server_error"),
        (400, {"error": "temporarily_unavailable"}, "TemporarilyUnavailable", False, None),
        (400, {"error": "made_up"}, "RequestRejected", True, "made_up"),
        (400, {"error": "has space"}, "RequestRejected", True, "other"),
        (400, {"error": "x" * 65}, "RequestRejected", True, "other"),
        (400, {"error": 7}, "RequestRejected", True, "other"),
        (400, b"<html>", "InvalidRequest", True, None),
        (401, b"", "InvalidClient", True, None),
        (401, {"error": "invalid_token"}, "RequestRejected", True, "invalid_token"),
        (403, b"", "Forbidden", True, None),
        (404, b"", "NotFound", True, None),
        (405, b"", "RequestRejected", True, None),
        (408, b"", "Timeout", False, None),
        (425, b"", "TooEarly", False, None),
        (429, b"", "RateLimited", False, None),
        (500, {"error": "invalid_client"}, "ServerError", False, "invalid_client"),
        (502, b"<html>bad gateway</html>", "ServerError", False, None),
        (503, b"", "ServerError", False, None),
        (301, b"", "RedirectRefused", True, None),
        (307, {"error": "invalid_client"}, "RedirectRefused", True, None),
        (101, b"", "BadResponse", False, None),
    ],
)
def test_error_taxonomy(
    status: int, body: object, reason: str, *, permanent: bool, code: str | None
) -> None:
    with pytest.raises(failures.TokenError) as caught:
        parse(body, status=status)
    err = caught.value
    assert (err.reason, err.permanent, err.status_code) == (reason, permanent, status)
    if code is not None:
        assert err.error_code == code
    assert str(status) in str(err)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "7", 7.0),
        (429, "Thu, 01 Jan 2026 00:00:30 GMT", 30.0),
        (503, "2", 2.0),
        (429, "soon", None),
        (429, None, None),
        (400, "7", None),
    ],
)
def test_retry_after_is_honoured_for_429_and_5xx(
    status: int, retry_after: str | None, expected: float | None
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    with pytest.raises(failures.TokenError) as caught:
        parse(b"", status=status, headers=headers)
    assert caught.value.retry_after == expected


def test_error_text_never_carries_the_description_or_body() -> None:
    body = {"error": "invalid_client", "error_description": "secret hunter2 was wrong"}
    with pytest.raises(failures.TokenError) as caught:
        parse(body, status=401)
    text = f"{caught.value} {caught.value!r} {vars(caught.value)}"
    assert "hunter2" not in text
    assert "invalid_client" in text


def test_naive_sent_at_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone"):
        responses.parse_token_response(
            status_code=200,
            headers={},
            body=b"{}",
            sent_at=datetime(2026, 1, 1),
            default_lifetime=H,
        )


# -- parsing properties ----------------------------------------------------------------

MARKER = "s3cr3t tok€n"  # a space and a non-ASCII character: never a "safe" error code
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
interesting_keys = st.sampled_from(
    ["access_token", "token_type", "expires_in", "scope", "error", "error_description"]
)
documents = st.dictionaries(interesting_keys | st.text(max_size=8), json_values, max_size=7)
statuses = st.sampled_from([200, 201, 204, 301, 400, 401, 403, 408, 429, 500, 503])


@given(body=st.binary(max_size=2048), status=statuses, retry_after=st.text(max_size=40))
def test_arbitrary_bytes_give_a_token_or_a_token_error(
    body: bytes, status: int, retry_after: str
) -> None:
    with contextlib.suppress(failures.TokenError):
        parse(body, status=status, headers={"retry-after": retry_after})


@given(document=documents | json_values, status=statuses)
def test_arbitrary_json_gives_a_token_or_a_token_error(document: object, status: int) -> None:
    try:
        token = parse(json.dumps(document).encode(), status=status)
    except failures.TokenError:
        return
    assert token.access_token
    assert T0 < token.expires_at <= T0 + responses.MAX_LIFETIME


@given(document=documents, status=statuses)
def test_error_text_never_contains_token_or_description(
    document: dict[str, object], status: int
) -> None:
    document = {**document, "access_token": MARKER, "error_description": MARKER}
    try:
        parse(json.dumps(document).encode(), status=status)
    except failures.TokenError as err:
        text = f"{err} {err!r} {err.reason} {err.error_code} {err.args}"
    else:
        return
    assert MARKER not in text


# -- request building with a mock transport -----------------------------------------------

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


def clock() -> Callable[[], datetime]:
    ticks: Iterator[datetime] = (T0 + timedelta(seconds=i) for i in range(1000))
    return lambda: next(ticks)


async def fetch(client: httpx.AsyncClient, request: model.TokenRequest) -> responses.FetchResult:
    return await oauth.fetch_token(
        client, request=request, credentials=CREDS, default_lifetime=H, now=lambda: T0
    )


def form(request: httpx.Request) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(request.content.decode(), keep_blank_values=True)


async def test_basic_encodes_each_part_before_base64(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    spec = model.TokenRequest(token_url=URL, auth_method=model.AuthMethod.CLIENT_SECRET_BASIC)
    result = await fetch(client, spec)
    assert result.auth_method is model.AuthMethod.CLIENT_SECRET_BASIC
    sent = rec.requests[0]
    scheme, _, encoded = sent.headers["authorization"].partition(" ")
    decoded = base64.b64decode(encoded).decode("ascii")
    assert scheme == "Basic"
    assert decoded == "svc%3Aa%25b%2B%C3%BC:p%40ss%3Aw%25rd%20%2B%C3%A9"
    user, _, password = decoded.partition(":")
    assert urllib.parse.unquote_plus(user) == CREDS.client_id
    assert urllib.parse.unquote_plus(password) == CREDS.client_secret
    assert urllib.parse.unquote(password) == CREDS.client_secret
    assert form(sent) == [("grant_type", "client_credentials")]
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"


async def test_post_puts_credentials_and_parameters_in_the_form(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    spec = model.TokenRequest(
        token_url=URL,
        auth_method=model.AuthMethod.CLIENT_SECRET_POST,
        scopes=("payments.read", "payments.write"),
        audience="https://api.example.com",
        resources=("https://a.example.com", "https://b.example.com"),
        extra_params=(("tenant", "acme & co"),),
    )
    await fetch(client, spec)
    sent = rec.requests[0]
    assert "authorization" not in sent.headers
    assert form(sent) == [
        ("grant_type", "client_credentials"),
        ("scope", "payments.read payments.write"),
        ("audience", "https://api.example.com"),
        ("resource", "https://a.example.com"),
        ("resource", "https://b.example.com"),
        ("tenant", "acme & co"),
        ("client_id", CREDS.client_id),
        ("client_secret", CREDS.client_secret),
    ]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [((), None), (("r1",), "r1"), (("r1", "r2"), ["r1", "r2"])],
)
async def test_json_method_sends_a_json_body(
    recorder: tuple[Recorder, httpx.AsyncClient], resources: tuple[str, ...], expected: object
) -> None:
    rec, client = recorder
    spec = model.TokenRequest(
        token_url=URL,
        auth_method=model.AuthMethod.CLIENT_SECRET_JSON,
        scopes=("a",),
        resources=resources,
        extra_params=(("tenant", "acme"),),
    )
    result = await fetch(client, spec)
    assert result.auth_method is model.AuthMethod.CLIENT_SECRET_JSON
    sent = rec.requests[0]
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    document = json.loads(sent.content)
    assert document.pop("resource", None) == expected
    assert document == {
        "grant_type": "client_credentials",
        "scope": "a",
        "tenant": "acme",
        "client_id": CREDS.client_id,
        "client_secret": CREDS.client_secret,
    }


@pytest.mark.parametrize("key", ["grant_type", "client_id", "client_secret", "scope", "resource"])
async def test_extra_params_cannot_override_reserved_fields(
    recorder: tuple[Recorder, httpx.AsyncClient], key: str
) -> None:
    rec, client = recorder
    spec = model.TokenRequest(token_url=URL, extra_params=((key, "x"),))
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, spec)
    assert (caught.value.reason, caught.value.permanent) == ("InvalidParameters", True)
    assert rec.requests == []


async def test_issued_at_is_read_just_before_sending(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    rec.responses = [httpx.Response(401), httpx.Response(200, json=TOKEN_BODY)]
    ticks = clock()
    result = await oauth.fetch_token(
        client,
        request=model.TokenRequest(token_url=URL),
        credentials=CREDS,
        default_lifetime=H,
        now=ticks,
    )
    # One clock read per attempt: the second attempt's send time is the token's issue time.
    assert result.token.issued_at == T0 + timedelta(seconds=1)
    assert result.token.expires_at == T0 + timedelta(seconds=301)


@pytest.mark.parametrize(
    ("first", "fallback"),
    [
        (httpx.Response(401), True),
        (httpx.Response(401, json={"error": "invalid_request"}), True),
        (httpx.Response(400, json={"error": "invalid_client"}), True),
        (httpx.Response(400, json={"error": "invalid_request"}), False),
        (httpx.Response(400, json={"error": "unauthorized_client"}), False),
        (httpx.Response(503), False),
        (httpx.Response(429), False),
    ],
)
async def test_auto_falls_back_only_on_client_authentication_failure(
    recorder: tuple[Recorder, httpx.AsyncClient], first: httpx.Response, *, fallback: bool
) -> None:
    rec, client = recorder
    rec.responses = [first]
    spec = model.TokenRequest(token_url=URL)
    if fallback:
        result = await fetch(client, spec)
        assert result.auth_method is model.AuthMethod.CLIENT_SECRET_POST
        assert "authorization" in rec.requests[0].headers
        assert "authorization" not in rec.requests[1].headers
        assert ("client_id", CREDS.client_id) in form(rec.requests[1])
    else:
        with pytest.raises(failures.TokenError):
            await fetch(client, spec)
        assert len(rec.requests) == 1


async def test_auto_raises_the_last_error_when_every_method_fails(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    rec.responses = [httpx.Response(401), httpx.Response(400, json={"error": "invalid_client"})]
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, model.TokenRequest(token_url=URL))
    assert (caught.value.status_code, caught.value.reason) == (400, "InvalidClient")
    assert len(rec.requests) == 2


# Methods that need no key material beyond CREDS (the assertion methods: test_assertions.py).
@pytest.mark.parametrize(
    "method",
    [
        m
        for m in model.AuthMethod
        if m not in (model.ASSERTION_METHODS | model.TLS_METHODS | {model.AuthMethod.AUTO})
    ],
)
async def test_explicit_methods_never_fall_back(
    recorder: tuple[Recorder, httpx.AsyncClient], method: model.AuthMethod
) -> None:
    rec, client = recorder
    rec.responses = [httpx.Response(401)]
    with pytest.raises(failures.TokenError):
        await fetch(client, model.TokenRequest(token_url=URL, auth_method=method))
    assert len(rec.requests) == 1


async def test_redirects_are_refused_not_followed(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    rec.responses = [httpx.Response(302, headers={"location": "https://evil.example/steal"})]
    # Even a client configured to follow redirects must not follow this one.
    client.follow_redirects = True
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, model.TokenRequest(token_url=URL))
    assert (caught.value.reason, caught.value.permanent) == ("RedirectRefused", True)
    assert [str(r.url) for r in rec.requests] == [URL]


async def endless() -> AsyncIterator[bytes]:
    while True:
        yield b" " * 65536


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(lambda: httpx.Response(200, content=endless()), id="streamed"),
        pytest.param(
            lambda: httpx.Response(200, headers={"content-length": str(2**40)}, content=endless()),
            id="declared",
        ),
    ],
)
async def test_body_is_capped(
    recorder: tuple[Recorder, httpx.AsyncClient], response: Callable[[], httpx.Response]
) -> None:
    rec, client = recorder
    rec.responses = [response()]
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, model.TokenRequest(token_url=URL))
    assert (caught.value.reason, caught.value.permanent) == ("BadResponse", False)


async def test_oversized_error_body_keeps_its_status_classification(
    recorder: tuple[Recorder, httpx.AsyncClient],
) -> None:
    rec, client = recorder
    rec.responses = [httpx.Response(503, headers={"retry-after": "3"}, content=endless())]
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, model.TokenRequest(token_url=URL))
    assert (caught.value.reason, caught.value.retry_after) == ("ServerError", 3.0)


@pytest.mark.parametrize(
    ("exc", "reason", "permanent"),
    [
        (httpx.ReadTimeout("read timed out https://u:pw@x"), "Timeout", False),
        (httpx.ConnectTimeout("x"), "Timeout", False),
        (httpx.ConnectError("cannot connect to https://u:pw@x"), "ConnectionFailed", False),
        (httpx.RemoteProtocolError("https://u:pw@x"), "ConnectionFailed", False),
        (httpx.DecodingError("bad gzip https://u:pw@x"), "BadResponse", False),
    ],
)
async def test_transport_errors_are_transient_and_say_nothing_of_the_url(
    exc: Exception, reason: str, *, permanent: bool
) -> None:
    async def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as client:
        with pytest.raises(failures.TokenError) as caught:
            await fetch(client, model.TokenRequest(token_url=URL))
    assert (caught.value.reason, caught.value.permanent) == (reason, permanent)
    assert "pw" not in str(caught.value)
    assert caught.value.__suppress_context__


async def test_a_slow_drip_is_cut_by_the_overall_deadline() -> None:
    async def drip() -> AsyncIterator[bytes]:
        for _ in range(100):
            await asyncio.sleep(0.05)
            yield b" "

    async def slow(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=drip())

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        with pytest.raises(failures.TokenError) as caught:
            await oauth.fetch_token(
                client,
                request=model.TokenRequest(token_url=URL),
                credentials=CREDS,
                default_lifetime=H,
                now=lambda: T0,
                timeout=0.3,
            )
    assert caught.value.reason == "Timeout"


# -- token URL checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example.com/oauth2/token",
        "https://login.example.com:8443/token?tenant=a",
        "https://10.0.0.1/token",
        "https://[2001:db8::1]/token",
        "HTTPS://Login.Example.com/token",
    ],
)
def test_acceptable_token_urls(url: str) -> None:
    # 10.0.0.1 and 2001:db8::1 are not public: acceptable where the admin allows them.
    allowance = urlpolicy.Allowance.parse(["10.0.0.0/8", "2001:db8::/32"])
    urlpolicy.check_token_url(url, allow_insecure_http=False, allowance=allowance)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://login.example.com/token", "https is required"),
        ("ftp://login.example.com/token", "scheme"),
        ("login.example.com/token", "scheme"),
        ("https://user:pw@login.example.com/token", "credentials"),
        ("https://user@login.example.com/token", "credentials"),
        ("https://login.example.com/token#frag", "fragment"),
        ("https://login.example.com/token#", "fragment"),
        ("https:///token", "no host"),
        ("https://login.example.com:99999/token", "not a valid URL"),
        ("https://[::1/token", "not a valid URL"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://169.254.10.1/token", "link-local"),
        ("https://[fe80::1]/token", "link-local"),
        ("https://[fd00:ec2::254]/token", "metadata"),
        ("https://[::ffff:169.254.169.254]/token", "metadata"),
        ("https://100.100.100.200/token", "metadata"),
        ("https://metadata.google.internal/token", "metadata"),
        ("https://METADATA.google.internal./token", "metadata"),
        ("https://metadata/token", "metadata"),
        ("https://2852039166/token", "four decimal numbers"),
        ("https://0xa9.0xfe.0xa9.0xfe/token", "four decimal numbers"),
        ("https://169.254.43518/token", "four decimal numbers"),
        ("https://169\u3002254\u3002169\u3002254/token", "metadata"),
        ("https://\uff4detadata/token", "not a valid URL"),
        ("https://%31%36%39.254.169.254/token", "not a valid host"),
        ("https://login.example.com\x00.evil/token", "control characters"),
        ("https://login.example.com /token", "control characters"),
        ("https://login.example.com\t/token", "control characters"),
        (" https://login.example.com/token", "control characters"),
    ],
)
def test_refused_token_urls(url: str, message: str) -> None:
    with pytest.raises(failures.TokenError, match=message) as caught:
        urlpolicy.check_token_url(url, allow_insecure_http=False)
    assert (caught.value.reason, caught.value.permanent) == ("TokenURLRefused", True)
    assert "pw" not in str(caught.value)


@given(
    host=st.text(max_size=30),
    scheme=st.sampled_from(["https", "http", "HTTPS", "ftp", ""]),
    rest=st.text(max_size=20),
)
def test_check_token_url_only_ever_raises_token_error(host: str, scheme: str, rest: str) -> None:
    with contextlib.suppress(failures.TokenError):
        urlpolicy.check_token_url(f"{scheme}://{host}/{rest}", allow_insecure_http=True)
    with contextlib.suppress(failures.TokenError):
        urlpolicy.check_token_url(f"{scheme}://[{host}]/", allow_insecure_http=False)


def test_http_needs_the_explicit_opt_in() -> None:
    loopback = urlpolicy.Allowance.parse(["127.0.0.0/8"])
    urlpolicy.check_token_url(
        "http://127.0.0.1:8080/token", allow_insecure_http=True, allowance=loopback
    )
    with pytest.raises(failures.TokenError, match="metadata"):
        urlpolicy.check_token_url("http://169.254.169.254/", allow_insecure_http=True)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("login.example.com", True),
        ("a.b.example.com", True),
        ("example.com", False),
        ("evil-example.com", False),
        ("example.com.evil.net", False),
        ("idp.corp", True),
        ("IDP.corp", True),
        ("x.idp.corp", False),
        ("bücher.example.com", True),
        ("bücher.de", False),
    ],
)
def test_allowed_hosts(host: str, *, allowed: bool) -> None:
    allow = frozenset({"*.example.com", "idp.corp"})
    url = f"https://{host}/token"
    if allowed:
        urlpolicy.check_token_url(url, allow_insecure_http=False, allowed_hosts=allow)
    else:
        with pytest.raises(failures.TokenError, match="allowlist"):
            urlpolicy.check_token_url(url, allow_insecure_http=False, allowed_hosts=allow)
