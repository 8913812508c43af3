"""Issuer discovery: where the metadata lives, what is accepted from it, and how it is cached.

``fetch_metadata`` is exercised against a real HTTP server on loopback (plain
``http.server`` in a thread), so redirects, status codes and oversized bodies are what a
socket delivers, not what a mock imagines.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tokensync import discovery, failures, responses

# -- well_known_urls -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "openid", "rfc8414"),
    [
        pytest.param(
            "https://idp.example.com",
            "https://idp.example.com/.well-known/openid-configuration",
            "https://idp.example.com/.well-known/oauth-authorization-server",
            id="no-path",
        ),
        pytest.param(
            "https://idp.example.com/",
            "https://idp.example.com/.well-known/openid-configuration",
            "https://idp.example.com/.well-known/oauth-authorization-server",
            id="root-slash",
        ),
        pytest.param(
            # OIDC Discovery appends; RFC 8414 section 3.1 inserts before the path.
            "https://idp.example.com/tenants/acme",
            "https://idp.example.com/tenants/acme/.well-known/openid-configuration",
            "https://idp.example.com/.well-known/oauth-authorization-server/tenants/acme",
            id="path",
        ),
        pytest.param(
            "https://idp.example.com/tenants/acme/",
            "https://idp.example.com/tenants/acme/.well-known/openid-configuration",
            "https://idp.example.com/.well-known/oauth-authorization-server/tenants/acme",
            id="path-trailing-slash",
        ),
        pytest.param(
            "https://idp.example.com:8443/realms/x",
            "https://idp.example.com:8443/realms/x/.well-known/openid-configuration",
            "https://idp.example.com:8443/.well-known/oauth-authorization-server/realms/x",
            id="port",
        ),
    ],
)
def test_well_known_urls(issuer: str, openid: str, rfc8414: str) -> None:
    assert discovery.well_known_urls(issuer) == [openid, rfc8414]


# -- parse_metadata --------------------------------------------------------------------------

ISSUER = "https://idp.example.com/tenants/acme"
TOKEN = "https://idp.example.com/tenants/acme/oauth2/token"


def document(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"issuer": ISSUER, "token_endpoint": TOKEN}
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def test_parse_metadata_minimal() -> None:
    assert discovery.parse_metadata(document(), issuer=ISSUER) == discovery.Metadata(
        issuer=ISSUER, token_endpoint=TOKEN, mtls_token_endpoint=None, auth_methods=None
    )


@pytest.mark.parametrize(
    ("found", "configured"),
    [(ISSUER + "/", ISSUER), (ISSUER, ISSUER + "/"), (ISSUER, ISSUER)],
)
def test_parse_metadata_tolerates_a_trailing_slash(found: str, configured: str) -> None:
    metadata = discovery.parse_metadata(document(issuer=found), issuer=configured)
    assert metadata.token_endpoint == TOKEN
    assert metadata.issuer == configured


@pytest.mark.parametrize(
    "found",
    [
        "https://evil.example.com/tenants/acme",
        "https://idp.example.com/tenants/other",
        "https://idp.example.com/tenants/acme/sub",
        "http://idp.example.com/tenants/acme",
        "",
        None,
        42,
        ["https://idp.example.com/tenants/acme"],
    ],
)
def test_a_document_for_another_issuer_is_refused_for_good(found: object) -> None:
    raw = document()
    raw["issuer"] = found
    if found is None:
        del raw["issuer"]
    with pytest.raises(failures.TokenError) as caught:
        discovery.parse_metadata(raw, issuer=ISSUER)
    assert (caught.value.reason, caught.value.permanent) == ("IssuerMismatch", True)
    assert "evil" not in str(caught.value)  # the foreign issuer is not echoed


@pytest.mark.parametrize("endpoint", [None, "", 42, ["https://x"], {"url": "https://x"}])
def test_a_document_without_a_token_endpoint_is_invalid(endpoint: object) -> None:
    raw = document(token_endpoint=None)
    if endpoint is not None:
        raw["token_endpoint"] = endpoint
    with pytest.raises(failures.TokenError) as caught:
        discovery.parse_metadata(raw, issuer=ISSUER)
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryInvalid", True)


@pytest.mark.parametrize("raw", [None, [], "doc", 42, [document()]])
def test_a_document_that_is_not_an_object_is_transient(raw: object) -> None:
    with pytest.raises(failures.TokenError) as caught:
        discovery.parse_metadata(raw, issuer=ISSUER)
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryFailed", False)


@pytest.mark.parametrize(
    ("aliases", "expected"),
    [
        (
            {"token_endpoint": "https://mtls.idp.example.com/token"},
            "https://mtls.idp.example.com/token",
        ),
        ({"token_endpoint": ""}, None),
        ({"token_endpoint": 7}, None),
        ({"revocation_endpoint": "https://mtls.idp.example.com/revoke"}, None),
        (["https://mtls.idp.example.com/token"], None),
        ("https://mtls.idp.example.com/token", None),
    ],
)
def test_mtls_endpoint_alias(aliases: object, expected: str | None) -> None:
    metadata = discovery.parse_metadata(document(mtls_endpoint_aliases=aliases), issuer=ISSUER)
    assert metadata.mtls_token_endpoint == expected
    assert metadata.token_endpoint == TOKEN


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        (["private_key_jwt", "tls_client_auth"], ("private_key_jwt", "tls_client_auth")),
        ([], ()),
        (["client_secret_basic", 5, None, "none"], ("client_secret_basic", "none")),
        ("client_secret_basic", None),  # not a list: the document does not say
        ({"client_secret_basic": True}, None),
    ],
)
def test_auth_methods_supported(methods: object, expected: tuple[str, ...] | None) -> None:
    raw = document(token_endpoint_auth_methods_supported=methods)
    assert discovery.parse_metadata(raw, issuer=ISSUER).auth_methods == expected


def test_a_huge_methods_list_keeps_its_first_names_of_bounded_length() -> None:
    """A document of under the cap can list tens of thousands of names: only the first
    MAX_METHODS names of at most MAX_METHOD_LENGTH characters are kept."""
    long_name = "m" * (discovery.MAX_METHOD_LENGTH + 1)
    listed = [long_name, "client_secret_basic", *(f"x{i}" for i in range(20_000))]
    raw = document(token_endpoint_auth_methods_supported=listed)
    methods = discovery.parse_metadata(raw, issuer=ISSUER).auth_methods
    assert methods is not None
    assert len(methods) == discovery.MAX_METHODS
    assert methods[0] == "client_secret_basic"
    assert long_name not in methods
    assert max(map(len, methods)) <= discovery.MAX_METHOD_LENGTH


@pytest.mark.parametrize("field", ["token_endpoint", "mtls_endpoint_aliases.token_endpoint"])
def test_a_url_over_the_bound_is_invalid(field: str) -> None:
    url = "https://idp.example.com/" + "t" * discovery.MAX_URL_LENGTH
    if field == "token_endpoint":
        raw = document(token_endpoint=url)
    else:
        raw = document(mtls_endpoint_aliases={"token_endpoint": url})
    with pytest.raises(failures.TokenError) as caught:
        discovery.parse_metadata(raw, issuer=ISSUER)
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryInvalid", True)
    assert field in str(caught.value)
    at_bound = url[: discovery.MAX_URL_LENGTH]
    raw = document(token_endpoint=at_bound)
    assert discovery.parse_metadata(raw, issuer=ISSUER).token_endpoint == at_bound


# -- token_endpoint ----------------------------------------------------------------------------

MTLS = "https://mtls.idp.example.com/token"


@pytest.mark.parametrize(
    ("alias", "client_certificate", "expected"),
    [
        # RFC 8705 section 5: the alias is for clients that present a certificate.
        (MTLS, True, MTLS),
        (MTLS, False, TOKEN),
        (None, True, TOKEN),
        (None, False, TOKEN),
    ],
)
def test_token_endpoint(alias: str | None, client_certificate: bool, expected: str) -> None:
    metadata = discovery.Metadata(issuer=ISSUER, token_endpoint=TOKEN, mtls_token_endpoint=alias)
    assert discovery.token_endpoint(metadata, client_certificate=client_certificate) == expected


# -- a real HTTP server on loopback ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    #: Send no Content-Length and close after the body.
    unframed: bool = False

    @classmethod
    def json(cls, document: object) -> Reply:
        return cls(body=json.dumps(document).encode())


class DiscoveryServer:
    """Answers GETs from ``routes`` (path -> Reply), 404 otherwise; records request paths."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner._lock:
                    owner.paths.append(self.path)
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                    reply = owner.routes.get(self.path, Reply(404, b'{"error":"not_found"}'))
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                if reply.unframed:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    view = memoryview(reply.body)
                    for start in range(0, len(view), 64 * 1024):
                        self.wfile.write(view[start : start + 64 * 1024])
                except OSError:
                    self.close_connection = True  # the client stopped reading: the cap

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def issuer(self, path: str = "") -> str:
        return self.base + path

    def serve_openid(self, path: str = "", **changes: Any) -> dict[str, Any]:
        """The OIDC-form document for the issuer at ``path``."""
        doc = {"issuer": self.issuer(path), "token_endpoint": self.issuer(path) + "/token"}
        doc.update(changes)
        self.routes[path + discovery.OPENID_PATH] = Reply.json(doc)
        return doc


