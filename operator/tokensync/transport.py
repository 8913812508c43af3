"""The HTTP clients token requests go through: one shared client, plus one per private CA.

Connection pools and TLS contexts are expensive; every credential that trusts the system
store shares one ``httpx.AsyncClient``. A credential with ``spec.caBundleRef`` gets the
client for its bundle, keyed by the bundle's SHA-256, so credentials that share a CA share a
client too. The cache is bounded; the least recently used client is closed when it is full.
"""

from __future__ import annotations

import collections
import hashlib
import ssl

import httpx

MAX_CA_CLIENTS = 32


class BadCABundle(ValueError):
    """The bundle holds no usable PEM certificate."""


class HttpClients:
    def __init__(self, *, timeout: float, max_connections: int) -> None:
        self._timeout = timeout
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self.default = self._client(verify=True)
        self._by_ca: collections.OrderedDict[str, httpx.AsyncClient] = collections.OrderedDict()
        self._retired: list[httpx.AsyncClient] = []

    def _client(self, *, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            limits=self._limits,
            follow_redirects=False,
            verify=verify,
        )

    def for_ca_bundle(self, pem: str | None) -> httpx.AsyncClient:
        """The client trusting exactly ``pem`` (or the system store when None)."""
        if pem is None:
            return self.default
        digest = hashlib.sha256(pem.encode()).hexdigest()
        client = self._by_ca.get(digest)
        if client is not None:
            self._by_ca.move_to_end(digest)
            return client
        try:
            context = ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError):
            raise BadCABundle("the CA bundle holds no valid PEM certificate") from None
        client = self._client(verify=context)
        self._by_ca[digest] = client
        if len(self._by_ca) > MAX_CA_CLIENTS:
            _, oldest = self._by_ca.popitem(last=False)
            self._retired.append(oldest)  # closed at shutdown: a request may be using it
        return client

    async def aclose(self) -> None:
        for client in [self.default, *self._by_ca.values(), *self._retired]:
            await client.aclose()
