"""Which requests go through the admin's HTTP proxy, and how a proxy is named in messages.

Many clusters reach identity providers only through a forward proxy, named in the
operator's environment the way curl and most HTTP clients read it: ``https_proxy`` /
``HTTPS_PROXY`` for https URLs, ``http_proxy`` / ``HTTP_PROXY`` for http ones (the lower-case
form wins when both are set), and ``no_proxy`` / ``NO_PROXY`` for the destinations that go
direct. The proxy is the admin's choice, never a tenant's: there is no per-credential proxy
(decision 0049). Pure: the environment is passed in.

A proxy URL may carry credentials (``http://user:password@proxy:3128``). They are kept out
of ``repr``, and a proxy is only ever named by its host and port (:func:`Proxy.__str__`), in
logs, status and exception texts alike.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping

from tokensync import failures

#: Where curl and Python's urllib look, lower case first.
_VARIABLES = {
    "https": ("https_proxy", "HTTPS_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY"),
    "no": ("no_proxy", "NO_PROXY"),
}
_STATUS = re.compile(r"\d{3}")


class BadProxy(ValueError):
    """A proxy variable that is not a usable proxy URL; the message never repeats the value
    (it may hold a password)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Proxy:
    """A forward proxy reached over plain http, which tunnels https with CONNECT."""

    host: str
    port: int
    #: Basic credentials for ``Proxy-Authorization``, from the URL's userinfo.
    auth: tuple[str, str] | None = dataclasses.field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The proxy's URL without its credentials (httpcore takes those apart)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class Proxies:
    """The proxy per URL scheme, and the ``no_proxy`` entries that bypass both."""

    https: Proxy | None = None
    http: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.https is not None or self.http is not None

    def for_url(self, scheme: str, host: str, port: int | None = None) -> Proxy | None:
        """The proxy a request to this URL goes through, or None to connect directly.
        ``port`` None: the scheme's (so that a ``host:443`` entry matches a URL without one)."""
        https = scheme.lower() == "https"
        proxy = self.https if https else self.http
        port = port or (443 if https else 80)
        if proxy is None or bypassed(host, port, self.no_proxy):
            return None
        return proxy

    def __str__(self) -> str:
        parts = [
            f"{scheme} via {proxy}"
            for scheme, proxy in (("https", self.https), ("http", self.http))
            if proxy
        ]
        if not parts:
            return "none (direct connections)"
        bypass = ", ".join(self.no_proxy) or "nothing"
        return f"{'; '.join(parts)}; direct: {bypass}"


#: No proxy: every request connects directly (the default, and without the variables).
NONE = Proxies()


def from_environment(environ: Mapping[str, str]) -> Proxies:
    """The proxies the environment names. Raises :class:`BadProxy` naming the variable."""

    def read(kind: str) -> tuple[str, str] | None:
        for name in _VARIABLES[kind]:
            value = environ.get(name, "").strip()
            if value:
                return name, value
        return None

    found = {kind: read(kind) for kind in ("https", "http")}
    no = read("no")
    entries = tuple(e.strip() for e in no[1].split(",") if e.strip()) if no else ()
    return Proxies(
        https=parse_proxy(*found["https"]) if found["https"] else None,
        http=parse_proxy(*found["http"]) if found["http"] else None,
        no_proxy=entries,
    )


def parse_proxy(variable: str, value: str) -> Proxy:
    """A proxy from a variable's value: ``http://[user:password@]host[:port]``, or
    ``host:port`` (http assumed, as curl does). Only http proxies: the tunnel to the
    destination carries its own TLS, end to end."""
    text = value if "://" in value else f"http://{value}"
    problem = f"{variable} is not a proxy URL of the form http://[user:password@]host:port"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise BadProxy(problem) from None
    if parts.scheme.lower() != "http":
        raise BadProxy(f"{variable}: only http:// proxies are supported (CONNECT over http)")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadProxy(problem)
    auth = None
    if parts.username is not None:
        auth = (
            urllib.parse.unquote(parts.username),
            urllib.parse.unquote(parts.password or ""),
        )
    return Proxy(host=parts.hostname, port=port or 80, auth=auth)


def bypassed(host: str, port: int | None, no_proxy: tuple[str, ...]) -> bool:
    """Does ``no_proxy`` send this host direct?

    Names follow Python's urllib (as curl: ``*`` for all, ``example.com`` and
    ``.example.com`` for the name and every name under it, ``host:port`` for one port).
    Addresses match an entry that is that address or a CIDR holding it, which urllib
    does not do and Kubernetes clusters need (``NO_PROXY=10.0.0.0/8``).
    """
    if not no_proxy:
        return False
    name = host.lower().strip("[]").rstrip(".")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        for entry in no_proxy:
            if entry == "*":
                return True
            try:
                network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                continue
            if address.version == network.version and address in network:
                return True
        if address.version == 6:  # urllib reads "[::1]:443" as a host "[::1]"
            return False
    with_port = f"{name}:{port}" if port is not None else name
    # Public in urllib, missing from typeshed; given the entries, it reads no environment.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return bool(bypass(with_port, {"no": ",".join(no_proxy)}))


class ProxyFailed(failures.TokenError):
    """The proxy refused the tunnel or could not be reached: transient, and nothing was
    sent to the destination. Raised from inside the HTTP client, so that callers can tell
    it from the destination's own failures."""


def refused(proxy: Proxy, status: str, destination: str) -> ProxyFailed:
    """The proxy answered the CONNECT with something other than 2xx (``status``: httpcore's
    text, of which only the code is kept: the reason phrase is the proxy's free text)."""
    code = _STATUS.match(status.strip())
    what = f"answered {code.group()} to" if code else "refused"
    hints = {
        "407": ": it wants credentials (user:password in the proxy URL)",
        "403": ": its rules do not allow this destination",
        "502": ": it could not connect to the destination",
        "504": ": it could not connect to the destination in time",
    }
    hint = hints.get(code.group(), "") if code else ""
    return ProxyFailed(
        f"the proxy {proxy} {what} the tunnel to {destination}{hint}",
        reason=failures.Reason.PROXY_REFUSED,
        permanent=False,
    )


def unreachable(proxy: Proxy, error: BaseException) -> ProxyFailed:
    """The proxy itself did not answer (refused, unreachable, timed out)."""
    return ProxyFailed(
        f"cannot reach the proxy {proxy} ({type(error).__name__})",
        reason=failures.Reason.CONNECTION_FAILED,
        permanent=False,
    )
