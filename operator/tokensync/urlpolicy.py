"""Which URLs, and which addresses, the operator may send client credentials to.

A ClientCredential's author chooses the token URL (or the issuer whose metadata names it),
and the operator then sends a client secret or a signed assertion there from inside the
cluster. The rules here keep that from becoming a way to leak credentials (plain http,
userinfo in the URL) or to reach what a namespace's author should not: cloud metadata
services, link-local, multicast and reserved addresses (never), hosts outside the
operator's allowlist, and the cluster's own network (loopback, private ranges, Services,
the API server), which only the operator's admin can open, range by range or host by host
(:class:`Allowance`, ``--allow-private-network``; decision 0037). Every URL is checked
before the first byte is sent: the configured ``tokenURL``, the ``issuerURL``, and the
token endpoint that discovery finds.

A URL says little about where a connection goes: a name can resolve to any address, and
answer differently a second later. So the rules are applied twice: to the URL as written
(:func:`check_token_url`: early, before any I/O, with a clear message), and to every
address the host resolves to, right before connecting to one of exactly those addresses
(:func:`check_connection`, from ``transport``'s network backend). The host is judged as
httpx will connect to it, since parsers disagree about odd hosts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterable, Sequence

import httpx

from tokensync import failures

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What a resolver should see after IDNA encoding; IPv6 literals are told apart by their colon.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal"})
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), what) for cidr, what in rows)


# Written out rather than taken from ipaddress's is_private/is_global, whose answers have
# changed between Python releases: what is refused must not depend on the interpreter.
#: Never a token endpoint, whatever the admin allows.
_NEVER = _table(
    ("0.0.0.0/8", "unspecified"),  # 0.0.0.0 reaches the local host on Linux
    ("::/128", "unspecified"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("240.0.0.0/4", "reserved"),  # with the broadcast address
)
#: Not on the internet: the cluster's, the node's or the site's own networks, which the
#: admin may open (:class:`Allowance`).
_PRIVATE = _table(
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("fc00::/7", "private (unique local)"),
    ("fec0::/10", "private (site-local)"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("192.0.0.0/24", "special-purpose"),
    ("192.88.99.0/24", "special-purpose"),
    ("198.18.0.0/15", "special-purpose"),
    ("100::/64", "special-purpose"),
    ("2001::/23", "special-purpose"),
    ("64:ff9b:1::/48", "special-purpose"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
)
# IPv6 forms that carry an IPv4 address, which is where the packets end up: judged by it.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated; never routed
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
#: The only IPv6 unicast space assigned for the internet; anything else left is reserved.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
#: Names that lead into the cluster from the operator's pod: Services
#: (``<service>.<namespace>.svc[.cluster.local]``) and the API server. Names that the pod's
#: DNS search path completes (``keycloak.auth``) cannot be told from public ones; the
#: addresses they resolve to (ClusterIPs, in private ranges) are what refuses them.
_CLUSTER_NAMES = frozenset({"kubernetes", "kubernetes.default"})
_CLUSTER_SUFFIXES = ("svc", "cluster.local")
_HINT = (
    "loopback, private and cluster-internal destinations are refused unless the operator's "
    "admin allows them (--allow-private-network)"
)
# An allowance's host entry: a name, or "*." and a name for every name under it.
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_HOST_ENTRY = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")


class Refused(failures.TokenError):
    """A destination these rules refuse, raised before anything is sent to it (also from
    inside an HTTP client's connect, so that callers can tell it from a network error)."""


def _refuse(message: str) -> Refused:
    return Refused(
        f"tokenURL refused: {message}",
        reason=failures.Reason.TOKEN_URL_REFUSED,
        permanent=True,
    )


def _refuse_private(message: str) -> Refused:
    return Refused(
        f"{message}: {_HINT}",
        reason=failures.Reason.PRIVATE_NETWORK_REFUSED,
        permanent=True,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Category:
    """What a non-public address is, and whether the admin may allow it."""

    what: str
    allowable: bool


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(address in n for n in (_MAPPED, _TRANSLATED, _COMPATIBLE, _NAT64)):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def category(address: IPAddress) -> Category | None:
    """What kind of address this is, when it is not a public one (None: public)."""
    if address in _METADATA_ADDRESSES:
        return Category("cloud metadata", allowable=False)
    for table, allowable in ((_NEVER, False), (_PRIVATE, True)):
        for network, what in table:
            if address in network:
                return Category(what, allowable=allowable)
    if isinstance(address, ipaddress.IPv6Address):
        return _category_v6(address)
    return None


def _category_v6(address: ipaddress.IPv6Address) -> Category | None:
    inner = _embedded(address)
    if inner is None:
        return None if address in _GLOBAL_UNICAST else Category("reserved", allowable=False)
    found = category(inner)
    if found is not None and not found.allowable:
        return found  # ::ffff:169.254.169.254 is the metadata service
    if address in _COMPATIBLE:
        return Category("IPv4-compatible (deprecated)", allowable=False)
    return found


def _cluster_name(host: str) -> bool:
    return host in _CLUSTER_NAMES or any(
        host == suffix or host.endswith(f".{suffix}") for suffix in _CLUSTER_SUFFIXES
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Allowance:
    """The private destinations the operator's admin opened (``--allow-private-network``).

    An address in one of ``networks`` may be connected to. A name in ``hosts`` (an entry
    ``*.example`` covers the names under ``example``) may be used although it is a
    cluster-internal name, and the private addresses it resolves to may be connected to:
    allowing ``keycloak.auth.svc.cluster.local`` does not open every ClusterIP. Nothing
    lifts the rules without exception (metadata, link-local, unspecified, multicast and
    reserved addresses, metadata names). The default allows nothing.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowance:
        """From the flag's values: CIDRs, addresses or host names, several to a value when
        separated by commas. Raises ValueError naming the entry it cannot use."""
        networks: list[IPNetwork] = []
        hosts: list[str] = []
        for value in entries:
            for item in (part.strip() for part in value.split(",")):
                if not item:
                    continue
                try:
                    network = ipaddress.ip_network(item.strip("[]"), strict=False)
                except ValueError:
                    hosts.append(_host_entry(item))
                else:
                    networks.append(_network_entry(item, network))
        return cls(networks=tuple(dict.fromkeys(networks)), hosts=tuple(dict.fromkeys(hosts)))

    def allows_address(self, address: IPAddress) -> bool:
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address):
            inner = _embedded(address)
            if inner is not None:
                candidates.append(inner)
        return any(a in n for a in candidates for n in self.networks if a.version == n.version)

    def allows_host(self, host: str) -> bool:
        return bool(self.hosts) and _host_allowed(host, frozenset(self.hosts))

    def __str__(self) -> str:
        return ", ".join([*map(str, self.networks), *self.hosts]) or "none"


#: Nothing private allowed: the default.
NO_ALLOWANCE = Allowance()


def _network_entry(item: str, network: IPNetwork) -> IPNetwork:
    for never, what in _NEVER:
        if network.version == never.version and network.subnet_of(never):  # type: ignore[arg-type]
            raise ValueError(f"{item}: {what} addresses are always refused")
    if network.num_addresses == 1 and network.network_address in _METADATA_ADDRESSES:
        raise ValueError(f"{item}: cloud metadata addresses are always refused")
    return network


def _host_entry(item: str) -> str:
    host = item.lower().rstrip(".")
    if not _HOST_ENTRY.fullmatch(host):
        raise ValueError(f"{item!r} is not a CIDR, an address or a host name")
    if host in _METADATA_HOSTS:
        raise ValueError(f"{item}: cloud metadata hosts are always refused")
    return host


def _host_allowed(host: str, allowed_hosts: frozenset[str]) -> bool:
    for entry in allowed_hosts:
        pattern = entry.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def _check_address(host: str) -> None:
    """Refuse the numeric spellings resolvers read oddly, and addresses never allowed."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            # The resolver accepts legacy forms such as 2852039166 or 0xa9.0xfe.0xa9.0xfe
            # for 169.254.169.254; refusing them beats normalising them correctly.
            socket.inet_aton(host)
        except (OSError, ValueError):
            return
        raise _refuse("write IPv4 addresses as four decimal numbers") from None
    found = category(address)
    if found is None or found.allowable:
        return
    if found.what == "cloud metadata":
        raise _refuse("cloud metadata addresses are not token endpoints")
    raise _refuse(f"{found.what} addresses are not allowed")


def _check_private(host: str, allowance: Allowance) -> None:
    """Refuse what leads into the cluster's own network, unless the admin allowed it."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if _cluster_name(host) and not allowance.allows_host(host):
            raise _refuse_private(f"{host} is a cluster-internal name") from None
        return
    found = category(address)
    if found is not None and not allowance.allows_address(address):
        raise _refuse_private(f"{host} is a {found.what} address")


def check_token_url(
    url: str,
    *,
    allow_insecure_http: bool,
    allowed_hosts: frozenset[str] | None = None,
    allowance: Allowance = NO_ALLOWANCE,
) -> None:
    """Refuse token URLs that would leak credentials or reach what they should not.

    Raises :class:`Refused`: reason ``TokenURLRefused`` for what is never allowed (and for
    a host outside ``allowed_hosts``), ``PrivateNetworkRefused`` for a loopback, private
    or cluster-internal host that ``allowance`` does not open. Host names are judged here
    as written; the addresses they resolve to are judged at connect time
    (:func:`check_connection`). Allowlist entries for internationalised names are written
    in their ASCII (punycode) form.
    """
    # urlsplit quietly strips some of these, and resolvers treat others in their own ways.
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise _refuse("control characters and spaces are not allowed")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port validates it
        # httpx normalises hosts (IDNA, and "169。254。169。254" becomes a dotted quad), and
        # its result is what gets connected to, so that is the host to judge too.
        connected = httpx.URL(url).raw_host.decode("ascii")
    except (ValueError, httpx.InvalidURL):
        raise _refuse("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_insecure_http:
        raise _refuse("https is required (plain http needs the operator's explicit opt-in)")
    if scheme not in ("https", "http"):
        raise _refuse("the scheme must be https")
    if "@" in parts.netloc:
        raise _refuse("credentials in the URL are not allowed; use clientSecretRef")
    if "#" in url:
        raise _refuse("a fragment is not allowed")
    hosts = {h.lower().rstrip(".") for h in (parts.hostname or "", connected)}
    if "" in hosts:
        raise _refuse("the URL has no host")
    if ":" not in connected and not _HOST_NAME.fullmatch(connected):
        raise _refuse("the host is not a valid host name or address")
    # Both readings of the host must pass, so that no parser difference slips through.
    for host in sorted(hosts):
        if host in _METADATA_HOSTS:
            raise _refuse("cloud metadata hosts are not token endpoints")
        _check_address(host)
        if allowed_hosts is not None and not _host_allowed(host, allowed_hosts):
            raise _refuse(f"host {host!r} is not in the operator's allowlist")
    # After the allowlist: a host the admin's list refuses is refused for that reason.
    for host in sorted(hosts):
        _check_private(host, allowance)


def check_connection(host: str, addresses: Sequence[str], allowance: Allowance) -> None:
    """Refuse to connect to ``host`` when any address it resolved to is refused.

    ``addresses`` are every answer of one resolution (a literal address resolves to
    itself); the caller then connects to one of exactly these, so the name cannot change
    its answer in between. One refused answer refuses them all: a name that mixes public
    and internal answers is misconfigured, or rebinding. With no addresses, the name alone
    is judged (before it is looked up). Raises :class:`Refused`.
    """
    name = host.lower().rstrip(".")
    if name in _METADATA_HOSTS:
        raise _refuse("cloud metadata hosts are not token endpoints")
    try:
        literal: IPAddress | None = ipaddress.ip_address(name)
    except ValueError:
        literal = None
    if literal is None and _cluster_name(name) and not allowance.allows_host(name):
        raise _refuse_private(f"refused to connect: {name} is a cluster-internal name")
    named = literal is None and allowance.allows_host(name)
    for text in addresses:
        address = ipaddress.ip_address(text)
        found = category(address)
        if found is None:
            continue
        where = f"refused to connect: {name} resolves to {address}, a {found.what} address"
        if literal is not None:
            where = f"refused to connect: {address} is a {found.what} address"
        if not found.allowable:
            raise Refused(where, reason=failures.Reason.TOKEN_URL_REFUSED, permanent=True)
        if not (named or allowance.allows_address(address)):
            raise _refuse_private(where)


def check_proxied(host: str, allowance: Allowance) -> None:
    """Refuse a destination a proxy is asked to tunnel to (decision 0049).

    The proxy resolves the name, so the addresses :func:`check_connection` judges are never
    seen here: what is left is the name, and a literal address, judged as
    :func:`check_connection` does. ``localhost`` (and names under ``.localhost``) would be
    the proxy's own host: loopback, refused unless the admin allowed that name. Where a
    resolved name may lead is the proxy's rules' to decide. Raises :class:`Refused`.
    """
    name = host.lower().strip("[]").rstrip(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        check_connection(name, [], allowance)
        if (name == "localhost" or name.endswith(".localhost")) and not allowance.allows_host(name):
            raise _refuse_private(f"refused to connect: {name} is a loopback name") from None
        return
    check_connection(name, [name], allowance)
