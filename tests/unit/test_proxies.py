"""The proxy settings read from the environment, which requests they apply to, and how a
proxy is named (decision 0049): pure, tables."""

from __future__ import annotations

import pytest

from tokensync import failures, proxies, urlpolicy

PROXY = proxies.Proxy(host="proxy.corp", port=3128)


@pytest.mark.parametrize(
    ("environ", "https", "http", "no_proxy"),
    [
        ({}, None, None, ()),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, "proxy.corp:3128", None, ()),
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "lower:1", None, ()),
        ({"https_proxy": "", "HTTPS_PROXY": "http://upper:2"}, "upper:2", None, ()),
        ({"HTTP_PROXY": "proxy.corp:8080"}, None, "proxy.corp:8080", ()),
        ({"https_proxy": "http://10.0.0.5"}, "10.0.0.5:80", None, ()),
        ({"https_proxy": "http://[fd00::5]:3128/"}, "[fd00::5]:3128", None, ()),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": " .svc, 10.0.0.0/8 ,,localhost"},
            "p:1",
            None,
            (".svc", "10.0.0.0/8", "localhost"),
        ),
        ({"HTTPS_PROXY": "http://p:1", "no_proxy": "a", "NO_PROXY": "b"}, "p:1", None, ("a",)),
    ],
)
def test_the_environment_as_curl_reads_it(
    environ: dict[str, str], https: str | None, http: str | None, no_proxy: tuple[str, ...]
) -> None:
    found = proxies.from_environment(environ)
    assert (str(found.https) if found.https else None) == https
    assert (str(found.http) if found.http else None) == http
    assert found.no_proxy == no_proxy
    assert bool(found) is bool(https or http)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("socks5://proxy.corp:1080", "only http://"),
        ("https://proxy.corp:3128", "only http://"),
        ("http://proxy.corp:99999", "not a proxy URL"),
        ("http://:3128", "not a proxy URL"),
        ("http://proxy.corp:3128/path", "not a proxy URL"),
        ("http://user:hunter2@proxy.corp:3128/?x=1", "not a proxy URL"),
    ],
)
def test_unusable_values_are_refused_without_repeating_them(value: str, problem: str) -> None:
    with pytest.raises(proxies.BadProxy, match=problem) as caught:
        proxies.from_environment({"HTTPS_PROXY": value})
    assert "HTTPS_PROXY" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "proxy.corp" not in str(caught.value)


def test_credentials_are_kept_for_the_proxy_and_out_of_every_text() -> None:
    found = proxies.from_environment({"HTTPS_PROXY": "http://us%40er:p%3Ass@proxy.corp:3128"})
    assert found.https is not None
    assert found.https.auth == ("us@er", "p:ss")
    for text in (str(found), repr(found), str(found.https), repr(found.https), found.https.url):
        assert "p:ss" not in text
        assert "p%3Ass" not in text
        assert "us@er" not in text
    assert found.https.url == "http://proxy.corp:3128"


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "direct"),
    [
        ("login.example.com", 443, (), False),
        ("login.example.com", 443, ("*",), True),
        ("login.example.com", 443, ("example.com",), True),
        ("login.example.com", 443, (".example.com",), True),
        ("example.com", 443, (".example.com",), True),
        ("badexample.com", 443, ("example.com",), False),
        ("LOGIN.Example.COM.", 443, ("example.com",), True),
        ("login.example.com", 443, ("login.example.com:443",), True),
        ("login.example.com", 8443, ("login.example.com:443",), False),
        ("keycloak.auth.svc", 443, (".svc",), True),
        ("10.1.2.3", 443, ("10.0.0.0/8",), True),
        ("10.1.2.3", 443, ("10.1.2.3",), True),
        ("11.1.2.3", 443, ("10.0.0.0/8",), False),
        ("::1", 443, ("::1",), True),
        ("[fd00::7]", 443, ("fd00::/8",), True),
        ("fd00::7", 443, ("10.0.0.0/8",), False),
        ("fd00::7", 443, ("*",), True),
        ("10.1.2.3", 443, ("example.com",), False),
    ],
)
def test_no_proxy_matching(
    host: str, port: int | None, no_proxy: tuple[str, ...], direct: bool
) -> None:
    assert proxies.bypassed(host, port, no_proxy) is direct


