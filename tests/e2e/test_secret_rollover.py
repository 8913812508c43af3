"""Client secret rollover end to end (decision 0045): the operator, under deploy/'s RBAC
against a real API server, and the Authlib token server whose client secret is rotated.

The client Secret holds the new secret in client_secret and the old one in
client_secret_previous, listed in fallbackClientSecretKeys. While the server knows only the
old one, the credential is Ready with status.clientSecretKey naming the fallback and one
Warning Event; once the server has the new one, status names it and a Normal Event says the
old one can go; when the server knows neither, InvalidClient as without fallbacks.
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

NEW, OLD = "rollover-new-secret-4e1b", "rollover-old-secret-a27d"


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=3600) as running:
        yield running


@pytest.fixture
def env(
    api_client: client.ApiClient, namespace: str, server: TokenServer, operator: OperatorProcess
) -> Env:
    created = Env(api_client, namespace, server)
    server.set_secret(created.client_id, OLD)  # the provider has not taken the new one yet
    created.secret(
        "oauth-client",
        {"client_id": created.client_id, "client_secret": NEW, "client_secret_previous": OLD},
    )
    return created


def reasons(env: Env, reason: str) -> list[client.CoreV1Event]:
    return [e for e in env.events("api") if e.reason == reason]


def rollover(env: Env) -> None:
    env.credential(
        clientSecretRef={
            "name": "oauth-client",
            "fallbackClientSecretKeys": ["client_secret_previous"],
        },
    )


def test_the_old_secret_keeps_it_ready_and_the_new_one_takes_over(
    env: Env, operator: OperatorProcess
) -> None:
    rollover(env)
    env.wait_ready()
    assert env.status()["clientSecretKey"] == "client_secret_previous"
    (warning,) = env.wait_for(
        lambda: reasons(env, "ClientSecretFallback") or None, what="the fallback Event"
    )
    assert warning.type == "Warning"
    assert "'client_secret'" in warning.message
    assert "'client_secret_previous'" in warning.message
    token = env.token()
    assert token is not None
    assert env.server.verify(token)
    # Refreshes while the fallback is still in use post no further Event (the budget).
    for _ in range(2):
        env.force_refresh()
        token = env.wait_new_token(token, timeout=30)
    assert env.status()["clientSecretKey"] == "client_secret_previous"
    assert len(reasons(env, "ClientSecretFallback")) == 1
    # The provider takes the new secret: the next refresh uses it, and says so.
    env.server.set_secret(env.client_id, NEW)
    env.force_refresh()
    env.wait_for(
        lambda: env.status().get("clientSecretKey") == "client_secret" or None,
        what="status naming the new key",
    )
    (changed,) = env.wait_for(
        lambda: reasons(env, "ClientSecretKeyChanged") or None, what="the Normal Event"
    )
    assert changed.type == "Normal"
    assert "'client_secret_previous'" in changed.message
    haystacks = {
        "log": operator.log(),
        "metrics": operator.metrics(),
        "status": str(env.get()["status"]),
        "events": " ".join(f"{e.reason} {e.message}" for e in env.events()),
    }
    for where, text in haystacks.items():
        for needle in (NEW, OLD):
            assert needle not in text, f"a client secret leaked into the {where}"


def test_both_secrets_refused_is_invalid_client(env: Env) -> None:
    env.server.set_secret(env.client_id, "a-third-secret-neither-key-holds")
    requests = env.server.requests
    rollover(env)
    ready = env.wait_ready(reason="InvalidClient")
    assert ready["status"] == "False"
    assert "clientSecretKey" not in env.status()
    assert not reasons(env, "ClientSecretFallback")
    # Each key with Basic, then with the form body (auto): the fallback was tried too.
    assert env.server.requests - requests >= 4