@pytest.fixture
def server() -> Iterator[DiscoveryServer]:
    running = DiscoveryServer()
    running.start()
    yield running
    running.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not stand between us and loopback.
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


async def fetch(client: httpx.AsyncClient, issuer: str) -> discovery.Metadata:
    return await discovery.fetch_metadata(client, issuer, timeout=5.0)


async def test_openid_form_is_found_first(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    doc = server.serve_openid(
        "/tenants/acme",
        token_endpoint_auth_methods_supported=["private_key_jwt"],
        mtls_endpoint_aliases={"token_endpoint": "https://mtls.example.com/token"},
    )
    metadata = await fetch(client, server.issuer("/tenants/acme"))
    assert metadata == discovery.Metadata(
        issuer=server.issuer("/tenants/acme"),
        token_endpoint=doc["token_endpoint"],
        mtls_token_endpoint="https://mtls.example.com/token",
        auth_methods=("private_key_jwt",),
    )
    assert server.paths == ["/tenants/acme/.well-known/openid-configuration"]
    assert server.headers[0]["accept"] == "application/json"


@pytest.mark.parametrize("first_status", [404, 405, 410])
async def test_rfc8414_form_after_a_missing_openid_document(
    server: DiscoveryServer, client: httpx.AsyncClient, first_status: int
) -> None:
    issuer = server.issuer("/tenants/acme")
    server.routes["/tenants/acme/.well-known/openid-configuration"] = Reply(first_status)
    server.routes["/.well-known/oauth-authorization-server/tenants/acme"] = Reply.json(
        {"issuer": issuer, "token_endpoint": issuer + "/rfc8414-token"}
    )
    metadata = await fetch(client, issuer)
    assert metadata.token_endpoint == issuer + "/rfc8414-token"
    assert server.paths == [
        "/tenants/acme/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/tenants/acme",
    ]


async def test_no_document_at_either_place_is_permanent(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, server.issuer("/tenants/acme"))
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryFailed", True)
    assert "HTTP 404, 404" in str(caught.value)
    assert len(server.paths) == 2


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_an_outage_is_transient_and_the_second_form_is_not_tried(
    server: DiscoveryServer, client: httpx.AsyncClient, status: int
) -> None:
    issuer = server.issuer()
    server.routes[discovery.OPENID_PATH] = Reply(status, b"{}")
    server.routes[discovery.OAUTH_PATH] = Reply.json(
        {"issuer": issuer, "token_endpoint": issuer + "/token"}
    )
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, issuer)
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryFailed", False)
    assert server.paths == [discovery.OPENID_PATH]  # an outage is not a missing document