def test_each_scheme_has_its_own_proxy_and_no_proxy_bypasses_both() -> None:
    other = proxies.Proxy(host="plain.corp", port=8080)
    egress = proxies.Proxies(https=PROXY, http=other, no_proxy=("internal.example",))
    assert egress.for_url("https", "login.example.com", 443) == PROXY
    assert egress.for_url("HTTPS", "login.example.com", None) == PROXY
    assert egress.for_url("http", "login.example.com", 80) == other
    assert egress.for_url("https", "idp.internal.example", 443) is None
    by_port = proxies.Proxies(https=PROXY, no_proxy=("idp.example:443",))
    assert by_port.for_url("https", "idp.example", None) is None  # the scheme's port
    assert by_port.for_url("https", "idp.example", 8443) == PROXY
    assert proxies.Proxies(http=other).for_url("https", "login.example.com", 443) is None
    assert proxies.NONE.for_url("https", "login.example.com", 443) is None
    assert not proxies.NONE


def test_the_settings_as_logged() -> None:
    egress = proxies.Proxies(https=PROXY, no_proxy=(".svc", "10.0.0.0/8"))
    assert str(egress) == "https via proxy.corp:3128; direct: .svc, 10.0.0.0/8"
    assert str(proxies.NONE) == "none (direct connections)"


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (
            "407 Proxy Authentication Required",
            "answered 407 to the tunnel to idp.example: it wants credentials",
        ),
        ("403 Forbidden", "answered 403 to the tunnel to idp.example: its rules do not allow"),
        ("418 I'm a tea pot", "answered 418 to the tunnel to idp.example"),
        ("502 Bad Gateway", "answered 502 to the tunnel to idp.example: it could not connect"),
        ("garbage", "refused the tunnel to idp.example"),
    ],
)
def test_a_refused_tunnel_is_transient_and_names_the_proxy_only(status: str, says: str) -> None:
    secret = proxies.Proxy(host="proxy.corp", port=3128, auth=("user", "hunter2"))
    error = proxies.refused(secret, status, "idp.example")
    assert error.reason is failures.Reason.PROXY_REFUSED
    assert not error.permanent
    assert says in error.message
    assert "the proxy proxy.corp:3128 " in error.message
    assert "hunter2" not in error.message
    assert "tea pot" not in error.message  # the proxy's own words are not repeated


def test_an_unreachable_proxy_is_a_connection_failure_naming_it() -> None:
    error = proxies.unreachable(PROXY, ConnectionRefusedError("secret text"))
    assert error.reason is failures.Reason.CONNECTION_FAILED
    assert not error.permanent
    assert error.message == "cannot reach the proxy proxy.corp:3128 (ConnectionRefusedError)"


# -- the destination rules when the proxy resolves the name -----------------------------------

NOTHING = urlpolicy.NO_ALLOWANCE


@pytest.mark.parametrize(
    ("host", "allowance", "reason"),
    [
        ("login.example.com", NOTHING, None),
        ("keycloak", NOTHING, None),  # the proxy's resolver and rules decide
        ("93.184.215.14", NOTHING, None),
        ("169.254.169.254", urlpolicy.Allowance.parse(["0.0.0.0/0"]), "TokenURLRefused"),
        ("metadata.google.internal", NOTHING, "TokenURLRefused"),
        ("fe80::1", NOTHING, "TokenURLRefused"),
        ("[::ffff:169.254.169.254]", NOTHING, "TokenURLRefused"),
        ("10.0.0.8", NOTHING, "PrivateNetworkRefused"),
        ("10.0.0.8", urlpolicy.Allowance.parse(["10.0.0.0/8"]), None),
        ("127.0.0.1", NOTHING, "PrivateNetworkRefused"),
        ("keycloak.auth.svc.cluster.local", NOTHING, "PrivateNetworkRefused"),
        (
            "keycloak.auth.svc.cluster.local",
            urlpolicy.Allowance.parse(["keycloak.auth.svc.cluster.local"]),
            None,
        ),
        ("kubernetes.default", NOTHING, "PrivateNetworkRefused"),
        ("localhost", NOTHING, "PrivateNetworkRefused"),
        ("app.localhost.", NOTHING, "PrivateNetworkRefused"),
        ("localhost", urlpolicy.Allowance.parse(["localhost"]), None),
        ("localhost", urlpolicy.Allowance.parse(["127.0.0.0/8"]), "PrivateNetworkRefused"),
    ],
)
def test_check_proxied(host: str, allowance: urlpolicy.Allowance, reason: str | None) -> None:
    if reason is None:
        urlpolicy.check_proxied(host, allowance)
        return
    with pytest.raises(urlpolicy.Refused) as caught:
        urlpolicy.check_proxied(host, allowance)
    assert caught.value.reason == reason
    assert caught.value.permanent
