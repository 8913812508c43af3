"""`tokensync fetch` through the proxy its environment names, as the operator does
(decision 0049): the real token server over TLS, reached through a real forward proxy
(proxy.py) on loopback."""

from __future__ import annotations

import json
import pathlib
import ssl
from collections.abc import Iterator

import pytest

from localcluster.pki import CertificateAuthority
from support.forwardproxy import ForwardProxy
from support.polling import wait_for
from support.tokenserver import TokenServer
from tokensync import cli

LOOPBACK = "--allow-private-network=127.0.0.0/8,::1"
PROXY_PASSWORD = "pr0xy-pa55-visible-if-leaked"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("fetch-proxy-ca")


@pytest.fixture(scope="module")
def ca_file(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_bytes(ca.cert_pem)
    return path


@pytest.fixture(scope="module")
def server(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenServer]:
    pair = ca.issue("token-endpoint", server_hosts=("127.0.0.1", "localhost"))
    directory = tmp_path_factory.mktemp("tls")
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "tls.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    with TokenServer(lifetime=600, ssl_context=context) as running:
        running.add_client("cli-client", "cli-secret")
        yield running


@pytest.fixture(scope="module")
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=f"tokensync:{PROXY_PASSWORD}") as running:
        yield running


def fetch(url: str, ca_file: pathlib.Path) -> int:
    return cli.main(
        [
            "fetch",
            "--token-url",
            url,
            "--client-id",
            "cli-client",
            "--ca-bundle",
            str(ca_file),
            LOOPBACK,
        ]
    )


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "cli-secret")
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_fetch_through_the_proxy(
    server: TokenServer,
    proxy: ForwardProxy,
    ca_file: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_credentials)
    target = server.origin.removeprefix("https://")
    before, issued = proxy.connects_to(target), len(server.issued)
    assert fetch(server.url, ca_file) == 0
    assert json.loads(capsys.readouterr().out)["token_type"] == "Bearer"
    assert len(server.issued) == issued + 1
    wait_for(
        lambda: True if proxy.connects_to(target) > before else None,
        what="the proxy's CONNECT",
        timeout=10,
    )


def test_fetch_with_no_proxy_goes_direct(
    server: TokenServer,
    proxy: ForwardProxy,
    ca_file: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("https_proxy", proxy.url_with_credentials)
    monkeypatch.setenv("no_proxy", "127.0.0.0/8")
    before = len(proxy.connects())
    assert fetch(server.url, ca_file) == 0
    assert len(proxy.connects()) == before


def test_fetch_through_a_proxy_that_wants_credentials(
    server: TokenServer,
    proxy: ForwardProxy,
    ca_file: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "HTTPS_PROXY", f"http://tokensync:wrong-{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    )
    issued = len(server.issued)
    assert fetch(server.url, ca_file) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: ProxyRefused: the proxy 127.0.0.1:{proxy.port} answered 407")
    assert PROXY_PASSWORD not in err
    assert len(server.issued) == issued


@pytest.mark.parametrize("command", ["fetch", "run"])
def test_an_unusable_proxy_variable_stops_before_anything_starts(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"socks5://tokensync:{PROXY_PASSWORD}@proxy.corp:1080")
    argv = ["fetch", "--token-url", "https://login.example.com/token", "--client-id", "c"]
    with pytest.raises(SystemExit) as caught:
        cli.main(argv if command == "fetch" else ["run"])
    assert str(caught.value.code).startswith("HTTPS_PROXY: only http:// proxies")
    assert PROXY_PASSWORD not in str(caught.value.code)
