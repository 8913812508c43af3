"""spec.grant end to end (decision 0047): the operator, against a real API server, gets a
token with each grant from the token server (Authlib's JWT bearer grant; the small RFC
8693 grant of tests/support/tokenserver.py; a custom grant type) and writes the target
Secret. The token exchange's subject token is a real ServiceAccount token, minted under
the workload identity opt-in and verified with the API server's own keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from test_client_auth import SA_ISSUER, service_account
from test_operator import Env

from support import kubeoidc, tokenserver
from support.fixtures import operator
from support.grantkeys import KEY_PEM, public_jwks
from support.operatorproc import OperatorProcess, workload_identity_granted
from support.polling import wait_for
from support.tokenserver import TokenServer

__all__ = ["operator"]

pytestmark = pytest.mark.e2e

AUDIENCE = "https://sts.tokensync.test"


@pytest.fixture(scope="module")
def server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=3600) as running:
        yield running


@pytest.fixture
def env(
    api_client: client.ApiClient, namespace: str, server: TokenServer, operator: OperatorProcess
) -> Env:
    return Env(api_client, namespace, server)


@pytest.fixture
def workload_identity(env: Env) -> Iterator[None]:
    with workload_identity_granted(env.api, namespace=env.ns):
        yield


def issued_with(env: Env, client_id: str) -> list[tokenserver.Issued]:
    return [i for i in env.server.issued if i.client_id == client_id]


def test_jwt_bearer_grant(env: Env) -> None:
    client_id = f"{env.client_id}-bearer"
    env.server.add_client(
        client_id,
        jwks=public_jwks(),
        auth_methods=["private_key_jwt"],
        grant_types=[tokenserver.JWT_BEARER_GRANT],
    )
    env.secret("signing-key", {"tls.key": KEY_PEM})
    env.create_credential(
        "api",
        {
            "tokenURL": env.server.url,
            "clientID": client_id,
            "grant": {"type": "jwt_bearer"},
            "privateKeyRef": {"name": "signing-key"},
            "scopes": ["reports.read"],
        },
    )
    env.wait_ready()
    token = env.token()
    assert token is not None
    assert env.server.verify(token)
    (issued,) = issued_with(env, client_id)
    assert issued.grant_type == tokenserver.JWT_BEARER_GRANT
    assert issued.grant_claims is not None
    assert (issued.grant_claims["iss"], issued.grant_claims["aud"]) == (client_id, env.server.url)
    assert env.status()["authMethod"] == "none"


def test_token_exchange_with_a_service_account_token(
    env: Env, workload_identity: None, operator: OperatorProcess
) -> None:
    client_id = f"{env.client_id}-exchange"
    env.server.add_client(
        client_id,
        auth_methods=["none"],
        grant_types=[tokenserver.TOKEN_EXCHANGE_GRANT],
        subject_issuer=(SA_ISSUER, kubeoidc.jwks_fetcher(env.api, issuer=SA_ISSUER)),
    )
    service_account(env, "billing", AUDIENCE)
    env.create_credential(
        "api",
        {
            "tokenURL": env.server.url,
            "clientID": client_id,
            "grant": {
                "type": "token_exchange",
                "tokenExchange": {
                    "subjectServiceAccountRef": {"name": "billing", "audience": AUDIENCE},
                    "requestedTokenType": tokenserver.TOKEN_TYPE_ACCESS_TOKEN,
                },
            },
            "audience": "https://reports.tokensync.test",
        },
    )
    env.wait_ready()
    (issued,) = issued_with(env, client_id)
    assert issued.grant_type == tokenserver.TOKEN_EXCHANGE_GRANT
    assert issued.grant_claims is not None
    assert issued.grant_claims["sub"] == f"system:serviceaccount:{env.ns}:billing"
    assert issued.grant_params["audience"] == ["https://reports.tokensync.test"]
    token = env.token()
    assert token is not None
    assert env.server.verify(token)
    # No subject token in what the operator writes about the credential.
    assert "subject" not in str(env.status()).lower()
    # A forced refresh mints a new subject token for the new exchange.
    env.force_refresh()
    wait_for(lambda: len(issued_with(env, client_id)) == 2, what="a second exchanged token")
    assert "eyJ" not in operator.log()


def test_token_exchange_needs_the_service_accounts_opt_in(
    env: Env, workload_identity: None
) -> None:
    service_account(env, "billing", "https://some-other-audience")
    requests = env.server.requests
    env.create_credential(
        "api",
        {
            "tokenURL": env.server.url,
            "clientID": "nobody",
            "grant": {
                "type": "token_exchange",
                "tokenExchange": {
                    "subjectServiceAccountRef": {"name": "billing", "audience": AUDIENCE}
                },
            },
        },
    )
    ready = env.wait_ready(reason="ServiceAccountNotOptedIn")
    assert "tokensync.dev/token-audiences" in ready["message"]
    assert env.server.requests == requests


def test_custom_grant_with_extra_params(env: Env) -> None:
    client_id = f"{env.client_id}-custom"
    env.server.add_client(client_id, "custom-secret", grant_types=[tokenserver.CUSTOM_GRANT_TYPE])
    env.secret("custom-client", {"client_id": client_id, "client_secret": "custom-secret"})
    env.create_credential(
        "api",
        {
            "tokenURL": env.server.url,
            "clientSecretRef": {"name": "custom-client"},
            "grant": {"type": "custom", "grantTypeURI": tokenserver.CUSTOM_GRANT_TYPE},
            "extraParams": {"account": "reporting"},
        },
    )
    env.wait_ready()
    (issued,) = issued_with(env, client_id)
    assert (issued.grant_type, issued.grant_params) == (
        tokenserver.CUSTOM_GRANT_TYPE,
        {"account": ["reporting"]},
    )


def test_a_grant_the_server_refuses_is_reported(env: Env) -> None:
    """The client may only use client credentials: the server answers unauthorized_client."""
    env.client_secret()
    env.create_credential(
        "api",
        {
            "tokenURL": env.server.url,
            "clientSecretRef": {"name": "oauth-client"},
            "grant": {"type": "custom", "grantTypeURI": tokenserver.CUSTOM_GRANT_TYPE},
            "extraParams": {"account": "reporting"},
        },
    )
    env.wait_ready(reason="UnauthorizedClient")


# -- chaining: another credential's token as the subject token ------------------------------


def chain(env: Env, *, allowed: list[str] | None) -> str:
    """A source credential (client credentials) whose target lists ``allowed``, and a
    consumer exchanging its token; returns the consumer's client id."""
    env.client_secret()
    target: dict[str, Any] = {"name": "source-token"}
    if allowed is not None:
        target["allowedDestinations"] = allowed
    env.credential("source", target=target)
    env.wait_ready("source")
    consumer = f"{env.client_id}-chained"
    env.server.add_client(
        consumer, auth_methods=["none"], grant_types=[tokenserver.TOKEN_EXCHANGE_GRANT]
    )
    env.create_credential(
        "consumer",
        {
            "tokenURL": env.server.url,
            "clientID": consumer,
            "grant": {
                "type": "token_exchange",
                "tokenExchange": {
                    "subjectTokenSecretRef": {"name": "source-token"},
                    "subjectTokenType": tokenserver.TOKEN_TYPE_ACCESS_TOKEN,
                },
            },
        },
    )
    return consumer


def test_chaining_from_another_credentials_secret(env: Env) -> None:
    consumer = chain(env, allowed=[env.server.url])
    env.wait_ready("consumer")
    (issued,) = issued_with(env, consumer)
    assert issued.grant_type == tokenserver.TOKEN_EXCHANGE_GRANT
    # The subject was the source credential's token: its client.
    assert issued.grant_claims == {"sub": env.client_id}
    token = env.token("consumer-token")
    assert token is not None
    assert env.server.verify(token)


def test_chaining_refused_when_the_source_does_not_allow_the_destination(env: Env) -> None:
    consumer = chain(env, allowed=None)
    ready = env.wait_ready("consumer", reason="DestinationNotAllowed")
    assert "source-token" in ready["message"]
    assert issued_with(env, consumer) == []
