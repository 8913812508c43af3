"""TLS for token requests: client certificates, CA bundles, and the per-setup client cache.

Certificates come from tools/localcluster/pki.py's throwaway CA. What a client presents is
checked with real handshakes against TLS servers on loopback, not by inspecting contexts.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from localcluster.pki import CertificateAuthority, KeyPair
from tokensync import failures, model, oauth, responses, transport, urlpolicy

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
H = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("tokensync-test-ca")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority("some-other-ca")


@pytest.fixture(scope="module")
def client_pair(ca: CertificateAuthority) -> KeyPair:
    return ca.issue("payments-client")


def text(pair: KeyPair) -> tuple[str, str]:
    return pair.cert_pem.decode(), pair.key_pem.decode()


def server_context(
    ca: CertificateAuthority, directory: pathlib.Path, *, tls12: bool = False
) -> ssl.SSLContext:
    """Serving certificate for 127.0.0.1, client certificates from ``ca`` required."""
    pair = ca.issue("token-endpoint", server_hosts=("127.0.0.1",))
    (directory / "server.crt").write_bytes(pair.cert_pem)
    (directory / "server.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.crt", directory / "server.key")
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


class MutualTLSServer:
    """A token endpoint on https://127.0.0.1 that answers with the client certificate's CN."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.forms: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.forms.append(body.decode())
                peer: Any = self.connection.getpeercert()
                subject = dict(item[0] for item in peer["subject"]) if peer else {}
                document = {
                    "access_token": subject.get("commonName", "anonymous"),
                    "token_type": "Bearer",
                    "expires_in": 300,
                }
                data = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # refused handshakes are what some tests provoke

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_port}/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class RefusingTLSServer:
    """Refuses every client certificate the way a careful server does: it sends the TLS
    alert, reads what the client still sends, and closes cleanly (no reset that would
    swallow the alert). With TLS 1.3 the alert arrives after the client's handshake is done,
    when it reads the response."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._stopping = threading.Event()
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)  # so that stop() is noticed
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._socket.getsockname()[1]}/token"

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(None)
            threading.Thread(target=self._refuse, args=(connection,), daemon=True).start()

    def _refuse(self, connection: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context.wrap_bio(incoming, outgoing, server_side=True)
        connection.settimeout(10)
        try:
            while True:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    connection.sendall(outgoing.read())
                    data = connection.recv(65536)
                    if not data:
                        return
                    incoming.write(data)
                else:
                    return  # accepted: not what this server is for; the client sees EOF
        except ssl.SSLError:
            connection.sendall(outgoing.read())  # the alert
            connection.shutdown(socket.SHUT_WR)
            while connection.recv(65536):
                pass
        except OSError:
            pass
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self._socket.close()


@pytest.fixture
def mtls_server(ca: CertificateAuthority, tmp_path: pathlib.Path) -> Iterator[MutualTLSServer]:
    server = MutualTLSServer(server_context(ca, tmp_path))
    yield server
    server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[transport.HttpClients]:
    # The TLS servers listen on loopback, which the operator reaches only when allowed.
    loopback = urlpolicy.Allowance.parse(["127.0.0.0/8"])
    http = transport.HttpClients(timeout=5.0, max_connections=4, allowance=loopback)
    yield http
    await http.aclose()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def fetch_with_certificate(
    http: httpx.AsyncClient, url: str, pair: KeyPair | None
) -> responses.FetchResult:
    cert, key = text(pair) if pair else (None, None)
    credentials = model.ClientAuthMaterial(
        client_id="payments-service", tls_certificate=cert, tls_key=key
    )
    request = model.TokenRequest(token_url=url, auth_method=model.AuthMethod.TLS_CLIENT_AUTH)
    return await oauth.fetch_token(
        http, request=request, credentials=credentials, default_lifetime=H, now=now, timeout=5.0
    )


# -- tls_context ---------------------------------------------------------------------------------


async def test_the_client_certificate_is_presented_in_the_handshake(
    ca: CertificateAuthority,
    client_pair: KeyPair,
    mtls_server: MutualTLSServer,
    clients: transport.HttpClients,
) -> None:
    cert, key = text(client_pair)
    http = clients.for_tls(ca_pem=ca.cert_pem.decode(), client_cert_pem=cert, client_key_pem=key)
    result = await fetch_with_certificate(http, mtls_server.url, client_pair)
    assert result.token.access_token == "payments-client"  # the server saw our certificate
    assert mtls_server.forms == ["grant_type=client_credentials&client_id=payments-service"]


def test_tls_context_loads_a_certificate_and_key(ca: CertificateAuthority) -> None:
    cert, key = text(ca.issue("payments-client"))
    context = transport.tls_context(
        ca_pem=ca.cert_pem.decode(), client_cert_pem=cert, client_key_pem=key
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1  # exactly the bundle, not the system store


def _encrypted(pair: KeyPair) -> str:
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()


@pytest.mark.parametrize(
    "case", ["mismatched", "swapped", "garbage-cert", "garbage-key", "cert-twice", "public-key"]
)
def test_a_bad_certificate_and_key_pair_is_refused(
    ca: CertificateAuthority, client_pair: KeyPair, case: str
) -> None:
    cert, key = text(client_pair)
    _, other_key = text(ca.issue("someone-else"))
    garbage = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"
    public = (
        serialization.load_pem_private_key(client_pair.key_pem, password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    pairs = {
        "mismatched": (cert, other_key),
        "swapped": (key, cert),
        "garbage-cert": (garbage, key),
        "garbage-key": (
            cert,
            "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----",
        ),
        "cert-twice": (cert, cert),
        "public-key": (cert, public),
    }
    client_cert, client_key = pairs[case]
    with pytest.raises(transport.BadClientCertificate) as caught:
        transport.tls_context(ca_pem=None, client_cert_pem=client_cert, client_key_pem=client_key)
    shown = str(caught.value) + repr(caught.value)
    assert "tls.crt and tls.key" in shown
    for line in (key + other_key).splitlines():
        if not line.startswith("-----"):
            assert line not in shown
    assert caught.value.__cause__ is None


# OpenSSL's default passphrase callback reads from the controlling terminal, so encrypted
# keys are tried in a child process in a session of its own: without a terminal, or with a
# pseudo-terminal nobody types into. (In this process, a developer's terminal would prompt.)
_PROMPT_CHILD = textwrap.dedent(
    """
    import fcntl, os, sys, termios
    if sys.argv[1] == "tty":
        master, follower = os.openpty()
        fcntl.ioctl(follower, termios.TIOCSCTTY, 0)
    from tokensync import transport
    cert, key = sys.stdin.read().split("\\0")
    try:
        transport.tls_context(ca_pem=None, client_cert_pem=cert, client_key_pem=key)
    except transport.BadClientCertificate:
        print("refused")
    else:
        print("loaded")
    """
)


def test_an_encrypted_key_never_prompts_on_a_terminal(client_pair: KeyPair) -> None:
    assert load_encrypted_key(client_pair, terminal=True) == "refused"


def test_an_encrypted_key_is_refused_without_a_terminal(client_pair: KeyPair) -> None:
    assert load_encrypted_key(client_pair, terminal=False) == "refused"


def load_encrypted_key(pair: KeyPair, *, terminal: bool) -> str:
    """What tls_context does with ``pair``'s key encrypted, in a child process."""
    cert, _ = text(pair)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROMPT_CHILD, "tty" if terminal else "none"],
            input=cert + "\0" + _encrypted(pair),
            capture_output=True,
            text=True,
            timeout=5,
            start_new_session=True,  # a session of its own, so the pty becomes its terminal
            env={"PYTHONPATH": str(REPO_ROOT / "operator"), "PATH": "/usr/bin:/bin"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("tls_context blocked on a passphrase prompt")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_certificate_without_its_key_is_not_loaded(client_pair: KeyPair) -> None:
    cert, _ = text(client_pair)
    context = transport.tls_context(ca_pem=None, client_cert_pem=cert, client_key_pem=None)
    assert context.verify_mode == ssl.CERT_REQUIRED  # the system store, no client certificate


@pytest.mark.parametrize(
    "bundle",
    [
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n",
    ],
    ids=["text", "garbage-base64", "empty-block", "key-block"],
)
async def test_a_bad_ca_bundle_is_refused(bundle: str, clients: transport.HttpClients) -> None:
    with pytest.raises(transport.BadCABundle):
        transport.tls_context(ca_pem=bundle, client_cert_pem=None, client_key_pem=None)
    with pytest.raises(transport.BadCABundle):
        clients.for_tls(ca_pem=bundle)
    with pytest.raises(transport.BadCABundle):  # not cached as a client either
        clients.for_tls(ca_pem=bundle)


async def test_the_ca_bundle_is_what_is_trusted(
    ca: CertificateAuthority,
    client_pair: KeyPair,
    mtls_server: MutualTLSServer,
    clients: transport.HttpClients,
) -> None:
    cert, key = text(client_pair)
    # The system store does not know the test CA: a permanent TLS failure, not a retry.
    system = clients.for_tls(client_cert_pem=cert, client_key_pem=key)
    with pytest.raises(failures.TokenError) as caught:
        await fetch_with_certificate(system, mtls_server.url, client_pair)
    assert (caught.value.reason, caught.value.permanent) == ("TLSVerificationFailed", True)


# -- ClientCertificateRejected -------------------------------------------------------------


async def test_a_refused_certificate_in_a_tls12_handshake_is_client_certificate_rejected(
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    tmp_path: pathlib.Path,
    clients: transport.HttpClients,
) -> None:
    server = RefusingTLSServer(server_context(ca, tmp_path, tls12=True))
    try:
        stranger = other_ca.issue("stranger")
        cert, key = text(stranger)
        http = clients.for_tls(
            ca_pem=ca.cert_pem.decode(), client_cert_pem=cert, client_key_pem=key
        )
        with pytest.raises(failures.TokenError) as caught:
            await fetch_with_certificate(http, server.url, stranger)
        assert (caught.value.reason, caught.value.permanent) == ("ClientCertificateRejected", True)
    finally:
        server.stop()


async def test_a_refused_certificate_in_a_tls13_handshake_is_client_certificate_rejected(
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    tmp_path: pathlib.Path,
    clients: transport.HttpClients,
) -> None:
    server = RefusingTLSServer(server_context(ca, tmp_path))
    try:
        stranger = other_ca.issue("stranger")
        cert, key = text(stranger)
        http = clients.for_tls(
            ca_pem=ca.cert_pem.decode(), client_cert_pem=cert, client_key_pem=key
        )
        # Today a raw ssl.SSLError escapes here instead.
        with pytest.raises(failures.TokenError) as caught:
            await fetch_with_certificate(http, server.url, stranger)
        assert (caught.value.reason, caught.value.permanent) == ("ClientCertificateRejected", True)
    finally:
        server.stop()


# -- HttpClients.for_tls ---------------------------------------------------------------------


async def test_no_tls_inputs_give_the_default_client(clients: transport.HttpClients) -> None:
    assert clients.for_tls() is clients.default
    assert clients.for_tls(ca_pem=None) is clients.default
    assert (
        clients.for_tls(ca_pem=None, client_cert_pem=None, client_key_pem=None) is clients.default
    )


async def test_the_same_inputs_share_a_client(
    ca: CertificateAuthority, client_pair: KeyPair, clients: transport.HttpClients
) -> None:
    cert, key = text(client_pair)
    bundle = ca.cert_pem.decode()
    with_cert = clients.for_tls(ca_pem=bundle, client_cert_pem=cert, client_key_pem=key)
    assert with_cert is not clients.default
    assert clients.for_tls(ca_pem=bundle, client_cert_pem=cert, client_key_pem=key) is with_cert
    # Equal content, different string objects: still the same client (keyed by digest).
    copy = "".join(list(cert))
    assert clients.for_tls(ca_pem=bundle, client_cert_pem=copy, client_key_pem=key) is with_cert
    bundle_only = clients.for_tls(ca_pem=bundle)
    assert bundle_only is not with_cert
    assert clients.for_tls(ca_pem=bundle) is bundle_only
    cert_only = clients.for_tls(client_cert_pem=cert, client_key_pem=key)
    assert cert_only not in (with_cert, bundle_only, clients.default)


async def test_a_rotated_certificate_gets_a_new_client(
    ca: CertificateAuthority, client_pair: KeyPair, clients: transport.HttpClients
) -> None:
    bundle = ca.cert_pem.decode()
    cert, key = text(client_pair)
    before = clients.for_tls(ca_pem=bundle, client_cert_pem=cert, client_key_pem=key)
    new_cert, new_key = text(ca.issue("payments-client"))  # same name, new key pair
    after = clients.for_tls(ca_pem=bundle, client_cert_pem=new_cert, client_key_pem=new_key)
    assert after is not before
    # A new CA bundle with the same certificate is another client too.
    other_bundle = CertificateAuthority("rotated-ca").cert_pem.decode()
    rebundled = clients.for_tls(
        ca_pem=other_bundle, client_cert_pem=new_cert, client_key_pem=new_key
    )
    assert rebundled not in (before, after)


async def test_the_rotated_client_presents_the_new_certificate(
    ca: CertificateAuthority, mtls_server: MutualTLSServer, clients: transport.HttpClients
) -> None:
    bundle = ca.cert_pem.decode()
    for name in ("payments-client-v1", "payments-client-v2"):
        pair = ca.issue(name)
        cert, key = text(pair)
        http = clients.for_tls(ca_pem=bundle, client_cert_pem=cert, client_key_pem=key)
        result = await fetch_with_certificate(http, mtls_server.url, pair)
        assert result.token.access_token == name


def closed(client: httpx.AsyncClient) -> bool:
    return client.is_closed


async def test_the_cache_is_bounded_and_retired_clients_are_closed(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "MAX_TLS_CLIENTS", 2)
    monkeypatch.setattr(transport, "RETIRE_AFTER", 0.05)
    pairs = [text(ca.issue(f"client-{i}")) for i in range(4)]
    clients = transport.HttpClients(timeout=5.0, max_connections=4)
    try:

        def get(i: int) -> httpx.AsyncClient:
            cert, key = pairs[i]
            return clients.for_tls(client_cert_pem=cert, client_key_pem=key)

        a, b = get(0), get(1)
        assert get(0) is a  # a is now the most recently used
        c = get(2)  # evicts b, the least recently used
        assert get(0) is a
        assert get(2) is c
        assert not closed(b)  # a request may still be using it ...
        await asyncio.sleep(0.3)
        assert closed(b)  # ... until RETIRE_AFTER has passed
        assert not closed(a)
        assert not closed(c)
        assert get(1) is not b  # b's inputs get a fresh client, evicting a
        d = get(3)
        assert get(3) is d
        assert get(0) is not a
    finally:
        await clients.aclose()
    assert closed(clients.default)
    assert closed(a)
    assert closed(d)


async def test_aclose_closes_clients_still_waiting_to_retire(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "MAX_TLS_CLIENTS", 1)
    clients = transport.HttpClients(timeout=5.0, max_connections=4)
    first = clients.for_tls(ca_pem=ca.cert_pem.decode())
    second = clients.for_tls(ca_pem=CertificateAuthority("another").cert_pem.decode())
    assert not closed(first)  # retiring, RETIRE_AFTER (120 s) away
    await clients.aclose()
    assert closed(first)
    assert closed(second)
    assert closed(clients.default)
