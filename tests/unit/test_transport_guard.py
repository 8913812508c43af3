"""Every HTTP client connects only where the destination rules allow: the host is resolved
once, every answer is checked, and the connection goes to one of exactly those addresses
(issue 14 section 4, decision 0037).

Real listeners on loopback count the connections they accept, so "refused" means that not
one TCP connection reached them, not merely that an error was raised. Loopback is the one
private network a unit test can listen on: without the allowance it is refused like any
other, with it the same requests succeed.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import pathlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from localcluster.pki import CertificateAuthority
from tokensync import discovery, failures, model, oauth, transport, urlpolicy

LOOPBACK = urlpolicy.Allowance.parse(["127.0.0.0/8", "::1"])
NOTHING = urlpolicy.NO_ALLOWANCE
PRIVATE = failures.Reason.PRIVATE_NETWORK_REFUSED


class _Handler(BaseHTTPRequestHandler):
    server: CountingServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        self.server.requests += 1
        self.server.server_names.append(self.server.last_sni)
        body = json.dumps({"access_token": "t", "token_type": "Bearer", "expires_in": 60})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: Any) -> None:
        pass


class CountingServer(ThreadingHTTPServer):
    """An HTTP(S) server on 127.0.0.1 that counts every TCP connection it accepts."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.requests = 0
        self.server_names: list[str | None] = []
        self.last_sni: str | None = None
        self._context = context
        if context is not None:
            context.sni_callback = self._sni
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _sni(self, _: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        self.last_sni = name

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.connections += 1
        if self._context is not None:
            sock = self._context.wrap_socket(sock, server_side=True)
        return sock, address

    def url(self, host: str = "127.0.0.1", path: str = "/token") -> str:
        scheme = "https" if self._context else "http"
        return f"{scheme}://{host}:{self.server_address[1]}{path}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def listener() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.stop()


class Recording(httpcore.AsyncNetworkBackend):
    """httpcore's real backend, recording where it was asked to connect."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connects: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append(host)
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)


def client(allowance: urlpolicy.Allowance) -> httpx.AsyncClient:
    return transport.guarded_client(
        verify=True, allowance=allowance, timeout=5.0, limits=httpx.Limits(max_connections=2)
    )


@pytest.fixture
async def clients() -> AsyncIterator[transport.HttpClients]:
    http = transport.HttpClients(timeout=5.0, max_connections=2)
    yield http
    await http.aclose()


# -- the name, resolved once and checked ------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_loopback_is_refused_without_the_allowance(
    host: str, listener: CountingServer
) -> None:
    async with client(NOTHING) as http:
        with pytest.raises(urlpolicy.Refused, match="loopback") as caught:
            await http.get(listener.url(host))
    assert caught.value.reason is PRIVATE
    assert caught.value.permanent
    assert "--allow-private-network" in caught.value.message
    assert listener.connections == 0


@pytest.mark.parametrize(
    "allowance",
    [LOOPBACK, urlpolicy.Allowance.parse(["localhost"])],
    ids=["the-range", "the-name"],
)
async def test_with_the_allowance_the_same_request_goes_through(
    allowance: urlpolicy.Allowance, listener: CountingServer
) -> None:
    async with client(allowance) as http:
        response = await http.get(listener.url("localhost"))
    assert response.status_code == 200
    assert listener.connections == 1


async def test_a_name_allowance_does_not_open_the_address_itself(listener: CountingServer) -> None:
    async with client(urlpolicy.Allowance.parse(["localhost"])) as http:
        with pytest.raises(urlpolicy.Refused):
            await http.get(listener.url("127.0.0.1"))
    assert listener.connections == 0


async def test_the_connection_goes_to_the_checked_address_not_the_name(
    listener: CountingServer,
) -> None:
    """The name is resolved once, by the guard; what connects gets an address, so a second
    resolution (with another answer) never happens."""
    recording = Recording()
    guard = transport.GuardedBackend(LOOPBACK, inner=recording)
    async with httpcore.AsyncConnectionPool(network_backend=guard) as pool:
        response = await pool.request("GET", listener.url("localhost"))
    assert response.status == 200
    # An address (which the guard checked), never the name to resolve again.
    assert {ipaddress.ip_address(host).is_loopback for host in recording.connects} == {True}


async def test_a_refused_name_is_never_connected_to() -> None:
    """Metadata stays refused with every private range allowed, and the refusal comes
    before the inner backend is asked to connect anywhere."""
    recording = Recording()
    everything = urlpolicy.Allowance.parse(["0.0.0.0/0", "::/0"])
    guard = transport.GuardedBackend(everything, inner=recording)
    for host in ("169.254.169.254", "0.0.0.0", "metadata.google.internal"):
        with pytest.raises(urlpolicy.Refused) as caught:
            await guard.connect_tcp(host, 80, timeout=2.0)
        assert caught.value.reason is failures.Reason.TOKEN_URL_REFUSED
    assert recording.connects == []


class Resolver:
    """Stands in for DNS (which a unit test cannot script): answers from a list, one answer
    per lookup, and counts the lookups."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def __call__(self, host: str, port: int, **_: Any) -> list[Any]:
        answer = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        family = socket.AF_INET6 if ":" in answer else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (answer, port))]


async def test_a_name_that_resolves_to_the_metadata_service_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver = Resolver("169.254.169.254")
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver)
    recording = Recording()
    everything = urlpolicy.Allowance.parse(["0.0.0.0/0", "::/0"])
    guard = transport.GuardedBackend(everything, inner=recording)
    with pytest.raises(urlpolicy.Refused, match=r"evil\.example resolves to 169\.254\.169\.254"):
        await guard.connect_tcp("evil.example", 80, timeout=2.0)
    assert recording.connects == []