async def test_a_404_then_an_outage_is_transient(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    server.routes[discovery.OAUTH_PATH] = Reply(503, b"{}")
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, server.issuer())
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryFailed", False)
    assert len(server.paths) == 2


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed(
    server: DiscoveryServer, client: httpx.AsyncClient, status: int
) -> None:
    issuer = server.issuer("/a")
    server.serve_openid("/b")  # a valid document for another issuer, where the redirect points
    server.routes["/a" + discovery.OPENID_PATH] = Reply(
        status, headers=(("Location", server.issuer("/b") + discovery.OPENID_PATH),)
    )
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, issuer)
    assert caught.value.reason == "DiscoveryFailed"
    assert f"HTTP {status}" in str(caught.value)
    assert server.paths == ["/a" + discovery.OPENID_PATH]  # neither the target nor RFC 8414


async def test_a_redirect_is_not_followed_even_by_a_client_that_would(
    server: DiscoveryServer,
) -> None:
    server.serve_openid("/b")
    server.routes["/a" + discovery.OPENID_PATH] = Reply(
        302, headers=(("Location", server.issuer("/b") + discovery.OPENID_PATH),)
    )
    async with httpx.AsyncClient(trust_env=False, follow_redirects=True) as eager:
        with pytest.raises(failures.TokenError):
            await fetch(eager, server.issuer("/a"))
    assert server.paths == ["/a" + discovery.OPENID_PATH]


