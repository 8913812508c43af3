"""No HTTP client keeps cookies: a client is shared by every credential that sends to the
same host, so a cookie set in answer to one tenant's token request must not go out with the
next tenant's, and an endpoint that sets a new cookie in every answer must not grow a jar
without bound.

A real token endpoint on loopback sets a fresh cookie in every answer and records the
``Cookie`` header of every request it gets.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tokensync import model, oauth, transport, urlpolicy

LOOPBACK = urlpolicy.Allowance.parse(["127.0.0.0/8"])


class _CookieSetter(BaseHTTPRequestHandler):
    server: CookieSettingEndpoint

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.cookies_received.append(self.headers.get("Cookie"))
        n = len(self.server.cookies_received)
        body = json.dumps({"access_token": f"t{n}", "token_type": "Bearer", "expires_in": 60})
        self.send_response(200)
        self.send_header("Set-Cookie", f"session{n}=for-request-{n}; Path=/")
        self.send_header("Set-Cookie", f"AWSALB=sticky-{n}; Path=/; Domain=127.0.0.1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: Any) -> None:
        pass


class CookieSettingEndpoint(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CookieSetter)
        self.cookies_received: list[str | None] = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"


@pytest.fixture
def endpoint() -> Iterator[CookieSettingEndpoint]:
    server = CookieSettingEndpoint()
    yield server
    server.shutdown()
    server.server_close()


async def test_a_cookie_one_credential_got_never_goes_out_with_another(
    endpoint: CookieSettingEndpoint,
) -> None:
    clients = transport.HttpClients(timeout=5, max_connections=4, allowance=LOOPBACK)
    try:
        shared = clients.for_tls()  # what every credential without TLS inputs gets
        assert shared is clients.default
        for tenant in ("tenant-a", "tenant-b", "tenant-c"):
            result = await oauth.fetch_token(
                shared,
                request=model.TokenRequest(token_url=endpoint.url),
                credentials=model.ClientAuthMaterial(tenant, f"{tenant}-secret"),
                default_lifetime=datetime.timedelta(hours=1),
                now=lambda: datetime.datetime.now(datetime.UTC),
            )
            assert result.token.access_token.startswith("t")
        assert endpoint.cookies_received == [None, None, None]
        assert len(shared.cookies.jar) == 0
    finally:
        await clients.aclose()


async def test_no_client_kind_keeps_a_cookie(endpoint: CookieSettingEndpoint) -> None:
    http = transport.guarded_client(
        verify=False, allowance=LOOPBACK, timeout=5, limits=httpx.Limits()
    )
    async with http:
        for _ in range(3):
            assert (await http.post(endpoint.url, content=b"grant_type=x")).status_code == 200
        http.cookies.set("planted", "by-hand")  # even a cookie set on the client is dropped
        await http.post(endpoint.url, content=b"grant_type=x")
    assert endpoint.cookies_received == [None, None, None, None]
    assert len(http.cookies.jar) == 0
