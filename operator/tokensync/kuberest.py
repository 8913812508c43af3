"""Requests to the API server through the official client, without its generated API classes.

The official ``ApiClient`` still does everything but the method table: its configuration
(host, CA, client certificate, a kubeconfig's proxy), the bearer token with its refresh
hook, the urllib3 pool and the REST layer. What is left out are the generated API modules
(``CoreV1Api`` and friends): importing them costs 26 MiB, most of the operator's fixed
memory after its own imports, and each of their methods checks its arguments with pydantic
at every call (decision 0055). The operator makes a dozen kinds of request; their paths are
built here.

Synchronous, like the client: callers run these in their own threads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

JSON = "application/json"
Query = Sequence[tuple[str, str | int | bool]]
Timeout = float | tuple[float, float]


def path(
    api_version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The path of a collection or an object: ``/api/v1/...`` for the core group,
    ``/apis/<group>/<version>/...`` for the others. Names are quoted whole."""
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace is not None:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class Rest:
    """One ``ApiClient``'s requests, as raw responses or parsed JSON."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    def send(
        self,
        method: str,
        resource_path: str,
        *,
        query: Query = (),
        body: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        accept: str = JSON,
        timeout: Timeout,
    ) -> Any:
        """Send a request and return the client's response unread (``.response`` is
        urllib3's, for a watch); a status outside 2xx raises ``ApiException`` with the
        body read, as the generated methods do."""
        headers: dict[str, str] = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type or JSON
        serialized = self._api.param_serialize(
            method=method,
            resource_path=resource_path,
            query_params=list(query),
            header_params=headers,
            body=None if body is None else dict(body),  # the client serializes dicts only
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*serialized, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()  # type: ignore[no-untyped-call]
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response

    def json(self, method: str, resource_path: str, **options: Any) -> Any:
        """:meth:`send`, and the response's body parsed (``{}`` when empty)."""
        data = self.send(method, resource_path, **options).read()
        return json.loads(data) if data else {}
