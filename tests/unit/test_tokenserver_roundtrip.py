"""The token client against a real RFC 6749 server (Authlib) and a fault-injecting endpoint.

Mock transports prove what the client sends; these tests prove that an independent server
implementation accepts it, and that real sockets misbehaving are classified as intended.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Literal

import httpx
import pytest

from support.faultserver import Fault, FaultServer
from support.tokenserver import TokenServer
from tokensync import failures, model, oauth, responses, urlpolicy

H = timedelta(hours=1)
#: The servers listen on loopback, which the URL policy refuses unless allowed.
LOOPBACK = urlpolicy.Allowance.parse(["127.0.0.0/8"])
Method = model.AuthMethod


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client("all-methods", "s3cret: with %, + and ü")
        running.add_client("post-only", "post-secret", auth_methods=["client_secret_post"])
        running.add_client("json-only", "json-secret", auth_methods=["client_secret_json"])
        running.add_client("scoped", "scoped-secret", scopes=["payments.read", "payments.write"])
        yield running


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as shared:
        yield shared


async def fetch(
    client: httpx.AsyncClient,
    url: str,
    creds: tuple[str, str],
    *,
    method: Method = Method.AUTO,
    deadline: float = 5.0,
    **fields: object,
) -> responses.FetchResult:
    urlpolicy.check_token_url(url, allow_insecure_http=True, allowance=LOOPBACK)
    request = model.TokenRequest(token_url=url, auth_method=method, **fields)  # type: ignore[arg-type]
    return await oauth.fetch_token(
        client,
        request=request,
        credentials=model.ClientAuthMaterial(*creds),
        default_lifetime=H,
        now=now,
        timeout=deadline,
    )


# -- the real authorization server -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "used"),
    [
        (Method.CLIENT_SECRET_BASIC, "client_secret_basic"),
        (Method.CLIENT_SECRET_POST, "client_secret_post"),
        (Method.CLIENT_SECRET_JSON, "client_secret_json"),
        (Method.AUTO, "client_secret_basic"),
    ],
)
async def test_each_method_gets_a_token_the_server_recognises(
    server: TokenServer, client: httpx.AsyncClient, method: Method, used: str
) -> None:
    before = datetime.now(UTC)
    result = await fetch(
        client, server.url, ("all-methods", "s3cret: with %, + and ü"), method=method
    )
    assert server.verify(result.token.access_token)
    assert result.auth_method.value == used
    record = next(i for i in server.issued if i.access_token == result.token.access_token)
    assert (record.client_id, record.auth_method) == ("all-methods", used)
    token = result.token
    assert token.token_type == "Bearer"
    assert before <= token.issued_at <= record.issued_at
    # The earlier of expires_in (600) and the JWT's exp wins (decision 0031); exp is the
    # server's whole second, so up to a second earlier.
    assert token.lifetime_source in ("expires_in", "jwt_exp")
    lifetime = token.expires_at - token.issued_at
    assert timedelta(seconds=599) < lifetime <= timedelta(seconds=600)


@pytest.mark.parametrize(
    ("creds", "method", "settled"),
    [
        (("post-only", "post-secret"), Method.AUTO, Method.CLIENT_SECRET_POST),
        (("json-only", "json-secret"), Method.CLIENT_SECRET_JSON, Method.CLIENT_SECRET_JSON),
    ],
)
async def test_restricted_clients(
    server: TokenServer,
    client: httpx.AsyncClient,
    creds: tuple[str, str],
    method: Method,
    settled: Method,
) -> None:
    before = server.requests
    result = await fetch(client, server.url, creds, method=method)
    assert result.auth_method is settled
    assert server.verify(result.token.access_token)
    assert server.requests - before == (2 if method is Method.AUTO else 1)


@pytest.mark.parametrize(
    ("creds", "method"),
    [
        (("json-only", "json-secret"), Method.AUTO),
        (("post-only", "post-secret"), Method.CLIENT_SECRET_JSON),
        (("all-methods", "wrong"), Method.AUTO),
        (("nobody", "x"), Method.CLIENT_SECRET_POST),
    ],
)
async def test_refused_client_authentication_is_permanent(
    server: TokenServer, client: httpx.AsyncClient, creds: tuple[str, str], method: Method
) -> None:
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, server.url, creds, method=method)
    assert (caught.value.reason, caught.value.permanent) == ("InvalidClient", True)
    assert creds[1] not in str(caught.value)


async def test_scopes_are_granted_or_refused(
    server: TokenServer, client: httpx.AsyncClient
) -> None:
    creds = ("scoped", "scoped-secret")
    result = await fetch(client, server.url, creds, scopes=("payments.read", "payments.write"))
    assert result.token.scope == "payments.read payments.write"
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, server.url, creds, scopes=("admin",))
    assert (caught.value.reason, caught.value.error_code) == ("InvalidScope", "invalid_scope")


async def test_secret_rotation(client: httpx.AsyncClient) -> None:
    with TokenServer() as server:
        server.add_client("rotating", "old")
        await fetch(client, server.url, ("rotating", "old"))
        server.set_secret("rotating", "new")
        with pytest.raises(failures.TokenError, match="invalid_client"):
            await fetch(client, server.url, ("rotating", "old"))
        result = await fetch(client, server.url, ("rotating", "new"))
        assert server.verify(result.token.access_token)
        assert not server.verify("not-a-token")


@pytest.mark.parametrize(
    ("token_format", "source", "lifetime"),
    [("jwt", "jwt_exp", timedelta(seconds=120)), ("opaque", "default", H)],
)
async def test_lifetime_without_expires_in(
    client: httpx.AsyncClient,
    token_format: Literal["jwt", "opaque"],
    source: str,
    lifetime: timedelta,
) -> None:
    with TokenServer(lifetime=120, token_format=token_format, send_expires_in=False) as server:
        server.add_client("c", "s")
        token = (await fetch(client, server.url, ("c", "s"))).token
    assert token.lifetime_source == source
    # exp has whole-second resolution and is measured from the server's clock.
    assert abs(token.lifetime - lifetime) <= timedelta(seconds=2)


# -- the fault server ------------------------------------------------------------------


def http_date(delta: timedelta) -> str:
    return format_datetime(datetime.now(UTC) + delta, usegmt=True)


@pytest.mark.parametrize(
    ("fault", "reason", "permanent", "retry_after"),
    [
        (Fault.server_error(500), "ServerError", False, None),
        (Fault.server_error(503, retry_after="4"), "ServerError", False, 4.0),
        (Fault.rate_limited(retry_after="7"), "RateLimited", False, 7.0),
        (Fault.rate_limited(retry_after=None), "RateLimited", False, None),
        (Fault.garbage(), "BadResponse", False, None),
        (Fault.missing_fields(), "BadResponse", False, None),
        (Fault.token(expires_in="soon"), "BadResponse", False, None),
        (Fault.error_200("invalid_client"), "InvalidClient", True, None),
        (Fault.oauth_error("unauthorized_client"), "UnauthorizedClient", True, None),
        (
            Fault.oauth_error("invalid_request", description="secret=hunter2"),
            "InvalidRequest",
            True,
            None,
        ),
        (Fault.huge(), "BadResponse", False, None),
        (Fault.huge(unframed=True), "BadResponse", False, None),
        (Fault.redirect("http://169.254.169.254/"), "RedirectRefused", True, None),
    ],
)
async def test_fault_classification(
    faults: FaultServer,
    client: httpx.AsyncClient,
    fault: Fault,
    reason: str,
    *,
    permanent: bool,
    retry_after: float | None,
) -> None:
    faults.push(fault)
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, faults.url, ("id", "hunter2"), method=Method.CLIENT_SECRET_POST)
    err = caught.value
    assert (err.reason, err.permanent) == (reason, permanent)
    if retry_after is None:
        assert err.retry_after is None
    else:
        assert err.retry_after == pytest.approx(retry_after, abs=2)
    assert "hunter2" not in str(err)
    assert len(faults.requests) == 1  # nothing followed, nothing retried


async def test_retry_after_as_http_date(faults: FaultServer, client: httpx.AsyncClient) -> None:
    # Built here, not at collection time, so that the date is 30 s from now.
    faults.push(Fault.rate_limited(retry_after=http_date(timedelta(seconds=30))))
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, faults.url, ("id", "secret"))
    assert caught.value.reason == "RateLimited"
    assert caught.value.retry_after == pytest.approx(30, abs=2)


async def test_hang_times_out(faults: FaultServer, client: httpx.AsyncClient) -> None:
    faults.push(Fault.hang(30))
    started = datetime.now(UTC)
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, faults.url, ("id", "secret"), deadline=0.3)
    assert (caught.value.reason, caught.value.permanent) == ("Timeout", False)
    assert datetime.now(UTC) - started < timedelta(seconds=5)


async def test_recovers_after_faults(faults: FaultServer, client: httpx.AsyncClient) -> None:
    faults.push(Fault.server_error(502))
    with pytest.raises(failures.TokenError):
        await fetch(client, faults.url, ("id", "secret"))
    result = await fetch(client, faults.url, ("id", "secret"))
    assert result.token.access_token == "fault-token"
    assert result.token.lifetime == timedelta(seconds=300)
    sent = faults.requests[-1]
    assert sent.method == "POST"
    assert sent.headers["Authorization"].startswith("Basic ")


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, f"http://127.0.0.1:{port}/token", ("id", "secret"))
    assert (caught.value.reason, caught.value.permanent) == ("ConnectionFailed", False)
