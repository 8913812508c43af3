"""Which URLs the operator may send client credentials to.

A ClientCredential's author chooses the token URL (or the issuer whose metadata names it),
and the operator then sends a client secret or a signed assertion there from inside the
cluster. The rules here keep that from becoming a way to leak credentials (plain http,
userinfo in the URL) or to reach what a namespace's author should not (cloud metadata
services, link-local addresses, hosts outside the operator's allowlist). Every URL is
checked before the first byte is sent: the configured ``tokenURL``, the ``issuerURL``, and
the token endpoint that discovery finds.

The host is judged as httpx will connect to it, since parsers disagree about odd hosts.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse

import httpx

from tokensync import failures

# What a resolver should see after IDNA encoding; IPv6 literals are told apart by their colon.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal"})
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


def _refuse(message: str) -> failures.TokenError:
    return failures.TokenError(
        f"tokenURL refused: {message}",
        reason=failures.Reason.TOKEN_URL_REFUSED,
        permanent=True,
    )


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
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        raise _refuse("cloud metadata addresses are not token endpoints")
    if address.is_link_local:
        raise _refuse("link-local addresses are not allowed")


def check_token_url(
    url: str, *, allow_insecure_http: bool, allowed_hosts: frozenset[str] | None = None
) -> None:
    """Refuse token URLs that would leak credentials or reach what they should not.

    Raises :class:`failures.TokenError` with reason ``TokenURLRefused``. Host names are checked as
    written: a name that resolves to a refused address is caught only by ``allowed_hosts``
    or by network policy. Allowlist entries for internationalised names are written in
    their ASCII (punycode) form.
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
