"""Authorization server metadata: find the token endpoint from the issuer.

``spec.issuerURL`` names the issuer; its metadata document says where the token endpoint
is and which client authentication methods it takes. The OpenID Connect form
(``<issuer>/.well-known/openid-configuration``) is tried first, then RFC 8414's
(``/.well-known/oauth-authorization-server`` inserted before the issuer's path). The
document's ``issuer`` must equal the configured one (RFC 8414 section 3.3), so that a
document served elsewhere cannot redirect the credentials. The token endpoint found there
passes the same URL checks as a configured ``tokenURL``; the client given connects only where
the destination rules allow (``transport.GuardedBackend``), the document's host included.

Documents are cached per issuer and trust store for a bounded time, the cache has a bounded
size, and a token request that fails for a reason a moved endpoint could explain drops
the entry, so the next attempt reads the document again.

An issuer's document is written by whoever runs the issuer, which any tenant may choose,
so what it can cost is bounded (issue 14 section 3): the body at :data:`MAX_DOCUMENT_BYTES`
(real documents are a few KiB), the URLs kept at :data:`MAX_URL_LENGTH` (the CRD's bound
for a tokenURL), the methods list at :data:`MAX_METHODS` names of at most
:data:`MAX_METHOD_LENGTH` characters, and the cache at :data:`MAX_ENTRIES` entries and
:data:`MAX_CACHE_CHARACTERS` characters in all. Only the four fields used are kept.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from tokensync import failures, oauth, proxies, urlpolicy

OPENID_PATH = "/.well-known/openid-configuration"
OAUTH_PATH = "/.well-known/oauth-authorization-server"
DEFAULT_TTL = 3600.0
MAX_ENTRIES = 1024
#: Keycloak's document, among the largest, is under 8 KiB; parsing JSON can take 20 times
#: the bytes it reads, so the cap also bounds what a fetch holds while it parses.
MAX_DOCUMENT_BYTES = 128 * 1024
MAX_URL_LENGTH = 2048
#: token_endpoint_auth_methods_supported: the names registered with IANA are under 30
#: characters and about a dozen; entries past these bounds are ignored.
MAX_METHODS = 32
MAX_METHOD_LENGTH = 64
#: All the strings the cache keeps (keys and metadata); about 2,000 typical entries.
MAX_CACHE_CHARACTERS = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Metadata:
    issuer: str
    token_endpoint: str
    #: ``mtls_endpoint_aliases.token_endpoint`` (RFC 8705 section 5), used with a client
    #: certificate.
    mtls_token_endpoint: str | None = None
    #: ``token_endpoint_auth_methods_supported``; None when the document does not say.
    auth_methods: tuple[str, ...] | None = None


def token_endpoint(metadata: Metadata, *, client_certificate: bool) -> str:
    """Where token requests go: with a client certificate, the mTLS alias if the document
    has one (RFC 8705 section 5), since the plain endpoint may not ask for certificates."""
    if client_certificate and metadata.mtls_token_endpoint:
        return metadata.mtls_token_endpoint
    return metadata.token_endpoint


def _error(
    message: str, *, reason: str = "DiscoveryFailed", permanent: bool
) -> failures.TokenError:
    return failures.TokenError(message, reason=reason, permanent=permanent)


def well_known_urls(issuer: str) -> list[str]:
    """Where the metadata may be: the OpenID Connect form, then RFC 8414's."""
    parts = urllib.parse.urlsplit(issuer)
    path = parts.path.rstrip("/")
    openid = urllib.parse.urlunsplit(parts._replace(path=path + OPENID_PATH, query=""))
    oauth_url = urllib.parse.urlunsplit(parts._replace(path=OAUTH_PATH + path, query=""))
    return [openid, oauth_url]


def _same_issuer(a: str, b: str) -> bool:
    # RFC 8414 asks for identical strings; a trailing slash is the one difference we forgive.
    return a.rstrip("/") == b.rstrip("/")


def parse_metadata(document: object, *, issuer: str) -> Metadata:
    """Read the fields tokensync uses, refusing a document for another issuer."""
    if not isinstance(document, Mapping):
        raise _error("the discovery document is not a JSON object", permanent=False)
    found = document.get("issuer")
    if not isinstance(found, str) or not _same_issuer(found, issuer):
        raise _error(
            "the discovery document names another issuer than spec.issuerURL",
            reason="IssuerMismatch",
            permanent=True,
        )
    endpoint = document.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise _error(
            "the discovery document has no token_endpoint",
            reason="DiscoveryInvalid",
            permanent=True,
        )
    aliases = document.get("mtls_endpoint_aliases")
    mtls = aliases.get("token_endpoint") if isinstance(aliases, Mapping) else None
    for field, url in (
        ("token_endpoint", endpoint),
        ("mtls_endpoint_aliases.token_endpoint", mtls),
    ):
        if isinstance(url, str) and len(url) > MAX_URL_LENGTH:
            raise _error(
                f"the discovery document's {field} is longer than {MAX_URL_LENGTH} characters",
                reason="DiscoveryInvalid",
                permanent=True,
            )
    methods = document.get("token_endpoint_auth_methods_supported")
    return Metadata(
        issuer=issuer,
        token_endpoint=endpoint,
        mtls_token_endpoint=mtls if isinstance(mtls, str) and mtls else None,
        auth_methods=_methods(methods) if isinstance(methods, list) else None,
    )