@pytest.mark.parametrize("unframed", [False, True], ids=["content-length", "unframed"])
async def test_a_body_over_the_cap_is_refused(
    server: DiscoveryServer, client: httpx.AsyncClient, *, unframed: bool
) -> None:
    issuer = server.issuer()
    padding = "x" * (discovery.MAX_DOCUMENT_BYTES + 1)
    body = json.dumps({"issuer": issuer, "token_endpoint": issuer + "/t", "pad": padding})
    server.routes[discovery.OPENID_PATH] = Reply(body=body.encode(), unframed=unframed)
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, issuer)
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryFailed", False)
    assert "128 KiB" in str(caught.value)


def test_the_document_cap_is_below_the_token_response_cap() -> None:
    """A discovery document is a few KiB; parsing JSON can cost 20 times what it reads."""
    assert discovery.MAX_DOCUMENT_BYTES <= responses.MAX_BODY_BYTES // 8


async def test_a_body_just_under_the_cap_is_read(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    issuer = server.issuer()
    doc = {"issuer": issuer, "token_endpoint": issuer + "/t", "pad": ""}
    size = len(json.dumps(doc))
    doc["pad"] = "x" * (discovery.MAX_DOCUMENT_BYTES - size)
    assert len(json.dumps(doc)) == discovery.MAX_DOCUMENT_BYTES
    server.routes[discovery.OPENID_PATH] = Reply.json(doc)
    assert (await fetch(client, issuer)).token_endpoint == issuer + "/t"


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b"", b"[" * 100_000])
async def test_an_unreadable_document_is_transient(
    server: DiscoveryServer, client: httpx.AsyncClient, body: bytes
) -> None:
    server.routes[discovery.OPENID_PATH] = Reply(body=body)
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, server.issuer())
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryFailed", False)


async def test_a_document_for_another_issuer_stops_the_search(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    # A valid RFC 8414 document is there, but the OIDC one names another issuer.
    server.routes[discovery.OPENID_PATH] = Reply.json(
        {"issuer": "https://elsewhere.example.com", "token_endpoint": "https://x/t"}
    )
    server.routes[discovery.OAUTH_PATH] = Reply.json(
        {"issuer": server.issuer(), "token_endpoint": server.issuer() + "/t"}
    )
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, server.issuer())
    assert (caught.value.reason, caught.value.permanent) == ("IssuerMismatch", True)
    assert server.paths == [discovery.OPENID_PATH]


async def test_an_unreachable_issuer_is_transient(client: httpx.AsyncClient) -> None:
    stopped = DiscoveryServer()  # bound, never served, then closed: the port refuses
    issuer = stopped.issuer()
    stopped._server.server_close()
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, issuer)
    assert (caught.value.reason, caught.value.permanent) == ("DiscoveryFailed", False)
    assert "127.0.0.1" not in str(caught.value)


# -- MetadataCache -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def cached(
    cache: discovery.MetadataCache,
    client: httpx.AsyncClient,
    issuer: str,
    *,
    trust: str = "system",
) -> discovery.Metadata:
    return await cache.get(client, issuer, trust=trust, timeout=5.0)


def requests_per_issuer(server: DiscoveryServer) -> collections.Counter[str]:
    return collections.Counter(p.removesuffix(discovery.OPENID_PATH) for p in server.paths)


