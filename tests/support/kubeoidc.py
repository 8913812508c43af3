"""kube-apiserver as an OpenID Connect issuer of ServiceAccount tokens, for federation tests.

Workload identity federation has an authorization server accept a Kubernetes ServiceAccount
token (from the TokenRequest API) as a client assertion. The server verifies it with the
apiserver's public keys, published by ServiceAccountIssuerDiscovery at
``/.well-known/openid-configuration`` and its ``jwks_uri`` (``/openid/v1/jwks``). Both are
read here through an authenticated ``kubernetes.client.ApiClient``: the local cluster's
issuer (https://kubernetes.default.svc.cluster.local) is not a resolvable address, so only
the path of ``jwks_uri`` is used, against the API server the client talks to.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

from kubernetes import client

DISCOVERY_PATH = "/.well-known/openid-configuration"
# The JWKS is served as application/jwk-set+json only (406 for application/json alone).
_ACCEPT = "application/json, application/jwk-set+json"


def get_json(api_client: client.ApiClient, path: str) -> dict[str, Any]:
    """GET a non-resource path of the API server as the client's identity."""
    method, url, headers, _body, _post = api_client.param_serialize(
        method="GET", resource_path=path, header_params={"Accept": _ACCEPT}
    )
    response = api_client.call_api(method, url, header_params=headers)
    response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}")
    document: dict[str, Any] = json.loads(response.data)
    return document


def discovery(api_client: client.ApiClient) -> dict[str, Any]:
    """The API server's OIDC discovery document (issuer, jwks_uri, algorithms)."""
    return get_json(api_client, DISCOVERY_PATH)


def fetch_jwks(api_client: client.ApiClient, *, issuer: str | None = None) -> dict[str, Any]:
    """The JWKS that verifies ServiceAccount tokens; ``issuer``, when given, must match."""
    document = discovery(api_client)
    if issuer is not None and document.get("issuer") != issuer:
        raise RuntimeError(f"issuer is {document.get('issuer')!r}, expected {issuer!r}")
    path = urllib.parse.urlsplit(document["jwks_uri"]).path
    return get_json(api_client, path)


def jwks_fetcher(
    api_client: client.ApiClient, *, issuer: str | None = None
) -> Callable[[], dict[str, Any]]:
    """For TokenServer.add_federated_client(fetch_jwks=...): fetched on every request."""
    return lambda: fetch_jwks(api_client, issuer=issuer)


def service_account_token(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    *,
    audience: str,
    expiration_seconds: int = 600,
) -> str:
    """A bound token for ServiceAccount ``namespace/name`` from the TokenRequest API."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=expiration_seconds)
    )
    core = client.CoreV1Api(api_client)
    created = core.create_namespaced_service_account_token(name, namespace, request)
    token: str = created.status.token
    return token
