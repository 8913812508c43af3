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
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from kubernetes import client
from kubernetes.watch import watch as k8s_watch

from tokensync import config, failures, model

T = TypeVar("T")
logger = logging.getLogger(__name__)
_MERGE_PATCH = "application/merge-patch+json"
_LIST_PAGE = 500
_METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"}


class Kube:
    def __init__(
        self, api: client.ApiClient, *, workers: int = config.DEFAULTS.kube_workers
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kube"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        kwargs.setdefault("_request_timeout", 30)
        call = functools.partial(_read, fn, *args, _preload_content=False, **kwargs)
        try:
            return await loop.run_in_executor(self._pool, call)
        except client.ApiException as exc:
            # The body of an error response may echo what we sent (a Secret): keep only
            # the machine-readable reason.
            raise failures.ApiError(exc.status or 0, _status_reason(exc.body)) from None
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
            self._core.create_namespaced_secret, namespace, body
        )
        return created

    async def patch_secret(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        patched: dict[str, Any] = await self._call(
            self._core.patch_namespaced_secret, name, namespace, body, _content_type=_MERGE_PATCH
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
        await self._call(self._core.create_namespaced_event, involved["namespace"], body)


class _Stopped(Exception):
    pass


class _Gone(Exception):
    """The watch cannot resume from its resourceVersion (410): list again."""


class SecretWatch(Generic[T]):
    """List, then watch, the Secrets a label selects, in a thread of its own; each event
    summarized there and handed to the event loop.

    kopf watches each resource once, with one server-side label selector per resource (the
    client Secrets' opt-in label), so the target Secrets, which carry another label, are
    watched here (decision 0035). The thread parses each event and ``summarize`` reduces it
    (the data stays in the thread); ``deliver`` runs on the event loop with the summary, at
    most ``room`` of them waiting at a time. A watch that cannot resume (410 Gone) lists
    again; errors are retried with backoff. The thread holds its own API client: a watch
    held open must not take a connection from the pool of :class:`Kube`.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str | None,
        label_selector: str,
        summarize: Callable[[str, dict[str, Any]], T | None],
        deliver: Callable[[T], None],
        page: int = 100,
        room: int = 256,
        server_timeout: int = 300,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._selector = label_selector
        self._summarize = summarize
        self._deliver = deliver
        self._page = page
        self._room = threading.BoundedSemaphore(room)
        self._server_timeout = server_timeout
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: Full listings made (the first, and one after each 410); for tests and the log.
        self.listings = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        where = self._namespace or "all namespaces"
        self._thread = threading.Thread(
            target=self._run, name=f"watch-secrets-{where}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop handing events over; the thread ends at its next event or timeout (it is a
        daemon: it never holds the process up)."""
        self._stopping.set()

    def _run(self) -> None:
        version: str | None = None
        failures_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                failures_in_a_row = 0
            except _Stopped:
                return
            except _Gone:
                version = None
            except client.ApiException as exc:
                if exc.status != 410:
                    failures_in_a_row = self._failed(exc, failures_in_a_row)
                version = None  # 410: too old to resume from; else list afresh after an error
            except Exception as exc:  # noqa: BLE001 -- dropped connections, timeouts, ...
                failures_in_a_row = self._failed(exc, failures_in_a_row)

    def _failed(self, exc: Exception, failures_in_a_row: int) -> int:
        """Log a failed listing or watch and wait before the next; returns the new count."""
        failures_in_a_row += 1
        delay = min(30.0, 2.0 ** min(failures_in_a_row, 5))
        # Only the error's kind: an API error's body may echo a Secret.
        logger.warning(
            "watch of target Secrets failed (%s), retried in %.0f s", _describe(exc), delay
        )
        self._stopping.wait(delay)
        return failures_in_a_row

    def _call(self, **kwargs: Any) -> Any:
        kwargs["label_selector"] = self._selector
        kwargs["_preload_content"] = False
        if self._namespace is None:
            return self._core.list_secret_for_all_namespaces(**kwargs)
        return self._core.list_namespaced_secret(self._namespace, **kwargs)

    def _list(self) -> str:
        """Every selected Secret, in pages; returns the listing's resourceVersion."""
        token: str | None = None
        count = 0
        while True:
            page = json.loads(
                self._call(limit=self._page, _continue=token, _request_timeout=60).data or b"{}"
            )
            for item in page.get("items") or []:
                self._hand("LISTED", item)
                count += 1
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self.listings += 1
                logger.info("listed %d target Secrets", count)
                return str(meta.get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        """Follow changes from ``version`` until the server ends the watch; returns the
        version to resume from. Raises _Gone when it must list again."""
        response = self._call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._server_timeout,
            _request_timeout=(10, self._server_timeout + 30),
        )
        try:
            lines = k8s_watch.iter_resp_lines(response)  # type: ignore[no-untyped-call]
            for kind, obj in _events(lines):
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise failures.ApiError(int(obj.get("code") or 0), str(obj.get("reason")))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind != "BOOKMARK":
                    self._hand(kind, obj)
        finally:
            response.close()  # as kubernetes.watch does: never pool a half-read connection
            response.release_conn()
        return version

    def _hand(self, kind: str, obj: dict[str, Any]) -> None:
        item = self._summarize(kind, obj)
        if item is None:
            return
        while not self._room.acquire(timeout=1.0):
            if self._stopping.is_set():
                raise _Stopped
        if self._stopping.is_set() or self._loop is None:
            self._room.release()
            raise _Stopped
        try:
            self._loop.call_soon_threadsafe(self._on_loop, item)
        except RuntimeError:  # the loop is closed: the operator is stopping
            self._room.release()
            raise _Stopped from None

    def _on_loop(self, item: T) -> None:
        try:
            if not self._stopping.is_set():
                self._deliver(item)
        except Exception:
            logger.exception("a target Secret event was not handled")
        finally:
            self._room.release()


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, object) of each watch event line; blank lines skipped."""
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        obj = event.get("object")
        yield str(event.get("type") or ""), obj if isinstance(obj, dict) else {}


def _describe(exc: Exception) -> str:
    if isinstance(exc, client.ApiException):
        return f"HTTP {exc.status} {_status_reason(exc.body)}"
    if isinstance(exc, failures.ApiError):
        return str(exc)
    return type(exc).__name__


def _read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Make the call and read its body, in the pool's thread.

    Reading there hands the connection back to the client's pool before the thread takes
    its next call. Read on the event loop instead, a busy loop kept connections checked
    out while the threads went on and opened new ones, which the full pool then closed
    (urllib3's "Connection pool is full" warning): a TLS handshake per surplus call.
    """
    data = fn(*args, **kwargs).data
    return json.loads(data) if data else {}


def _status_reason(body: object) -> str:
    if isinstance(body, bytes | str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return "Unknown"
        if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
            return str(parsed["reason"])
    return "Unknown"
