"""Where a client's proof may go: the annotation's entries against destination URLs."""

from __future__ import annotations

from typing import Any

import pytest

from tokensync import destinations, failures, model

URL = "https://login.example.com/oauth2/token"


def source(value: str | None) -> dict[str, Any]:
    annotations = {} if value is None else {model.ALLOWED_DESTINATIONS_ANNOTATION: value}
    return {"metadata": {"name": "oauth-client", "annotations": annotations}}


@pytest.mark.parametrize(
    ("entry", "url", "allowed"),
    [
        # exact URLs
        (URL, URL, True),
        (URL + "/", URL, True),  # a trailing slash is ignored
        ("HTTPS://Login.Example.COM/oauth2/token", URL, True),
        ("https://login.example.com:443/oauth2/token", URL, True),  # the default port
        (URL, "https://login.example.com/oauth2/token2", False),
        (URL, "https://login.example.com/oauth2", False),  # not a prefix match
        (URL, "https://login.example.com/oauth2/token/x", False),
        (URL, "http://login.example.com/oauth2/token", False),  # another scheme
        (URL, "https://login.example.com:8443/oauth2/token", False),  # another port
        (URL, URL + "?tenant=evil", False),
        (URL + "?tenant=a", URL + "?tenant=a", True),
        # origins: any path there
        ("https://login.example.com", URL, True),
        ("https://login.example.com/", URL, True),
        ("https://login.example.com", "https://login.example.com.evil.test/oauth2/token", False),
        ("https://login.example.com", "https://evil.test/login.example.com", False),
        ("https://login.example.com", "http://login.example.com/token", False),
        # host names: any scheme and port on that host
        ("login.example.com", URL, True),
        ("login.example.com.", "https://LOGIN.example.com:8443/t", True),
        ("login.example.com", "https://sub.login.example.com/t", False),
        ("127.0.0.1", "http://127.0.0.1:31000/token", True),
        ("[::1]", "http://[::1]:31000/token", True),
        ("::1", "http://[::1]:31000/token", True),
        # nonsense never matches
        ("https://", URL, False),
        ("https://login.example.com:99999", URL, False),
        ("", URL, False),
        (URL, "not a url", False),
    ],
)
def test_matches(entry: str, url: str, allowed: bool) -> None:
    assert destinations.matches(entry, url) is allowed


@pytest.mark.parametrize(
    ("annotation", "allowed"),
    [
        (None, False),  # no annotation: nowhere (decision 0032)
        ("", False),
        ("https://other.example.com, " + URL, True),  # commas
        ("https://other.example.com\n  login.example.com", True),  # white space
        ("https://other.example.com", False),
    ],
)
def test_allows(annotation: str | None, allowed: bool) -> None:
    assert destinations.allows(source(annotation), URL) is allowed


def test_an_annotation_that_is_not_a_string_allows_nothing() -> None:
    body = {"metadata": {"annotations": {model.ALLOWED_DESTINATIONS_ANNOTATION: ["x"]}}}
    assert destinations.listed(body) == ()


def test_the_refusal_is_permanent_and_names_the_fix() -> None:
    failure = destinations.refused("Secret", "oauth-client", URL)
    assert failure.reason is failures.Reason.DESTINATION_NOT_ALLOWED
    assert failure.kind is failures.Kind.PERMANENT
    assert model.ALLOWED_DESTINATIONS_ANNOTATION in failure.message
    assert URL in failure.message
    assert "nothing was sent" in failure.message
