"""The destination rules of issue 14 section 4 (decision 0037), as pure functions: which
addresses and names are refused, which an admin may allow, and what an allowance means.

The network side (resolve once, check, connect to the checked address) is
tests/unit/test_transport_guard.py; the rules for the URL's form are tests/unit/test_oauth.py.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import failures, urlpolicy

Allowance = urlpolicy.Allowance
LOOPBACK = Allowance.parse(["127.0.0.0/8,::1"])
EVERYTHING = Allowance.parse(["0.0.0.0/0", "::/0"])
PRIVATE = "PrivateNetworkRefused"
NEVER = "TokenURLRefused"


# -- what an address is ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "what", "allowable"),
    [
        # never, whatever the admin says
        ("169.254.169.254", "cloud metadata", False),
        ("100.100.100.200", "cloud metadata", False),
        ("fd00:ec2::254", "cloud metadata", False),
        ("169.254.1.1", "link-local", False),
        ("fe80::1", "link-local", False),
        ("fe80::1%eth0", "link-local", False),
        ("0.0.0.0", "unspecified", False),
        ("0.1.2.3", "unspecified", False),
        ("::", "unspecified", False),
        ("224.0.0.1", "multicast", False),
        ("ff02::1", "multicast", False),
        ("240.0.0.1", "reserved", False),
        ("255.255.255.255", "reserved", False),
        ("4000::1", "reserved", False),
        # IPv6 spellings of IPv4 addresses are judged by the IPv4 address
        ("::ffff:169.254.169.254", "cloud metadata", False),
        ("::ffff:a9fe:a9fe", "cloud metadata", False),
        ("::ffff:0:a9fe:a9fe", "cloud metadata", False),
        ("64:ff9b::a9fe:a9fe", "cloud metadata", False),
        ("2002:a9fe:a9fe::1", "cloud metadata", False),
        ("::a9fe:a9fe", "cloud metadata", False),
        ("::8.8.8.8", "IPv4-compatible (deprecated)", False),
        ("::ffff:127.0.0.1", "loopback", True),
        ("::ffff:10.0.0.1", "private", True),
        # the admin may allow these
        ("127.0.0.1", "loopback", True),
        ("127.255.0.9", "loopback", True),
        ("::1", "loopback", True),
        ("10.96.0.1", "private", True),
        ("172.16.0.1", "private", True),
        ("172.31.255.255", "private", True),
        ("192.168.1.1", "private", True),
        ("fd12:3456::1", "private (unique local)", True),
        ("100.64.0.1", "shared (carrier-grade NAT)", True),
        ("198.18.0.1", "special-purpose", True),
        ("192.0.2.1", "documentation", True),
        ("2001:db8::1", "documentation", True),
    ],
)
def test_what_an_address_is(address: str, what: str, *, allowable: bool) -> None:
    assert urlpolicy.category(ipaddress.ip_address(address)) == urlpolicy.Category(
        what, allowable=allowable
    )


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",  # just past 172.16.0.0/12
        "100.128.0.1",  # just past 100.64.0.0/10
        "2606:4700:4700::1111",
        "64:ff9b::808:808",  # NAT64 of a public address: how IPv6-only clusters reach it
        "2002:808:808::1",
        "::ffff:8.8.8.8",
    ],
)
def test_public_addresses_are_not_refused(address: str) -> None:
    assert urlpolicy.category(ipaddress.ip_address(address)) is None


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_in_ipv6_clothes_is_judged_as_itself(
    address: ipaddress.IPv4Address,
) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(address))
    expected = urlpolicy.category(address)
    assert urlpolicy.category(mapped) == expected
    assert urlpolicy.category(nat64) == expected


# -- the admin's allowance ------------------------------------------------------------------


def test_an_allowance_parses_ranges_addresses_and_names() -> None:
    allowance = Allowance.parse(
        ["127.0.0.0/8,::1", " 10.1.2.3 ", "Keycloak.Auth.svc.cluster.local.", "*.corp.example", ""]
    )
    assert [str(n) for n in allowance.networks] == ["127.0.0.0/8", "::1/128", "10.1.2.3/32"]
    assert allowance.hosts == ("keycloak.auth.svc.cluster.local", "*.corp.example")
    assert str(Allowance()) == "none"
    assert Allowance.parse(["10.0.0.0/8", "10.0.0.0/8"]) == Allowance.parse(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("169.254.0.0/16", "link-local addresses are always refused"),
        ("169.254.169.254", "link-local addresses are always refused"),
        ("100.100.100.200", "cloud metadata addresses are always refused"),
        ("fd00:ec2::254", "cloud metadata addresses are always refused"),
        ("fe80::/64", "link-local"),
        ("224.0.0.0/8", "multicast"),
        ("metadata.google.internal", "cloud metadata hosts"),
        ("METADATA.", "cloud metadata hosts"),
        ("a b", "not a CIDR, an address or a host name"),
        ("http://10.0.0.1/", "not a CIDR"),
        ("*", "not a CIDR"),
    ],
)
def test_an_allowance_cannot_open_what_is_never_allowed(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Allowance.parse([entry])


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # the kernel connects to 127.0.0.1
        ("10.0.0.1", False),
        ("::2", False),
    ],
)
def test_allows_address(address: str, *, allowed: bool) -> None:
    assert LOOPBACK.allows_address(ipaddress.ip_address(address)) is allowed


def test_allows_host() -> None:
    allowance = Allowance.parse(["idp.auth.svc.cluster.local", "*.corp.example"])
    assert allowance.allows_host("idp.auth.svc.cluster.local")
    assert allowance.allows_host("login.corp.example")
    assert not allowance.allows_host("corp.example")
    assert not allowance.allows_host("other.auth.svc.cluster.local")
    assert not LOOPBACK.allows_host("localhost")


# -- the URL as written ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason", "says"),
    [
        ("http://127.0.0.1:8080/token", PRIVATE, "127.0.0.1 is a loopback address"),
        ("https://[::1]:8443/token", PRIVATE, "::1 is a loopback address"),
        ("https://10.96.0.1/token", PRIVATE, "private address"),
        ("https://192.168.0.10/token", PRIVATE, "private address"),
        ("https://100.64.1.1/token", PRIVATE, "carrier-grade NAT"),
        ("https://[fd12::1]/token", PRIVATE, "unique local"),
        ("https://[::ffff:10.0.0.1]/token", PRIVATE, "private address"),
        ("https://kubernetes/api", PRIVATE, "kubernetes is a cluster-internal name"),
        ("https://kubernetes.default/api", PRIVATE, "cluster-internal name"),
        ("https://kubernetes.default.svc/api", PRIVATE, "cluster-internal name"),
        ("https://idp.auth.svc/token", PRIVATE, "cluster-internal name"),
        ("https://idp.auth.svc.cluster.local/token", PRIVATE, "cluster-internal name"),
        ("https://IDP.Auth.SVC.cluster.local./token", PRIVATE, "cluster-internal name"),
        # never: the reason the admin cannot change
        ("https://0.0.0.0/token", NEVER, "unspecified addresses are not allowed"),
        ("https://[::]/token", NEVER, "unspecified"),
        ("https://224.0.0.251/token", NEVER, "multicast"),
        ("https://255.255.255.255/token", NEVER, "reserved"),
        ("https://[::ffff:a9fe:a9fe]/token", NEVER, "metadata"),
        ("https://[64:ff9b::a9fe:a9fe]/token", NEVER, "metadata"),
        ("https://169.254.169.254./token", NEVER, "metadata"),
        ("https://0251.0376.0251.0376/token", NEVER, "not a valid URL|four decimal numbers"),
        ("https://127.1/token", NEVER, "four decimal numbers"),
    ],
)
def test_internal_destinations_are_refused_as_written(url: str, reason: str, says: str) -> None:
    with pytest.raises(urlpolicy.Refused, match=says) as caught:
        urlpolicy.check_token_url(url, allow_insecure_http=True)
    assert (caught.value.reason, caught.value.kind) == (reason, failures.Kind.PERMANENT)
    if reason == PRIVATE:
        assert "--allow-private-network" in caught.value.message
        # ... and the admin can open it
        host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".")
        urlpolicy.check_token_url(url, allow_insecure_http=True, allowance=allow(host))


def allow(host: str) -> Allowance:
    """An allowance for exactly ``host`` (an address or a name)."""
    try:
        return Allowance.parse([str(ipaddress.ip_address(host))])
    except ValueError:
        return Allowance.parse([host])


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example.com/token",
        "http://localhost:8080/token",  # judged by what it resolves to, at connect time
        "https://keycloak.auth/realms/a",  # likewise (the pod's search path may complete it)
        "https://8.8.8.8/token",
        "https://[2606:4700::1]/token",
        "https://svc.example.com/token",  # "svc" as a label elsewhere is nothing special
        "https://my-svc.example/token",
    ],
)
def test_public_or_undecidable_names_pass_as_written(url: str) -> None:
    urlpolicy.check_token_url(url, allow_insecure_http=True)


def test_the_allowlist_is_judged_before_the_private_rules() -> None:
    """An admin's --allowed-token-host refuses a host for that reason first."""
    with pytest.raises(urlpolicy.Refused, match="allowlist") as caught:
        urlpolicy.check_token_url(
            "http://10.0.0.1/token", allow_insecure_http=True, allowed_hosts=frozenset({"a.b"})
        )
    assert caught.value.reason == NEVER


