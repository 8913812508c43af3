"""spec.requestHeaders end to end (decision 0044): the operator, under deploy/'s RBAC against a
real API server, sends the headers to the Authlib token server and to its discovery
document; a value from a Secret follows the Secret's opt-in and destinations; no value
shows in the log, Events, status or metrics.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from kubernetes import client
from test_operator import CLIENT_SECRET, Env

from support.fixtures import operator
from support.operatorproc import OperatorProcess
from support.tokenserver import TokenServer

__all__ = ["operator"]

pytestmark = pytest.mark.e2e

#: Distinctive values, searched for wherever the operator writes.
INLINE = "inline-tenant-value-5d1a"
API_KEY = "api-key-from-a-secret-8c4f2e"


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=3600, discovery="openid") as running:
        yield running


@pytest.fixture
def env(
    api_client: client.ApiClient, namespace: str, server: TokenServer, operator: OperatorProcess
) -> Env:
    return Env(api_client, namespace, server)


def headers_for(env: Env, client_id: str) -> list[dict[str, str]]:
    """The headers of the token requests that authenticated as ``client_id`` (Basic)."""
    found = []
    for seen in env.server.token_request_headers:
        basic = seen.get("authorization", "").removeprefix("Basic ")
        try:
            user = base64.b64decode(basic).decode().partition(":")[0]
        except ValueError:
            continue
        if user == client_id:
            found.append(seen)
    return found


HEADERS = [
    {"name": "X-Tenant", "value": INLINE},
    {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "api-key"}}},
]


def test_headers_reach_the_token_endpoint_and_discovery_and_never_leak(
    env: Env, operator: OperatorProcess
) -> None:
    env.client_secret()
    env.secret("gateway", {"api-key": API_KEY})
    discovered = len(env.server.discovery_request_headers)
    env.create_credential(
        "api",
        {
            "issuerURL": env.server.issuer_url,
            "clientSecretRef": {"name": "oauth-client"},
            "authMethod": "client_secret_basic",
            "requestHeaders": HEADERS,
        },
    )
    env.wait_ready()
    (seen, *_) = headers_for(env, env.client_id)
    assert (seen["x-tenant"], seen["x-api-key"]) == (INLINE, API_KEY)
    documents = env.server.discovery_request_headers[discovered:]
    assert any(d.get("x-api-key") == API_KEY for d in documents)
    # The Secret's key changes: a new token, with the new value.
    env.replace_secret("gateway", {"api-key": API_KEY + "-2"})
    env.wait_for(
        lambda: any(h["x-api-key"] == API_KEY + "-2" for h in headers_for(env, env.client_id)),
        what="a token request with the new header value",
    )
    haystacks = {
        "log": operator.log(),
        "metrics": operator.metrics(),
        "status": str(env.get()["status"]),
        "events": " ".join(f"{e.reason} {e.message}" for e in env.events()),
    }
    for where, text in haystacks.items():
        for needle in (INLINE, API_KEY, CLIENT_SECRET):
            assert needle not in text, f"a header value leaked into the {where}"


def test_a_header_secret_must_opt_in_and_allow_the_destination(env: Env) -> None:
    env.client_secret()
    env.secret("gateway", {"api-key": API_KEY}, opt_in=False)
    env.credential(requestHeaders=HEADERS)
    ready = env.wait_ready(reason="ClientSecretNotOptedIn")
    assert "'gateway'" in ready["message"]
    assert not headers_for(env, env.client_id)
    # Labelled, but its annotation lists another host: nothing is sent either.
    env.core.patch_namespaced_secret(
        "gateway",
        env.ns,
        {
            "metadata": {
                "labels": {"tokensync.dev/client-secret": "true"},
                "annotations": {"tokensync.dev/allowed-destinations": "login.example.com"},
            }
        },
    )
    ready = env.wait_ready(reason="DestinationNotAllowed")
    assert "'gateway'" in ready["message"]
    assert not headers_for(env, env.client_id)


def test_a_missing_header_secret_is_reported(env: Env) -> None:
    env.client_secret()
    env.credential(requestHeaders=HEADERS)
    ready = env.wait_ready(reason="RequestHeaderSecretNotFound")
    assert "'gateway'" in ready["message"]
    env.secret("gateway", {"api-key": API_KEY})
    env.wait_ready()
    (seen, *_) = headers_for(env, env.client_id)
    assert seen["x-api-key"] == API_KEY
