"""Workload identity federation against the real kube-apiserver as the external issuer.

The unit tests stand in for the apiserver with a local key; this proves that the test token
server accepts a real ServiceAccount token from the TokenRequest API, verified with the JWKS
the apiserver publishes, and refuses it for another audience.
"""

from __future__ import annotations

import time

import httpx
import jwt
from kubernetes import client

from support import kubeoidc
from support.tokenserver import ASSERTION_TYPE, TokenServer

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "tokensync-federation-test"


def test_service_account_token_accepted(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="payments"))
    )
    jwks = kubeoidc.fetch_jwks(api_client, issuer=ISSUER)
    assert jwks["keys"], jwks
    token = kubeoidc.service_account_token(api_client, namespace, "payments", audience=AUDIENCE)
    other = kubeoidc.service_account_token(api_client, namespace, "payments", audience="other")
    subject = f"system:serviceaccount:{namespace}:payments"

    with TokenServer() as server:
        server.add_federated_client(
            "federated",
            issuer=ISSUER,
            subject=subject,
            audience=AUDIENCE,
            fetch_jwks=kubeoidc.jwks_fetcher(api_client, issuer=ISSUER),
        )

        def post(assertion: str) -> httpx.Response:
            form = {
                "grant_type": "client_credentials",
                "client_id": "federated",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            }
            return httpx.post(server.url, data=form, timeout=10)

        response = post(token)
        assert response.status_code == 200, response.text
        issued = server.issued[-1]
        assert issued.auth_method == "workload_identity"
        assert issued.assertion_header is not None
        header = jwt.get_unverified_header(token)
        assert issued.assertion_header["kid"] == header["kid"]
        assert issued.assertion_header["alg"] in ("RS256", "ES256")
        assert issued.assertion_claims["sub"] == subject  # type: ignore[index]
        assert issued.assertion_claims["exp"] > time.time()  # type: ignore[index]

        refused = post(other)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_client"
