"""spec.requestHeaders (decision 0044): which names and values the parser, the CRD and the
Secret reader accept, and what the real token server receives."""

from __future__ import annotations

import base64
import datetime
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from support.tokenserver import TokenServer
from tokensync import cli, discovery, headers, model, oauth, parsing, sources, tracking

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "clientcredentials.tokensync.dev.yaml"
LOOPBACK = "--allow-private-network=127.0.0.0/8,::1"
#: A value that must never show in a message, a repr or a log.
PLANTED = "planted-header-value-7f3c9e"


def spec_with(*items: dict[str, Any]) -> dict[str, Any]:
    return {
        "tokenURL": "https://login.example.com/t",
        "clientSecretRef": {"name": "client"},
        "requestHeaders": list(items),
    }


@pytest.mark.parametrize(
    ("item", "field", "message"),
    [
        ({"name": "Authorization", "value": "x"}, "[0].name", "must not set Authorization"),
        ({"name": "authorization", "value": "x"}, "[0].name", "must not set authorization"),
        ({"name": "Content-Type", "value": "x"}, "[0].name", "must not set Content-Type"),
        ({"name": "Content-Length", "value": "1"}, "[0].name", "must not set Content-Length"),
        ({"name": "HOST", "value": "x"}, "[0].name", "must not set HOST"),
        ({"name": "Transfer-Encoding", "value": "x"}, "[0].name", "hop-by-hop"),
        ({"name": "Connection", "value": "x"}, "[0].name", "hop-by-hop"),
        ({"name": "Accept-Encoding", "value": "gzip"}, "[0].name", "within its cap"),
        ({"name": "X Api Key", "value": "x"}, "[0].name", "not an HTTP header name"),
        ({"name": "X-Api:Key", "value": "x"}, "[0].name", "not an HTTP header name"),
        ({"name": "X-Api-Key", "value": f"{PLANTED}\r\nX-Evil: 1"}, "[0].value", "one line"),
        ({"name": "X-Api-Key", "value": " padded"}, "[0].value", "one line"),
        ({"name": "X-Api-Key"}, "[0]", "exactly one of value and valueFrom"),
        (
            {
                "name": "X-Api-Key",
                "value": "x",
                "valueFrom": {"secretKeyRef": {"name": "k", "key": "v"}},
            },
            "[0]",
            "exactly one of value and valueFrom",
        ),
        (
            {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "K", "key": "v"}}},
            "[0].valueFrom.secretKeyRef.name",
            "not a valid Secret name",
        ),
        (
            {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "k", "key": "a/b"}}},
            "[0].valueFrom.secretKeyRef.key",
            "not a valid Secret key",
        ),
    ],
)
def test_parse_spec_refuses(item: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        parsing.parse_spec(spec_with(item), name="x")
    assert caught.value.field == f"spec.requestHeaders{field}"
    assert message in str(caught.value)
    assert PLANTED not in str(caught.value)


def test_parse_spec_refuses_a_name_twice_whatever_its_case() -> None:
    with pytest.raises(model.SpecError, match=r"spec\.requestHeaders\[1\]\.name: X-A is listed"):
        parsing.parse_spec(
            spec_with({"name": "x-a", "value": "1"}, {"name": "X-A", "value": "2"}), name="x"
        )


def test_parse_spec_refuses_a_header_secret_that_is_the_target() -> None:
    item = {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "x-token", "key": "k"}}}
    with pytest.raises(model.SpecError, match=r"spec\.target\.name"):
        parsing.parse_spec(spec_with(item), name="x")


def test_parse_spec_reads_headers_and_their_secrets() -> None:
    spec = parsing.parse_spec(
        spec_with(
            {"name": "X-Tenant", "value": "acme corp"},
            {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gw", "key": "k"}}},
        ),
        name="x",
    )
    assert spec.request_headers == (
        model.RequestHeader(name="X-Tenant", value="acme corp"),
        model.RequestHeader(name="X-Api-Key", secret=model.SecretKeyRef(name="gw", key="k")),
    )
    assert spec.secret_names == ("client", "gw")
    assert "acme corp" not in repr(spec)


def crd_reserved_names() -> set[str]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = crd["spec"]["versions"]
    item = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "requestHeaders"
    ]["items"]
    (rule,) = [r["rule"] for r in item["x-kubernetes-validations"] if "lowerAscii" in r["rule"]]
    return set(re.findall(r"'([a-z-]+)'", rule))


def test_the_crd_refuses_the_names_the_parser_refuses() -> None:
    assert crd_reserved_names() == set(headers.RESERVED)


def test_the_crd_name_pattern_is_the_parser_s() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = crd["spec"]["versions"]
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    item = props["requestHeaders"]["items"]["properties"]
    assert item["name"]["pattern"] == f"^{headers.NAME.pattern}$"
    for value in ("a", "a b", "a\tb", "~!", " a", "a ", "a\r\nb", "é"):
        expected = bool(re.fullmatch(item["value"]["pattern"].strip("^$"), value))
        assert headers.valid_value(value) == expected, value


# -- values from Secrets --------------------------------------------------------------------