async def test_a_name_cannot_change_its_answer_between_check_and_connect(
    monkeypatch: pytest.MonkeyPatch, listener: CountingServer
) -> None:
    """DNS rebinding: the first answer (checked) is loopback, which the allowance opens;
    any later lookup would answer the metadata address. There is no later lookup: the
    connection goes to the checked address."""
    resolver = Resolver("127.0.0.1", "169.254.169.254")
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver)
    recording = Recording()
    guard = transport.GuardedBackend(LOOPBACK, inner=recording)
    stream = await guard.connect_tcp("rebind.example", listener.server_address[1], timeout=2.0)
    await stream.aclose()
    assert resolver.lookups == 1
    assert recording.connects == ["127.0.0.1"]
    for _ in range(100):  # the listener's thread counts the accept a moment later
        if listener.connections:
            break
        await asyncio.sleep(0.02)
    assert listener.connections == 1


async def test_an_unresolvable_name_is_a_connection_error() -> None:
    """As without the guard: transient, retried (a resolver may also just be slow)."""
    async with client(NOTHING) as http:
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):
            await http.get("https://no-such-host.invalid/token", timeout=2.0)


async def test_unix_sockets_are_not_destinations() -> None:
    with pytest.raises(httpcore.ConnectError):
        await transport.GuardedBackend(LOOPBACK).connect_unix_socket("/run/docker.sock")


# -- TLS is still verified against the name ----------------------------------------------------


async def test_tls_is_verified_against_the_name_not_the_address(tmp_path: pathlib.Path) -> None:
    """The serving certificate names only "localhost" (no IP address): the request to
    https://localhost works although the connection goes to 127.0.0.1, and the server saw
    "localhost" as the TLS server name."""
    ca = CertificateAuthority("guard-test-ca")
    pair = ca.issue("token-endpoint", server_hosts=("localhost",))
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = CountingServer(context)
    try:

        async def fetch(host: str) -> int:
            trust = transport.tls_context(
                ca_pem=ca.cert_pem.decode(), client_cert_pem=None, client_key_pem=None
            )
            http = transport.guarded_client(
                verify=trust, allowance=LOOPBACK, timeout=5.0, limits=httpx.Limits()
            )
            async with http:
                return (await http.get(server.url(host))).status_code

        assert await fetch("localhost") == 200
        assert server.server_names == ["localhost"]
        with pytest.raises(httpx.ConnectError):  # the certificate does not name 127.0.0.1
            await fetch("127.0.0.1")
    finally:
        server.stop()


# -- every client tokensync uses is guarded ---------------------------------------------------


async def test_every_client_of_http_clients_is_guarded(
    clients: transport.HttpClients, listener: CountingServer
) -> None:
    ca = CertificateAuthority("another-ca")
    pair = ca.issue("client")
    handed_out = [
        clients.default,
        clients.for_tls(),
        clients.for_tls(ca_pem=ca.cert_pem.decode()),
        clients.for_tls(
            client_cert_pem=pair.cert_pem.decode(), client_key_pem=pair.key_pem.decode()
        ),
        clients.for_tls(allowance=urlpolicy.Allowance.parse(["10.0.0.0/8"])),
    ]
    for http in handed_out:
        with pytest.raises(urlpolicy.Refused):
            await http.get(listener.url("localhost"))
    assert listener.connections == 0
    allowed = clients.for_tls(allowance=LOOPBACK)
    assert allowed is clients.for_tls(allowance=LOOPBACK)  # one client per allowance
    assert allowed is not clients.default
    assert (await allowed.get(listener.url("localhost"))).status_code == 200
    assert listener.connections == 1


async def test_a_token_request_to_a_refused_name_is_refused_not_a_network_error(
    listener: CountingServer,
) -> None:
    async with client(NOTHING) as http:
        with pytest.raises(failures.TokenError) as caught:
            await oauth.fetch_token(
                http,
                request=model.TokenRequest(token_url=listener.url("localhost")),
                credentials=model.ClientAuthMaterial("id", "a-client-secret"),
                default_lifetime=datetime.timedelta(hours=1),
                now=lambda: datetime.datetime.now(datetime.UTC),
            )
    assert caught.value.reason is PRIVATE
    assert "a-client-secret" not in str(caught.value)
    assert listener.requests == listener.connections == 0


async def test_discovery_of_a_refused_issuer_is_refused_not_a_discovery_failure(
    listener: CountingServer,
) -> None:
    async with client(NOTHING) as http:
        with pytest.raises(urlpolicy.Refused) as caught:
            await discovery.fetch_metadata(http, listener.url("localhost", "/realms/a"), timeout=5)
    assert caught.value.reason is PRIVATE
    assert listener.connections == 0


async def test_the_handshake_diagnosis_goes_nowhere_refused(listener: CountingServer) -> None:
    ca = CertificateAuthority("diagnosis-ca")
    pair = ca.issue("client")
    alert = await transport.handshake_alert(
        listener.url("localhost").replace("http://", "https://"),
        ca_pem=None,
        client_cert_pem=pair.cert_pem.decode(),
        client_key_pem=pair.key_pem.decode(),
        seconds=2.0,
        allowance=NOTHING,
    )
    assert alert is None
    assert listener.connections == 0