async def test_cache_hit_within_the_ttl_and_refetch_after(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    cache = discovery.MetadataCache(ttl=60.0, monotonic=clock)
    server.serve_openid()
    first = await cached(cache, client, server.issuer())
    clock.now += 59.9
    assert await cached(cache, client, server.issuer()) is first
    assert (cache.fetches, len(server.paths)) == (1, 1)
    # The document changes; the cache keeps serving the old one until the TTL is over.
    server.serve_openid(token_endpoint=server.issuer() + "/moved")
    assert (await cached(cache, client, server.issuer())).token_endpoint == first.token_endpoint
    clock.now += 0.1  # exactly ttl after the fetch
    refreshed = await cached(cache, client, server.issuer())
    assert refreshed.token_endpoint == server.issuer() + "/moved"
    assert (cache.fetches, len(server.paths)) == (2, 2)
    # The TTL counts from the new fetch.
    clock.now += 59
    assert await cached(cache, client, server.issuer()) is refreshed
    assert cache.fetches == 2


async def test_invalidate_forces_a_fetch(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    cache = discovery.MetadataCache(monotonic=FakeClock())
    server.serve_openid()
    await cached(cache, client, server.issuer())
    cache.invalidate(server.issuer(), trust="another-trust")  # another entry: no effect
    await cached(cache, client, server.issuer())
    assert cache.fetches == 1
    cache.invalidate(server.issuer(), trust="system")
    assert len(cache) == 0
    await cached(cache, client, server.issuer())
    assert (cache.fetches, len(server.paths)) == (2, 2)
    cache.invalidate("https://never-cached.example.com", trust="system")  # no error


async def test_the_key_includes_the_trust_store(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    cache = discovery.MetadataCache(monotonic=FakeClock())
    server.serve_openid()
    a = await cached(cache, client, server.issuer(), trust="sha256-of-bundle-a")
    b = await cached(cache, client, server.issuer(), trust="sha256-of-bundle-b")
    assert a == b
    assert (cache.fetches, len(cache)) == (2, 2)
    await cached(cache, client, server.issuer(), trust="sha256-of-bundle-a")
    assert cache.fetches == 2


async def test_the_cache_is_bounded_least_recently_used_first(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    cache = discovery.MetadataCache(max_entries=2, monotonic=FakeClock())
    for path in ("/a", "/b", "/c"):
        server.serve_openid(path)
    await cached(cache, client, server.issuer("/a"))
    await cached(cache, client, server.issuer("/b"))
    await cached(cache, client, server.issuer("/a"))  # a is now the most recently used
    await cached(cache, client, server.issuer("/c"))  # evicts b
    assert len(cache) == 2
    await cached(cache, client, server.issuer("/a"))
    await cached(cache, client, server.issuer("/c"))
    assert requests_per_issuer(server) == {"/a": 1, "/b": 1, "/c": 1}
    await cached(cache, client, server.issuer("/b"))  # fetched again, evicting a
    assert requests_per_issuer(server)["/b"] == 2
    assert len(cache) == 2
    await cached(cache, client, server.issuer("/a"))
    assert requests_per_issuer(server)["/a"] == 2


async def test_the_cache_is_bounded_in_characters(
    server: DiscoveryServer, client: httpx.AsyncClient
) -> None:
    """Entries are evicted, least recently used first, once the strings kept pass the
    bound, however few entries there are."""
    for path in ("/a", "/b", "/c"):
        server.serve_openid(path)
    one = len(server.issuer("/a")) * 2 + len(server.issuer("/a") + "/token") + len("trust")
    cache = discovery.MetadataCache(max_characters=2 * one + 10, monotonic=FakeClock())
    await cached(cache, client, server.issuer("/a"), trust="trust")
    await cached(cache, client, server.issuer("/b"), trust="trust")
    assert len(cache) == 2
    await cached(cache, client, server.issuer("/c"), trust="trust")  # evicts a
    assert len(cache) == 2
    await cached(cache, client, server.issuer("/b"), trust="trust")
    assert requests_per_issuer(server) == {"/a": 1, "/b": 1, "/c": 1}
    await cached(cache, client, server.issuer("/a"), trust="trust")
    assert requests_per_issuer(server)["/a"] == 2
    cache.invalidate(server.issuer("/a"), trust="trust")
    cache.invalidate(server.issuer("/a"), trust="trust")  # twice: counted once
    await cached(cache, client, server.issuer("/a"), trust="trust")
    assert len(cache) == 2


async def test_failures_are_not_cached(server: DiscoveryServer, client: httpx.AsyncClient) -> None:
    cache = discovery.MetadataCache(monotonic=FakeClock())
    server.routes[discovery.OPENID_PATH] = Reply(503, b"{}")
    with pytest.raises(failures.TokenError):
        await cached(cache, client, server.issuer())
    assert len(cache) == 0
    server.serve_openid()
    assert (await cached(cache, client, server.issuer())).issuer == server.issuer()
    assert len(server.paths) == 2
