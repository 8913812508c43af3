"""The HTTP clients through a real forward proxy on loopback (proxy.py, decision 0049).

The destination rules apply to the destination, before the proxy is asked for anything;
the proxy itself (the admin's, on loopback here) is connected to without them. TLS runs
inside the CONNECT tunnel, verified against the destination's name with the CA bundle
given, so the proxy never sees the request. The loopback TLS server counts the
connections it accepts, the proxy the tunnels it was asked for.
"""

from __future__ import annotations

import pathlib
import socket
import ssl
from collections.abc import Iterator

import httpx
import pytest
from test_transport_guard import CountingServer

from localcluster.pki import CertificateAuthority
from support.forwardproxy import ForwardProxy
from support.polling import wait_for
from tokensync import discovery, failures, proxies, transport, urlpolicy

LOOPBACK = urlpolicy.Allowance.parse(["127.0.0.0/8", "::1"])
CREDENTIALS = "tokensync:pr0xy-pa55"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("proxy-test-ca")


@pytest.fixture(scope="module")
def tls_server(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CountingServer]:
    pair = ca.issue("token-endpoint", server_hosts=("localhost", "127.0.0.1"))
    directory = tmp_path_factory.mktemp("tls")
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "tls.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    server = CountingServer(context)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=CREDENTIALS, denied=["denied.example"]) as running:
        yield running


def egress(url: str, no_proxy: str = "") -> proxies.Proxies:
    return proxies.from_environment({"HTTPS_PROXY": url, "NO_PROXY": no_proxy})


def client(
    ca: CertificateAuthority, egress_: proxies.Proxies, allowance: urlpolicy.Allowance = LOOPBACK
) -> httpx.AsyncClient:
    trust = transport.tls_context(
        ca_pem=ca.cert_pem.decode(), client_cert_pem=None, client_key_pem=None
    )
    return transport.guarded_client(
        verify=trust, allowance=allowance, timeout=5.0, limits=httpx.Limits(), egress=egress_
    )


async def test_tls_through_the_tunnel_verified_against_the_destination(
    ca: CertificateAuthority, tls_server: CountingServer, proxy: ForwardProxy
) -> None:
    target = f"localhost:{tls_server.server_address[1]}"
    before = proxy.connects_to(target)
    served = tls_server.requests
    allowed = urlpolicy.Allowance.parse(["localhost"])  # the proxy resolves it: by name
    async with client(ca, egress(proxy.url_with_credentials), allowed) as http:
        response = await http.post(tls_server.url("localhost"), content=b"x")
    assert response.status_code == 200
    assert tls_server.requests == served + 1
    assert tls_server.server_names[-1] == "localhost"  # SNI: the destination's name
    wait_for(
        lambda: True if proxy.connects_to(target) == before + 1 else None,
        what="the proxy's CONNECT",
        timeout=10,
    )


async def test_the_proxy_does_not_make_an_untrusted_certificate_trusted(
    tls_server: CountingServer, proxy: ForwardProxy
) -> None:
    http = transport.guarded_client(
        verify=True,
        allowance=LOOPBACK,
        timeout=5.0,
        limits=httpx.Limits(),
        egress=egress(proxy.url_with_credentials),
    )
    async with http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(tls_server.url())
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in _chain(caught.value))


