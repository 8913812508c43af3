"""Kubernetes API calls, off the event loop.

The official ``kubernetes`` client is synchronous; every call here runs in one bounded
thread pool so the asyncio loop never blocks and the API server sees at most ``workers``
requests at once. Requests go through the client's ``ApiClient`` by path
(:mod:`tokensync.kuberest`, decision 0055) and responses are read as raw JSON: the
generated API classes and the client's model objects cost more CPU and memory than the
operator needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kubernetes import client

from tokensync import config, failures, kuberest, model

T = TypeVar("T")
logger = logging.getLogger(__name__)
_MERGE_PATCH = "application/merge-patch+json"
#: Target Secrets: ownerReferences merge by uid, so other owners' references stay and ours
#: can be removed alone (decision 0041); maps and null values work as in a merge patch.
_STRATEGIC_PATCH = "application/strategic-merge-patch+json"
#: Metadata listings (the resync of credentials, the confirmation of client Secrets) come in
#: pages of this many: each page's parsed metadata, managedFields and all, is a few KiB per
#: object, freed once reduced; small pages keep that transient small while refreshes land
#: long-lived objects beside it (issue 19).
_LIST_PAGE = 100
#: The resource of each kind spec.rolloutRestart may name (apps/v1).
_WORKLOAD_RESOURCES = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
}
_METADATA_ONLY = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
_TIMEOUT = 30
_CREDENTIALS = f"{model.GROUP}/{model.VERSION}"


class Fenced(Exception):
    """A write refused in this process: its Leases are not fresh (decision 0050)."""


class Kube:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        workers: int = config.DEFAULTS.kube_workers,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        #: Asked in the pool's thread just before each write: may this process still write?
        self._fence = fence
        self._rest = kuberest.Rest(api)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kube"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: kuberest.Query = (),
        body: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        accept: str = kuberest.JSON,
        write: bool = False,
    ) -> Any:
        """Send a request in the pool and return its JSON body; a ``write`` only if the
        fence allows it."""
        loop = asyncio.get_running_loop()
        fence = self._fence if write else None
        call = functools.partial(
            _read,
            self._rest,
            method,
            path,
            fence=fence,
            query=query,
            body=body,
            content_type=content_type,
            accept=accept,
        )
        try:
            return await loop.run_in_executor(self._pool, call)
        except Fenced:
            raise failures.ApiError(0, "Fenced") from None
        except client.ApiException as exc:
            # The body of an error response may echo what we sent (a Secret): keep only
            # the machine-readable reason.
            raise failures.ApiError(exc.status or 0, status_reason(exc.body)) from None
        except Exception as exc:  # noqa: BLE001 -- urllib3 errors: refused, timeouts, ...
            raise failures.ApiError(0, type(exc).__name__) from None

    async def _get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``; None if there is none (404)."""
        try:
            found: dict[str, Any] = await self._call("GET", path)
        except failures.ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def _list_metadata(
        self, path: str, keep: Callable[[dict[str, Any]], T], label_selector: str | None = None
    ) -> list[T]:
        """What ``keep`` takes from the metadata of every object at the collection ``path``:
        a consistent read from etcd, in pages of metadata only (PartialObjectMetadataList),
        each page dropped once reduced."""
        found: list[T] = []
        token = None
        while True:
            query: list[tuple[str, str | int | bool]] = [("limit", _LIST_PAGE)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if token:
                query.append(("continue", token))
            page: dict[str, Any] = await self._call("GET", path, query=query, accept=_METADATA_ONLY)
            found.extend(keep(item.get("metadata") or {}) for item in page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return found

    async def list_credentials(self, namespace: str | None) -> set[tuple[str, str]]:
        """Every ClientCredential (in ``namespace``, or the cluster's), as (namespace, name).

        Metadata only: a tenant's specs and annotations can be large, and only the names
        are needed.
        """
        return set(
            await self._list_metadata(
                kuberest.path(_CREDENTIALS, model.PLURAL, namespace=namespace), _key
            )
        )

    async def list_secret_versions(
        self, namespace: str | None, label_selector: str
    ) -> dict[tuple[str, str], str]:
        """The resourceVersion of every Secret with the label (in ``namespace``, or the
        cluster's): a consistent read, in pages of metadata only."""
        return dict(
            await self._list_metadata(
                kuberest.path("v1", "secrets", namespace=namespace),
                lambda meta: (_key(meta), str(meta.get("resourceVersion") or "")),
                label_selector,
            )
        )

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(kuberest.path("v1", "secrets", namespace=namespace, name=name))

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(kuberest.path("v1", "configmaps", namespace=namespace, name=name))

    async def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(
            kuberest.path("v1", "serviceaccounts", namespace=namespace, name=name)
        )

    async def create_token(
        self, namespace: str, service_account: str, *, audience: str, seconds: int
    ) -> str:
        """A ServiceAccount token for ``audience`` from the TokenRequest API."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": seconds},
        }
        # Not fenced: it changes nothing a tenant sees.
        created: dict[str, Any] = await self._call(
            "POST",
            kuberest.path(
                "v1",
                "serviceaccounts",
                namespace=namespace,
                name=service_account,
                subresource="token",
            ),
            body=body,
        )
        token = (created.get("status") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise failures.ApiError(0, "TokenRequestEmpty")
        return token

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._call(
            "POST", kuberest.path("v1", "secrets", namespace=namespace), body=body, write=True
        )
        return created

    async def patch_secret(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        patched: dict[str, Any] = await self._call(
            "PATCH",
            kuberest.path("v1", "secrets", namespace=namespace, name=name),
            body=body,
            content_type=_STRATEGIC_PATCH,
            write=True,
        )
        return patched

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Merge ``status`` into the ClientCredential's; with ``version``, only if its
        resourceVersion is still that (409 Conflict otherwise)."""
        body: dict[str, Any] = {"status": status}
        if version:
            body["metadata"] = {"resourceVersion": version}
        patched: dict[str, Any] = await self._call(
            "PATCH",
            kuberest.path(
                _CREDENTIALS, model.PLURAL, namespace=namespace, name=name, subresource="status"
            ),
            body=body,
            content_type=_MERGE_PATCH,
            write=True,
        )
        return patched

    async def read_credential(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(
            kuberest.path(_CREDENTIALS, model.PLURAL, namespace=namespace, name=name)
        )

    async def read_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """A Deployment, StatefulSet or DaemonSet (spec.rolloutRestart); None if absent."""
        return await self._get(
            kuberest.path("apps/v1", _WORKLOAD_RESOURCES[kind], namespace=namespace, name=name)
        )

    async def patch_workload(
        self, namespace: str, kind: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A merge patch of a workload; 409 if it names a resourceVersion no longer current."""
        patched: dict[str, Any] = await self._call(
            "PATCH",
            kuberest.path("apps/v1", _WORKLOAD_RESOURCES[kind], namespace=namespace, name=name),
            body=body,
            content_type=_MERGE_PATCH,
            write=True,
        )
        return patched

    async def post_event(
        self,
        *,
        involved: Mapping[str, str],
        type_: str,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        """A core/v1 Event about a ClientCredential (``involved``: namespace, name, uid)."""
        stamp = model.format_time(now)
        body = {
            "metadata": {
                "name": f"{involved['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": involved["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{model.GROUP}/{model.VERSION}",
                "kind": model.KIND,
                "name": involved["name"],
                "namespace": involved["namespace"],
                "uid": involved["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "tokensync"},
            "reportingComponent": "tokensync.dev/operator",
            "reportingInstance": "tokensync",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._call(
            "POST",
            kuberest.path("v1", "events", namespace=involved["namespace"]),
            body=body,
            write=True,
        )


def _read(
    rest: kuberest.Rest,
    method: str,
    path: str,
    *,
    fence: Callable[[], bool] | None,
    **kwargs: Any,
) -> Any:
    """Make the call and read its body, in the pool's thread; a write only if ``fence``
    allows it at this very moment (the closest to the send a check can be).

    Reading there hands the connection back to the client's pool before the thread takes
    its next call. Read on the event loop instead, a busy loop kept connections checked
    out while the threads went on and opened new ones, which the full pool then closed
    (urllib3's "Connection pool is full" warning): a TLS handshake per surplus call.
    """
    if fence is not None and not fence():
        raise Fenced
    return rest.json(method, path, timeout=_TIMEOUT, **kwargs)


def _key(meta: Mapping[str, Any]) -> tuple[str, str]:
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def status_reason(body: object) -> str:
    if isinstance(body, bytes | str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return "Unknown"
        if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
            return str(parsed["reason"])
    return "Unknown"
