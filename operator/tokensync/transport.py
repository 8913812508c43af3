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

Every client connects through :class:`GuardedBackend`, which resolves a host once, checks
every address it resolved to against the destination rules (``urlpolicy``, with the
admin's :class:`urlpolicy.Allowance`) and connects to one of exactly those addresses, so a
name cannot pass the check with one answer and be connected to with another (decision
0037). Only such clients are handed out: token requests, discovery and the handshake
diagnosis all go through it.

With an egress proxy in the operator's environment (``HTTPS_PROXY``; ``proxies``), a
request whose destination the proxy serves goes through :class:`_RoutingTransport`: the
destination is judged by the rules that need no resolution (``urlpolicy.check_proxied``),
then the proxy is asked for a CONNECT tunnel to the destination's name, and TLS runs inside
the tunnel against that name, with the credential's CA bundle and client certificate as on
a direct connection. The proxy itself is the admin's and may be on a private address: it is
connected to without the destination rules (decision 0049). httpx's own reading of the
environment stays off: it would apply no rule to the destination.

No client keeps cookies (:class:`NoCookies`). A client is shared by every credential that
sends to the same hosts, so a cookie one token endpoint set in answer to one tenant's
request would go out with the next tenant's, and a jar without bound would grow with every
cookie an endpoint cares to set.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import http.cookiejar
import os
import socket
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from tokensync import proxies, urlpolicy

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


async def resolve_checked(
    host: str,
    port: int,
    allowance: urlpolicy.Allowance,
    *,
    timeout: float | None,  # noqa: ASYNC109 -- httpcore's connect timeout, passed through
) -> list[str]:
    """Every address ``host`` resolves to (once each, in the resolver's order), after
    :func:`urlpolicy.check_connection` passed them all. Raises ``urlpolicy.Refused``, or
    httpcore's ConnectError/ConnectTimeout as a failed connect would."""
    urlpolicy.check_connection(host, [], allowance)  # a refused name is not even looked up
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise httpcore.ConnectTimeout("name resolution timed out") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"name resolution failed ({type(exc).__name__})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise httpcore.ConnectError("the name resolved to no address")
    urlpolicy.check_connection(host, addresses, allowance)
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the destination rules in front of every connect.

    httpcore asks its backend to connect to the URL's host and port; this one resolves the
    host once, checks every answer, and connects to those addresses only, one after the
    other until one answers. TLS is unchanged: httpcore wraps the stream with the URL's host
    as the server name, so SNI and certificate verification are against the name, never
    the address.
    """

    def __init__(
        self,
        allowance: urlpolicy.Allowance,
        *,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allowance = allowance
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        addresses = await resolve_checked(host, port, self.allowance, timeout=timeout)
        failed: httpcore.ConnectError | None = None
        for address in addresses:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=left,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failed = exc  # refused or unreachable: the next checked address
        assert failed is not None  # resolve_checked returns at least one address
        raise failed

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not token endpoints")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ProxyBackend(httpcore.AsyncNetworkBackend):
    """Connects to the proxy, and only there (httpcore's proxy pool connects to nothing
    else): the admin's choice, so no destination rule applies to it. A proxy that does not
    answer is told apart from a destination that does not."""

    def __init__(
        self, proxy: proxies.Proxy, *, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._proxy = proxy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            return await self._inner.connect_tcp(
                host,
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            )
        except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
            raise proxies.unreachable(self._proxy, exc) from None

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not proxies")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on a :class:`GuardedBackend`."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool,
        limits: httpx.Limits,
        backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=context, limits=limits)
        # httpx takes no network backend, so its pool is rebuilt with the same settings and
        # this backend (tests/unit/test_transport_guard.py fails if that stops working).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


class _ProxiedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its pool on httpcore's proxy pool: https through a CONNECT
    tunnel (TLS end to end, verified against the destination's name), http forwarded."""

    def __init__(
        self, *, proxy: proxies.Proxy, verify: ssl.SSLContext | bool, limits: httpx.Limits
    ) -> None:
        context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=context, limits=limits)
        self._pool = httpcore.AsyncHTTPProxy(
            proxy_url=proxy.url,
            proxy_auth=proxy.auth,
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_ProxyBackend(proxy),
        )