def test_a_host_entry_does_not_open_other_cluster_names() -> None:
    allowance = Allowance.parse(["idp.auth.svc.cluster.local"])
    urlpolicy.check_token_url(
        "https://idp.auth.svc.cluster.local/t", allow_insecure_http=False, allowance=allowance
    )
    with pytest.raises(urlpolicy.Refused, match="cluster-internal"):
        urlpolicy.check_token_url(
            "https://kubernetes.default.svc/t", allow_insecure_http=False, allowance=allowance
        )


# -- the addresses a name resolved to ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "addresses", "allowance", "reason", "says"),
    [
        (
            "localhost",
            ["127.0.0.1"],
            Allowance(),
            PRIVATE,
            "localhost resolves to 127.0.0.1, a loopback",
        ),
        ("localhost", ["::1", "127.0.0.1"], Allowance(), PRIVATE, "resolves to ::1"),
        ("localhost", ["127.0.0.1", "::1"], LOOPBACK, None, ""),
        ("localhost", ["127.0.0.1"], Allowance.parse(["localhost"]), None, ""),
        ("rebind.example", ["93.184.216.34", "10.0.0.7"], Allowance(), PRIVATE, "10.0.0.7"),
        ("rebind.example", ["93.184.216.34"], Allowance(), None, ""),
        ("evil.example", ["169.254.169.254"], EVERYTHING, NEVER, "cloud metadata"),
        ("evil.example", ["::ffff:169.254.169.254"], EVERYTHING, NEVER, "cloud metadata"),
        ("evil.example", ["0.0.0.0"], EVERYTHING, NEVER, "unspecified"),
        ("evil.example", ["fe80::1%2"], EVERYTHING, NEVER, "link-local"),
        ("metadata.google.internal.", ["8.8.8.8"], EVERYTHING, NEVER, "metadata"),
        ("idp.auth.svc.cluster.local", ["10.96.4.2"], Allowance(), PRIVATE, "cluster-internal"),
        (
            "idp.auth.svc.cluster.local",
            ["10.96.4.2"],
            allow("idp.auth.svc.cluster.local"),
            None,
            "",
        ),
        (
            "idp.auth.svc.cluster.local",
            ["10.96.4.2"],
            Allowance.parse(["10.96.0.0/12"]),
            PRIVATE,
            "cluster-internal",
        ),
        ("127.0.0.1", ["127.0.0.1"], Allowance(), PRIVATE, "127.0.0.1 is a loopback address"),
        ("127.0.0.1", ["127.0.0.1"], Allowance.parse(["localhost"]), PRIVATE, "loopback"),
    ],
)
def test_every_resolved_address_is_judged(
    host: str, addresses: list[str], allowance: Allowance, reason: str | None, says: str
) -> None:
    if reason is None:
        urlpolicy.check_connection(host, addresses, allowance)
        return
    with pytest.raises(urlpolicy.Refused, match=says) as caught:
        urlpolicy.check_connection(host, addresses, allowance)
    assert caught.value.reason == reason
    assert caught.value.permanent


@given(address=st.ip_addresses())
def test_no_allowance_opens_what_is_never_allowed(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """Even "everything" leaves metadata, link-local, multicast ... refused."""
    found = urlpolicy.category(address)
    reason = None
    try:
        urlpolicy.check_connection("name.example", [str(address)], EVERYTHING)
    except urlpolicy.Refused as refused:
        reason = refused.reason
    never = found is not None and not found.allowable
    assert reason == (NEVER if never else None)


@given(address=st.ip_addresses())
def test_without_an_allowance_only_public_addresses_pass(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    refused = False
    try:
        urlpolicy.check_connection("name.example", [str(address)], Allowance())
    except urlpolicy.Refused:
        refused = True
    assert refused == (urlpolicy.category(address) is not None)
