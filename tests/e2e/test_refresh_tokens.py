"""Refresh tokens end to end (decision 0048): the operator sends the refresh token of the
last answer at the next refresh (Authlib's RefreshTokenGrant), falls back to the client
credentials grant when the server refuses it (invalid_grant), writes it only where a
template asks for it, and never into status, Events or its log.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client
from test_operator import Env

from support.fixtures import operator
from support.operatorproc import OperatorProcess
from support.tokenserver import TokenServer

__all__ = ["operator"]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=3600) as running:
        running.issue_refresh_tokens = True
        yield running


@pytest.fixture
def env(
    api_client: client.ApiClient, namespace: str, server: TokenServer, operator: OperatorProcess
) -> Env:
    return Env(api_client, namespace, server)


def grants_of(env: Env) -> list[str]:
    return [i.grant_type for i in env.issued()]


def test_refresh_token_used_then_refused_then_a_fresh_grant(
    env: Env, operator: OperatorProcess
) -> None:
    env.client_secret()
    env.credential(
        target={
            "name": "api-token",
            "template": {"data": {"token": "{{ access_token }}", "refresh": "{{ refresh_token }}"}},
        }
    )
    env.wait_ready()
    first = env.secret_data("api-token")
    assert first is not None
    assert first["refresh"] in env.server.live_refresh_tokens
    assert grants_of(env) == ["client_credentials"]

    env.force_refresh()
    env.wait_for(lambda: len(grants_of(env)) == 2 or None, what="a refreshed token")
    assert grants_of(env) == ["client_credentials", "refresh_token"]
    second = env.wait_for(
        lambda: (
            ((d := env.secret_data("api-token")) and d["token"] != first["token"] and d) or None
        ),
        what="the refreshed token in the Secret",
    )
    # The server rotated it; the Secret holds the new one.
    assert second["refresh"] != first["refresh"]
    assert second["refresh"] in env.server.live_refresh_tokens

    # The server forgets every refresh token: invalid_grant, then client credentials.
    env.server.revoke_refresh_tokens()
    requests = env.server.requests
    env.force_refresh()
    env.wait_for(lambda: len(grants_of(env)) == 3 or None, what="a fallback to a fresh grant")
    # The refused refresh (invalid_grant issues nothing), then client credentials at once.
    assert grants_of(env)[2] == "client_credentials"
    assert env.server.requests == requests + 2
    env.wait_ready()
    third = env.wait_for(
        lambda: (
            ((d := env.secret_data("api-token")) and d["token"] != second["token"] and d) or None
        ),
        what="the fresh grant's token in the Secret",
    )
    assert env.server.verify(third["token"])

    written = str(env.get()) + " ".join(str(e.message) for e in env.events("api"))
    log = operator.log()
    for refresh_token in (first["refresh"], second["refresh"]):
        assert refresh_token not in written
        assert refresh_token not in log


def test_default_shape_never_holds_the_refresh_token(env: Env) -> None:
    env.client_secret()
    env.credential()
    env.wait_ready()
    data = env.target()
    assert data is not None
    assert "refresh_token" not in data
    assert not set(data.values()) & set(env.server.live_refresh_tokens)