class _RoutingTransport(httpx.AsyncBaseTransport):
    """Each request direct (:class:`GuardedBackend`) or through the proxy that
    ``egress`` names for its URL, the destination judged first either way."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool,
        limits: httpx.Limits,
        allowance: urlpolicy.Allowance,
        egress: proxies.Proxies,
    ) -> None:
        context = httpx.create_ssl_context(verify=verify)
        self._allowance = allowance
        self._egress = egress
        self._direct = _GuardedTransport(
            verify=context, limits=limits, backend=GuardedBackend(allowance)
        )
        self._proxied = {
            proxy: _ProxiedTransport(proxy=proxy, verify=context, limits=limits)
            for proxy in (egress.https, egress.http)
            if proxy is not None
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.raw_host.decode("ascii")
        proxy = self._egress.for_url(url.scheme, host, url.port)
        if proxy is None:
            return await self._direct.handle_async_request(request)
        # Before anything reaches the proxy: a refused destination is not even asked for.
        urlpolicy.check_proxied(host, self._allowance)
        try:
            return await self._proxied[proxy].handle_async_request(request)
        except httpx.ProxyError as exc:
            raise proxies.refused(proxy, str(exc), host) from None

    async def aclose(self) -> None:
        await self._direct.aclose()
        for transport in self._proxied.values():
            await transport.aclose()


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: ``Set-Cookie`` in an answer is ignored, so no
    request carries a cookie (headers.RESERVED refuses a ``Cookie`` header too)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


def guarded_client(
    *,
    verify: ssl.SSLContext | bool,
    allowance: urlpolicy.Allowance,
    timeout: float,
    limits: httpx.Limits,
    egress: proxies.Proxies = proxies.NONE,
) -> httpx.AsyncClient:
    """An HTTP client that connects only where the destination rules allow (and follows no
    redirects) and keeps no cookies, through ``egress``'s proxy where it names one: the
    only kind tokensync sends anything with."""
    transport: httpx.AsyncBaseTransport = _GuardedTransport(
        verify=verify, limits=limits, backend=GuardedBackend(allowance)
    )
    if egress:
        transport = _RoutingTransport(
            verify=verify, limits=limits, allowance=allowance, egress=egress
        )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        transport=transport,
        cookies=NoCookies(),
    )


async def handshake_alert(
    url: str,
    *,
    ca_pem: str | None,
    client_cert_pem: str,
    client_key_pem: str,
    seconds: float,
    allowance: urlpolicy.Allowance = urlpolicy.NO_ALLOWANCE,
    egress: proxies.Proxies = proxies.NONE,
) -> str | None:
    """The TLS error the server answers a handshake with (``SSLError.reason``), or None.

    A diagnosis after a request with a client certificate lost its connection. With TLS 1.3
    the server checks the certificate after the client's handshake is done, and a server
    that then resets the connection leaves the client a bare read error. One handshake
    limited to TLS 1.2, where the certificate is checked inside the handshake, brings the
    alert back (the caller tells certificate alerts from others: oauth.is_certificate_alert).
    The probe goes where the destination rules allow, like every request; not through a
    proxy, which the diagnosis does not speak to (no diagnosis then).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    if egress.for_url(parts.scheme, parts.hostname, parts.port) is not None:
        return None
    context = tls_context(
        ca_pem=ca_pem, client_cert_pem=client_cert_pem, client_key_pem=client_key_pem
    )
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    writer = None
    port = parts.port or 443
    try:
        async with asyncio.timeout(seconds):
            addresses = await resolve_checked(parts.hostname, port, allowance, timeout=seconds)
            reader, writer = await asyncio.open_connection(
                addresses[0], port, ssl=context, server_hostname=parts.hostname
            )
            writer.write(b"HEAD / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            await writer.drain()
            await reader.read(1)
    except ssl.SSLError as exc:
        return str(exc.reason or "") or None
    except (OSError, TimeoutError, ValueError, httpcore.ConnectError, httpcore.ConnectTimeout):
        return None
    except urlpolicy.Refused:
        return None  # the request it diagnoses was refused the same way
    finally:
        if writer is not None:
            writer.close()
    return None


class HttpClients:
    """Every HTTP client of the operator, each guarded by an allowance: ``allowance`` here
    is the default for :meth:`for_tls` callers that name none (nothing private allowed)."""

    def __init__(
        self,
        *,
        timeout: float,
        max_connections: int,
        allowance: urlpolicy.Allowance = urlpolicy.NO_ALLOWANCE,
        egress: proxies.Proxies = proxies.NONE,
    ) -> None:
        self._timeout = timeout
        #: The admin's egress proxies, for every client made here.
        self.egress = egress
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._allowance = allowance
        self.default = self._client(verify=True, allowance=allowance)
        # The client without TLS inputs, per allowance (in practice one: the operator's).
        self._plain: dict[urlpolicy.Allowance, httpx.AsyncClient] = {allowance: self.default}
        self._by_tls: collections.OrderedDict[tuple[urlpolicy.Allowance, str], httpx.AsyncClient]
        self._by_tls = collections.OrderedDict()
        # Clients out of the cache, each with the task that closes it later (or None).
        self._retiring: dict[httpx.AsyncClient, asyncio.Task[None] | None] = {}

    def _client(
        self, *, verify: ssl.SSLContext | bool, allowance: urlpolicy.Allowance
    ) -> httpx.AsyncClient:
        return guarded_client(
            verify=verify,
            allowance=allowance,
            timeout=self._timeout,
            limits=self._limits,
            egress=self.egress,
        )

    def for_tls(
        self,
        *,
        ca_pem: str | None = None,
        client_cert_pem: str | None = None,
        client_key_pem: str | None = None,
        allowance: urlpolicy.Allowance | None = None,
    ) -> httpx.AsyncClient:
        """The client for this trust store, client certificate and allowance (None: the
        defaults)."""
        allowance = self._allowance if allowance is None else allowance
        if not (ca_pem or client_cert_pem):
            client = self._plain.get(allowance)
            if client is None:
                client = self._plain[allowance] = self._client(verify=True, allowance=allowance)
            return client
        digest = hashlib.sha256()
        for part in (ca_pem, client_cert_pem, client_key_pem):
            digest.update((part or "").encode() + b"\0")
        key = (allowance, digest.hexdigest())
        client = self._by_tls.get(key)
        if client is not None:
            self._by_tls.move_to_end(key)
            return client
        context = tls_context(
            ca_pem=ca_pem, client_cert_pem=client_cert_pem, client_key_pem=client_key_pem
        )
        client = self._client(verify=context, allowance=allowance)
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
        for client in [*self._plain.values(), *self._by_tls.values(), *self._retiring]:
            await client.aclose()
