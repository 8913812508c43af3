"""Kubernetes API calls, off the event loop.

The official ``kubernetes`` client is synchronous; every call here runs in one bounded
thread pool so the asyncio loop never blocks and the API server sees at most ``workers``
requests at once. Responses are read as raw JSON (``_preload_content=False``): building
the client's model objects costs more CPU and memory than the operator needs.
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

from tokensync import config, failures, model

T = TypeVar("T")
logger = logging.getLogger(__name__)
_MERGE_PATCH = "application/merge-patch+json"
#: Target Secrets: ownerReferences merge by uid, so other owners' references stay and ours
#: can be removed alone (decision 0041); maps and null values work as in a merge patch.
_STRATEGIC_PATCH = "application/strategic-merge-patch+json"
_LIST_PAGE = 500
#: The kubernetes client's name of each kind spec.rolloutRestart may name.
_WORKLOAD_RESOURCES = {
    "Deployment": "deployment",
    "StatefulSet": "stateful_set",
    "DaemonSet": "daemon_set",
}
_METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"}


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
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._apps = client.AppsV1Api(api)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kube"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(
        self, fn: Callable[..., Any], *args: Any, write: bool = False, **kwargs: Any
    ) -> Any:
        loop = asyncio.get_running_loop()
        kwargs.setdefault("_request_timeout", 30)
        fence = self._fence if write else None
        call = functools.partial(_read, fn, *args, fence=fence, _preload_content=False, **kwargs)
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

    async def list_credentials(self, namespace: str | None) -> set[tuple[str, str]]:
        """Every ClientCredential (in ``namespace``, or the cluster's), as (namespace, name).

        A consistent read from etcd, in pages of metadata only (PartialObjectMetadataList):
        a tenant's specs and annotations can be large, and only the names are needed.
        """
        found: set[tuple[str, str]] = set()
        token = None
        while True:
            page: dict[str, Any]
            if namespace is None:
                page = await self._call(
                    self._custom.list_cluster_custom_object,
                    model.GROUP,
                    model.VERSION,
                    model.PLURAL,
                    limit=_LIST_PAGE,
                    _continue=token,
                    _headers=_METADATA_ONLY,
                )
            else:
                page = await self._call(
                    self._custom.list_namespaced_custom_object,
                    model.GROUP,
                    model.VERSION,
                    namespace,
                    model.PLURAL,
                    limit=_LIST_PAGE,
                    _continue=token,
                    _headers=_METADATA_ONLY,
                )
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                found.add((str(meta.get("namespace") or ""), str(meta.get("name") or "")))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return found

    async def list_secret_versions(
        self, namespace: str | None, label_selector: str
    ) -> dict[tuple[str, str], str]:
        """The resourceVersion of every Secret with the label (in ``namespace``, or the
        cluster's): a consistent read, in pages of metadata only."""
        found: dict[tuple[str, str], str] = {}
        token = None
        while True:
            page: dict[str, Any]
            if namespace is None:
                page = await self._call(
                    self._core.list_secret_for_all_namespaces,
                    label_selector=label_selector,
                    limit=_LIST_PAGE,
                    _continue=token,
                    _headers=_METADATA_ONLY,
                )
            else:
                page = await self._call(
                    self._core.list_namespaced_secret,
                    namespace,
                    label_selector=label_selector,
                    limit=_LIST_PAGE,
                    _continue=token,
                    _headers=_METADATA_ONLY,
                )
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
                found[key] = str(meta.get("resourceVersion") or "")
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return found

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            secret: dict[str, Any] = await self._call(
                self._core.read_namespaced_secret, name, namespace
            )
        except failures.ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return secret

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            config_map: dict[str, Any] = await self._call(
                self._core.read_namespaced_config_map, name, namespace
            )
        except failures.ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return config_map

    async def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            account: dict[str, Any] = await self._call(
                self._core.read_namespaced_service_account, name, namespace
            )
        except failures.ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return account

    async def create_token(
        self, namespace: str, service_account: str, *, audience: str, seconds: int
    ) -> str:
        """A ServiceAccount token for ``audience`` from the TokenRequest API."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": seconds},
        }
        created: dict[str, Any] = await self._call(
            self._core.create_namespaced_service_account_token, service_account, namespace, body
        )
        token = (created.get("status") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise failures.ApiError(0, "TokenRequestEmpty")
        return token

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._call(
            self._core.create_namespaced_secret, namespace, body, write=True
        )
        return created

    async def patch_secret(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        patched: dict[str, Any] = await self._call(
            self._core.patch_namespaced_secret,
            name,
            namespace,
            body,
            write=True,
            _content_type=_STRATEGIC_PATCH,
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
            self._custom.patch_namespaced_custom_object_status,
            model.GROUP,
            model.VERSION,
            namespace,
            model.PLURAL,
            name,
            body,
            write=True,
            _content_type=_MERGE_PATCH,
        )
        return patched

    async def read_credential(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call(
                self._custom.get_namespaced_custom_object,
                model.GROUP,
                model.VERSION,
                namespace,
                model.PLURAL,
                name,
            )
        except failures.ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def _workload_calls(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(read, patch) of an apps/v1 workload kind (model.ROLLOUT_KINDS)."""
        resource = _WORKLOAD_RESOURCES[kind]
        return (
            getattr(self._apps, f"read_namespaced_{resource}"),
            getattr(self._apps, f"patch_namespaced_{resource}"),
        )

    async def read_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """A Deployment, StatefulSet or DaemonSet (spec.rolloutRestart); None if absent."""
        read, _ = self._workload_calls(kind)
        try:
            found: dict[str, Any] = await self._call(read, name, namespace)
        except failures.ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def patch_workload(
        self, namespace: str, kind: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A merge patch of a workload; 409 if it names a resourceVersion no longer current."""
        _, patch = self._workload_calls(kind)
        patched: dict[str, Any] = await self._call(
            patch, name, namespace, body, write=True, _content_type=_MERGE_PATCH
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
            self._core.create_namespaced_event, involved["namespace"], body, write=True
        )


def _read(
    fn: Callable[..., Any], *args: Any, fence: Callable[[], bool] | None, **kwargs: Any
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
    data = fn(*args, **kwargs).data
    return json.loads(data) if data else {}


def status_reason(body: object) -> str:
    if isinstance(body, bytes | str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return "Unknown"
        if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
            return str(parsed["reason"])
    return "Unknown"