async def test_no_proxy_goes_direct(
    ca: CertificateAuthority, tls_server: CountingServer, proxy: ForwardProxy
) -> None:
    before = len(proxy.connects())
    async with client(ca, egress(proxy.url_with_credentials, "localhost")) as http:
        response = await http.get(tls_server.url("localhost"))
    assert response.status_code == 200
    assert len(proxy.connects()) == before


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://169.254.169.254/token", failures.Reason.TOKEN_URL_REFUSED),
        ("https://metadata.google.internal/token", failures.Reason.TOKEN_URL_REFUSED),
        ("https://10.1.2.3/token", failures.Reason.PRIVATE_NETWORK_REFUSED),
        ("https://keycloak.auth.svc.cluster.local/token", failures.Reason.PRIVATE_NETWORK_REFUSED),
        ("https://localhost:1/token", failures.Reason.PRIVATE_NETWORK_REFUSED),
    ],
)
async def test_the_destination_rules_apply_before_the_proxy_is_asked(
    ca: CertificateAuthority, url: str, reason: failures.Reason
) -> None:
    """A bare listener stands in for the proxy: it sees not one TCP connection."""
    with socket.socket() as bare:
        bare.bind(("127.0.0.1", 0))
        bare.listen()
        bare.setblocking(False)
        async with client(ca, egress(f"http://127.0.0.1:{bare.getsockname()[1]}")) as http:
            with pytest.raises(urlpolicy.Refused) as caught:
                await http.get(url)
        assert caught.value.reason is reason
        with pytest.raises(BlockingIOError):
            bare.accept()


async def test_a_proxy_that_wants_credentials(
    ca: CertificateAuthority, tls_server: CountingServer, proxy: ForwardProxy
) -> None:
    served = tls_server.connections
    async with client(ca, egress(proxy.url)) as http:
        with pytest.raises(proxies.ProxyFailed) as caught:
            await http.get(tls_server.url())
    assert caught.value.reason is failures.Reason.PROXY_REFUSED
    assert not caught.value.permanent
    assert caught.value.message == (
        f"the proxy 127.0.0.1:{proxy.port} answered 407 to the tunnel to 127.0.0.1: "
        "it wants credentials (user:password in the proxy URL)"
    )
    assert tls_server.connections == served


async def test_a_proxy_that_refuses_the_destination(
    ca: CertificateAuthority, proxy: ForwardProxy
) -> None:
    async with client(ca, egress(proxy.url_with_credentials)) as http:
        with pytest.raises(proxies.ProxyFailed) as caught:
            await http.get("https://denied.example/token")
    assert caught.value.reason is failures.Reason.PROXY_REFUSED
    assert "answered 418 to the tunnel to denied.example" in caught.value.message
    assert CREDENTIALS.split(":")[1] not in caught.value.message


async def test_an_unreachable_proxy_is_named(ca: CertificateAuthority) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        url = f"http://user:hunter2@127.0.0.1:{port}"
        async with client(ca, egress(url)) as http:
            with pytest.raises(proxies.ProxyFailed) as caught:
                await http.get("https://login.example.com/token")
    assert caught.value.reason is failures.Reason.CONNECTION_FAILED
    assert caught.value.message.startswith(f"cannot reach the proxy 127.0.0.1:{port} (")
    assert "hunter2" not in caught.value.message


async def test_discovery_reports_the_proxy_failure_as_it_is(
    ca: CertificateAuthority, proxy: ForwardProxy
) -> None:
    async with client(ca, egress(proxy.url)) as http:
        with pytest.raises(proxies.ProxyFailed, match="answered 407"):
            await discovery.fetch_metadata(http, "https://idp.example", timeout=5.0)


async def test_the_handshake_diagnosis_is_not_made_through_a_proxy(
    ca: CertificateAuthority, tls_server: CountingServer, proxy: ForwardProxy
) -> None:
    connections = tls_server.connections
    pair = ca.issue("client")
    alert = await transport.handshake_alert(
        tls_server.url(),
        ca_pem=ca.cert_pem.decode(),
        client_cert_pem=pair.cert_pem.decode(),
        client_key_pem=pair.key_pem.decode(),
        seconds=2.0,
        allowance=LOOPBACK,
        egress=egress(proxy.url_with_credentials),
    )
    assert alert is None
    assert tls_server.connections == connections


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def test_the_test_proxy_is_a_real_one(proxy: ForwardProxy) -> None:
    assert "proxy.http.proxy.HttpProxyPlugin" in proxy.log()
    assert pathlib.Path(proxy.log_path).exists()