def secret(data: dict[str, str], *, opted_in: bool = True) -> dict[str, Any]:
    labels = {model.CLIENT_SECRET_LABEL: "true"} if opted_in else {}
    return {
        "metadata": {"labels": labels},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


HEADER_SPEC = parsing.parse_spec(
    spec_with(
        {"name": "X-Tenant", "value": "acme"},
        {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gw", "key": "k"}}},
    ),
    name="x",
)


def test_header_values_reads_opted_in_secrets() -> None:
    found = sources.header_values({"gw": secret({"k": f" {PLANTED}\n"})}, spec=HEADER_SPEC)
    assert found == (("X-Tenant", "acme"), ("X-Api-Key", PLANTED))


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        ({}, "RequestHeaderSecretNotFound"),
        ({"gw": secret({"k": PLANTED}, opted_in=False)}, "ClientSecretNotOptedIn"),
        ({"gw": secret({"other": PLANTED})}, "RequestHeaderValueInvalid"),
        ({"gw": secret({"k": f"{PLANTED}\r\nX-Evil: 1"})}, "RequestHeaderValueInvalid"),
        ({"gw": secret({"k": "x" * (headers.MAX_SECRET_VALUE + 1)})}, "RequestHeaderValueInvalid"),
    ],
)
def test_header_values_refuses(found: dict[str, Any], reason: str) -> None:
    with pytest.raises(sources.SourceProblem) as caught:
        sources.header_values(found, spec=HEADER_SPEC)
    assert caught.value.reason == reason
    assert PLANTED not in str(caught.value)


# -- on the wire: the real token server ----------------------------------------------------


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600, discovery="openid") as running:
        running.add_client("hdr-client", "hdr-secret", auth_methods=("client_secret_basic",))
        yield running


async def test_the_token_request_and_discovery_carry_the_headers(server: TokenServer) -> None:
    sent = (("X-Tenant", "acme"), ("X-Api-Key", PLANTED))
    request = model.TokenRequest(token_url=server.url, headers=sent)
    async with httpx.AsyncClient() as client:
        await discovery.fetch_metadata(client, server.issuer_url, timeout=5, headers=sent)
        result = await oauth.fetch_token(
            client,
            request=request,
            credentials=model.ClientAuthMaterial("hdr-client", "hdr-secret"),
            default_lifetime=datetime.timedelta(hours=1),
            now=lambda: datetime.datetime.now(datetime.UTC),
        )
    assert result.auth_method is model.AuthMethod.CLIENT_SECRET_BASIC
    (token_headers,) = server.token_request_headers
    (discovery_headers,) = server.discovery_request_headers
    for seen in (token_headers, discovery_headers):
        assert seen["x-tenant"] == "acme"
        assert seen["x-api-key"] == PLANTED
        assert seen["accept-encoding"] == "identity"  # tokensync's own, kept
    assert token_headers["authorization"].startswith("Basic ")
    assert PLANTED not in repr(request)


def test_own_headers_refuse_a_reserved_name_a_second_time() -> None:
    with pytest.raises(Exception, match="requestHeaders may not set 'Host'"):
        oauth.own_headers((("Host", "evil.example"),))


def test_fetch_sends_file_headers_inline_and_from_the_environment(
    server: TokenServer,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = tmp_path / "cred.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tokensync.dev/v1alpha1",
                "kind": "ClientCredential",
                "metadata": {"name": "hdr"},
                "spec": {
                    "tokenURL": server.url,
                    "clientID": "hdr-client",
                    "clientSecretRef": {"name": "hdr-client"},
                    "requestHeaders": [
                        {"name": "X-Tenant", "value": "acme"},
                        {
                            "name": "X-Api-Key",
                            "valueFrom": {"secretKeyRef": {"name": "gw", "key": "k"}},
                        },
                    ],
                },
            }
        )
    )
    monkeypatch.setenv(cli.SECRET_ENV, "hdr-secret")
    base = ["fetch", "--file", str(manifest), "--allow-insecure-http", LOOPBACK]
    # A header from a Secret needs its value from the environment: fetch reads no Secret.
    with pytest.raises(SystemExit, match="--header-env X-Api-Key=VARIABLE"):
        cli.main(base)
    assert server.requests == 0
    monkeypatch.setenv("GATEWAY_KEY", PLANTED)
    code = cli.main([*base, "--header-env", "X-Api-Key=GATEWAY_KEY", "--header", "X-Extra=1"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out)["auth_method"] == "client_secret_basic"
    assert PLANTED not in out
    (seen,) = server.token_request_headers
    assert (seen["x-tenant"], seen["x-api-key"], seen["x-extra"]) == ("acme", PLANTED, "1")


def test_fetch_refuses_a_reserved_header_and_sends_nothing(
    server: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "hdr-secret")
    args = ["fetch", "--token-url", server.url, "--client-id", "hdr-client"]
    with pytest.raises(SystemExit, match="must not set Authorization"):
        cli.main([*args, "--header", "Authorization=Bearer x", "--allow-insecure-http", LOOPBACK])
    assert server.requests == 0


def test_a_record_lists_the_header_secrets_as_parse_spec_does() -> None:
    """The watch's index (tracking) and an attempt (parse_spec) agree on the Secrets and
    their order: a rotation of a header's Secret triggers a refresh (decision 0044)."""
    raw = {
        **spec_with(
            {"name": "X-A", "valueFrom": {"secretKeyRef": {"name": "gw", "key": "k"}}},
            {"name": "X-B", "valueFrom": {"secretKeyRef": {"name": "client", "key": "k"}}},
            {"name": "X-C", "value": "v"},
        ),
        "privateKeyRef": {"name": "key"},
    }
    record = tracking.Record.from_body(
        {"metadata": {"name": "x", "namespace": "ns", "uid": "u", "generation": 1}, "spec": raw}
    )
    assert record.secret_names == parsing.parse_spec(raw, name="x").secret_names
    assert record.secret_names == ("client", "key", "gw")