def _methods(listed: list[Any]) -> tuple[str, ...]:
    """The first :data:`MAX_METHODS` names of at most :data:`MAX_METHOD_LENGTH` characters."""
    names = (m for m in listed if isinstance(m, str) and len(m) <= MAX_METHOD_LENGTH)
    return tuple(itertools.islice(names, MAX_METHODS))


def _characters(key: tuple[str, str], metadata: Metadata) -> int:
    strings = [*key, metadata.issuer, metadata.token_endpoint, *(metadata.auth_methods or ())]
    return sum(map(len, strings)) + len(metadata.mtls_token_endpoint or "")


async def _get(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,  # noqa: ASYNC109
    headers: Sequence[tuple[str, str]] = (),
) -> tuple[int, object]:
    sent = oauth.own_headers(headers)
    try:
        async with asyncio.timeout(timeout):
            async with client.stream(
                "GET",
                url,
                headers=sent,
                timeout=timeout,
                follow_redirects=False,
            ) as response:
                body = await oauth.read_capped(response, cap=MAX_DOCUMENT_BYTES)
                status = response.status_code
    except (urlpolicy.Refused, proxies.ProxyFailed):
        raise  # a refused address, or the proxy's failure: nothing reached the issuer
    except failures.TokenError:
        raise _error(
            f"the discovery document exceeds {MAX_DOCUMENT_BYTES // 1024} KiB", permanent=False
        ) from None
    except (httpx.TimeoutException, TimeoutError):
        raise _error(f"discovery timed out after {timeout:g}s", permanent=False) from None
    except (httpx.HTTPError, ssl.SSLError) as exc:
        if oauth.tls_verification_failed(exc):
            raise _error(
                "the issuer's TLS certificate is not trusted "
                "(set spec.caBundleRef for a private CA)",
                reason="TLSVerificationFailed",
                permanent=True,
            ) from None
        raise _error(f"cannot reach the issuer ({type(exc).__name__})", permanent=False) from None
    try:
        document: Any = json.loads(body) if 200 <= status < 300 else None
    except (ValueError, RecursionError):
        document = None
    return status, document


async def fetch_metadata(
    client: httpx.AsyncClient,
    issuer: str,
    *,
    timeout: float,  # noqa: ASYNC109 -- also httpx's own timeouts, as in oauth.fetch_token
    headers: Sequence[tuple[str, str]] = (),
) -> Metadata:
    """Read the issuer's metadata (both well-known forms), or raise ``TokenError``.

    ``headers``: spec.requestHeaders, sent on discovery too (decision 0044)."""
    statuses = []
    for url in well_known_urls(issuer):
        status, document = await _get(client, url, timeout=timeout, headers=headers)
        if 200 <= status < 300:
            return parse_metadata(document, issuer=issuer)
        statuses.append(status)
        if status not in (404, 405, 410):
            break  # an outage, not a missing document: retry later rather than guess
    transient = any(s >= 500 or s == 429 for s in statuses)
    raise _error(
        f"no discovery document at the issuer (HTTP {', '.join(map(str, statuses))})",
        permanent=not transient,
    )


class MetadataCache:
    """Issuer metadata by (issuer, trust store key), each for at most ``ttl`` seconds."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = MAX_ENTRIES,
        max_characters: int = MAX_CACHE_CHARACTERS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._max_characters = max_characters
        self._characters = 0
        self._monotonic = monotonic
        self._entries: collections.OrderedDict[tuple[str, str], tuple[float, Metadata]] = (
            collections.OrderedDict()
        )
        self.fetches = 0

    async def get(
        self,
        client: httpx.AsyncClient,
        issuer: str,
        *,
        trust: str,
        timeout: float,  # noqa: ASYNC109
        headers: Sequence[tuple[str, str]] = (),
    ) -> Metadata:
        """``trust`` keys the entry with the issuer: it must differ for anything that can
        change the answer, the trust store and the request headers (decision 0044)."""
        key = (issuer, trust)
        entry = self._entries.get(key)
        if entry is not None and self._monotonic() - entry[0] < self._ttl:
            self._entries.move_to_end(key)
            return entry[1]
        self.fetches += 1
        metadata = await fetch_metadata(client, issuer, timeout=timeout, headers=headers)
        self.invalidate(issuer, trust=trust)
        self._entries[key] = (self._monotonic(), metadata)
        self._characters += _characters(key, metadata)
        while len(self._entries) > self._max or self._characters > self._max_characters:
            old_key, (_, old) = self._entries.popitem(last=False)
            self._characters -= _characters(old_key, old)
        return metadata

    def invalidate(self, issuer: str, *, trust: str) -> None:
        entry = self._entries.pop((issuer, trust), None)
        if entry is not None:
            self._characters -= _characters((issuer, trust), entry[1])

    def __len__(self) -> int:
        return len(self._entries)
