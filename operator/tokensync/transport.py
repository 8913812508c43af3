"""The HTTP clients token requests go through: one shared client, plus one per TLS setup.

Connection pools and TLS contexts are expensive; every credential that trusts the system
store and presents no client certificate shares one ``httpx.AsyncClient``. A credential
with ``spec.caBundleRef`` or ``spec.clientCertificateRef`` gets the client for exactly that
bundle and certificate, keyed by their SHA-256, so credentials that share them share a
client too, and a rotated certificate gets a new client from the next request on. The cache
is bounded; the least recently used client is closed a while after it leaves the cache
(a request may still be using it).

Python's ``ssl`` loads a certificate chain only from files. The key is written to an
anonymous in-memory file (``memfd_create``), loaded, and the file closed at once: it never
touches a disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator

import httpx

MAX_TLS_CLIENTS = 64
#: Longer than any request may take (request timeout plus margin).
RETIRE_AFTER = 120.0


class BadCABundle(ValueError):
    """The bundle holds no usable PEM certificate."""


class BadClientCertificate(ValueError):
    """The client certificate or its key cannot be loaded."""


@contextlib.contextmanager
def _in_memory_file(data: bytes) -> Iterator[str]:
    """A path whose content is ``data``, for APIs that only read files."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("tokensync-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:  # pragma: no cover -- not Linux
        path = os.path.join(directory, "pem")
        with open(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600), "wb") as handle:
            handle.write(data)
        yield path


def _no_password() -> bytes:
    raise ValueError("encrypted private keys are not supported")


def tls_context(
    *, ca_pem: str | None, client_cert_pem: str | None, client_key_pem: str | None
) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cadata=ca_pem) if ca_pem else None
    except (ssl.SSLError, ValueError):
        raise BadCABundle("the CA bundle holds no valid PEM certificate") from None
    if context is None:
        context = ssl.create_default_context()
    if client_cert_pem and client_key_pem:
        with (
            _in_memory_file(client_cert_pem.encode()) as cert_path,
            _in_memory_file(client_key_pem.encode()) as key_path,
        ):
            try:
                # A password callback, so that an encrypted key fails instead of OpenSSL
                # prompting on a terminal (and blocking the event loop).
                context.load_cert_chain(cert_path, key_path, password=_no_password)
            except (ssl.SSLError, ValueError, OSError):
                raise BadClientCertificate(
                    "tls.crt and tls.key are not a matching PEM certificate and "
                    "unencrypted private key"
                ) from None
    return context


async def handshake_alert(
    url: str,
    *,
    ca_pem: str | None,
    client_cert_pem: str,
    client_key_pem: str,
    seconds: float,
) -> str | None:
    """The TLS error the server answers a handshake with (``SSLError.reason``), or None.

    A diagnosis after a request with a client certificate lost its connection. With TLS 1.3
    the server checks the certificate after the client's handshake is done, and a server
    that then resets the connection leaves the client a bare read error. One handshake
    limited to TLS 1.2, where the certificate is checked inside the handshake, brings the
    alert back (the caller tells certificate alerts from others: oauth.is_certificate_alert).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    context = tls_context(
        ca_pem=ca_pem, client_cert_pem=client_cert_pem, client_key_pem=client_key_pem
    )
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    writer = None
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(
                parts.hostname, parts.port or 443, ssl=context
            )
            writer.write(b"HEAD / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            await writer.drain()
            await reader.read(1)
    except ssl.SSLError as exc:
        return str(exc.reason or "") or None
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return None


class HttpClients:
    def __init__(self, *, timeout: float, max_connections: int) -> None:
        self._timeout = timeout
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self.default = self._client(verify=True)
        self._by_tls: collections.OrderedDict[str, httpx.AsyncClient] = collections.OrderedDict()
        # Clients out of the cache, each with the task that closes it later (or None).
        self._retiring: dict[httpx.AsyncClient, asyncio.Task[None] | None] = {}

    def _client(self, *, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            limits=self._limits,
            follow_redirects=False,
            verify=verify,
        )

    def for_tls(
        self,
        *,
        ca_pem: str | None = None,
        client_cert_pem: str | None = None,
        client_key_pem: str | None = None,
    ) -> httpx.AsyncClient:
        """The client for this trust store and client certificate (None: the defaults)."""
        if not (ca_pem or client_cert_pem):
            return self.default
        digest = hashlib.sha256()
        for part in (ca_pem, client_cert_pem, client_key_pem):
            digest.update((part or "").encode() + b"\0")
        key = digest.hexdigest()
        client = self._by_tls.get(key)
        if client is not None:
            self._by_tls.move_to_end(key)
            return client
        context = tls_context(
            ca_pem=ca_pem, client_cert_pem=client_cert_pem, client_key_pem=client_key_pem
        )
        client = self._client(verify=context)
        self._by_tls[key] = client
        if len(self._by_tls) > MAX_TLS_CLIENTS:
            _, oldest = self._by_tls.popitem(last=False)
            self._retire(oldest)
        return client

    def _retire(self, client: httpx.AsyncClient) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._retiring[client] = None  # closed at shutdown
            return

        async def close_later() -> None:
            await asyncio.sleep(RETIRE_AFTER)
            await client.aclose()
            self._retiring.pop(client, None)

        self._retiring[client] = loop.create_task(close_later())

    async def aclose(self) -> None:
        for task in self._retiring.values():
            if task is not None:
                task.cancel()
        for client in [self.default, *self._by_tls.values(), *self._retiring]:
            await client.aclose()
