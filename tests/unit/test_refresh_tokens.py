"""Refresh tokens (decision 0048): read from answers, sent with the refresh_token grant,
written only through the template variable, and Authlib's RefreshTokenGrant over loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from support.tokenserver import TokenServer
from tokensync import cli, failures, grants, model, oauth, responses, shape, urlpolicy

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
URL = "https://login.example.com/oauth2/token"
LOOPBACK = urlpolicy.Allowance.parse(["127.0.0.0/8"])


def parse(document: dict[str, Any]) -> responses.Token:
    return responses.parse_token_response(
        status_code=200,
        headers={},
        body=json.dumps(document).encode(),
        sent_at=NOW,
        default_lifetime=timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("rt-1", "rt-1"), (None, None), ("", None), (42, None), (["rt"], None)],
)
def test_refresh_token_read_from_the_answer(value: object, expected: str | None) -> None:
    document: dict[str, Any] = {"access_token": "at", "token_type": "Bearer", "expires_in": 60}
    if value is not None:
        document["refresh_token"] = value
    token = parse(document)
    assert token.refresh_token == expected
    assert "rt-1" not in repr(token)


def test_refresh_token_grant_replaces_the_grants_parameters() -> None:
    exchange = model.Grant(
        type=model.GrantType.TOKEN_EXCHANGE,
        token_exchange=model.TokenExchange(model.ServiceAccountRef("sa", "aud")),
    )
    for grant in (model.Grant(), exchange, model.Grant(type=model.GrantType.JWT_BEARER)):
        request = model.TokenRequest(token_url=URL, grant=grant)
        material = model.ClientAuthMaterial("c", refresh_token="rt-1")
        assert grants.parameters(request, material, now=NOW) == [
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt-1"),
        ]
    assert "rt-1" not in repr(model.ClientAuthMaterial("c", refresh_token="rt-1"))


def test_template_variable_refresh_token() -> None:
    token = shape.Token(
        access_token="at", token_type="Bearer", expires_at=NOW, scope=None, refresh_token="rt"
    )
    assert shape.variables(token)["refresh_token"] == "rt"
    without = shape.Token(access_token="at", token_type="Bearer", expires_at=NOW, scope=None)
    assert shape.variables(without)["refresh_token"] == ""
    # The default shape never writes it.
    assert "rt" not in shape.render(model.TargetSpec(name="t"), token).values()


@pytest.fixture
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as running:
        running.add_client("app", "app-secret")
        running.issue_refresh_tokens = True
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as shared:
        yield shared


async def fetch(
    client: httpx.AsyncClient, server: TokenServer, refresh_token: str | None = None
) -> responses.FetchResult:
    urlpolicy.check_token_url(server.url, allow_insecure_http=True, allowance=LOOPBACK)
    return await oauth.fetch_token(
        client,
        request=model.TokenRequest(token_url=server.url, scopes=("read",)),
        credentials=model.ClientAuthMaterial(
            "app", client_secret="app-secret", refresh_token=refresh_token
        ),
        default_lifetime=timedelta(hours=1),
        now=lambda: datetime.now(UTC),
        timeout=5.0,
    )


async def test_refresh_token_round_trip_against_authlib(
    server: TokenServer, client: httpx.AsyncClient
) -> None:
    first = await fetch(client, server)
    assert first.token.refresh_token is not None
    second = await fetch(client, server, first.token.refresh_token)
    assert [i.grant_type for i in server.issued] == ["client_credentials", "refresh_token"]
    assert server.verify(second.token.access_token)
    assert second.token.scope == "read"
    # The server rotates: the one used is retired, a new one came.
    assert second.token.refresh_token not in (None, first.token.refresh_token)
    with pytest.raises(failures.TokenError) as caught:
        await fetch(client, server, first.token.refresh_token)
    assert caught.value.error_code == "invalid_grant"
    assert first.token.refresh_token not in str(caught.value)


def test_fetch_with_a_refresh_token(
    server: TokenServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.SECRET_ENV, "app-secret")
    argv = ["fetch", "--token-url", server.url, "--client-id", "app", "--allow-insecure-http"]
    argv.append("--allow-private-network=127.0.0.0/8")
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["refresh_token_issued"] is True
    assert "refresh_token" not in out
    assert cli.main([*argv, "--show-token"]) == 0
    refresh_token = json.loads(capsys.readouterr().out)["refresh_token"]
    monkeypatch.setenv("RT", refresh_token)
    assert cli.main([*argv, "--refresh-token-env", "RT"]) == 0
    captured = capsys.readouterr()
    assert refresh_token not in captured.out
    assert server.issued[-1].grant_type == "refresh_token"
    # Used once: the server refuses it now.
    assert cli.main([*argv, "--refresh-token-env", "RT"]) == 1
    err = capsys.readouterr().err
    assert "InvalidGrant" in err
    assert refresh_token not in err
