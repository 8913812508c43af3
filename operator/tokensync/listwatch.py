"""The operator's watches: list, then watch, in a thread; each event summarized there.

Every collection the operator follows is watched here, none through kopf: the
ClientCredentials (decision 0061), the Secrets tokensync writes (decision 0035) and the
opted-in client Secrets (decision 0059). The thread parses each event and keeps only what
the operator reads, and the event loop gets a small summary per event, never more than a
few hundred at a time, instead of a kopf worker per object. A listing's page is handed
over in one call (decision 0067). Split from ``kube`` so that
module stays the request/response calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kubernetes import client
from kubernetes.watch import watch as k8s_watch

from tokensync import failures, kube, kuberest

T = TypeVar("T")
logger = logging.getLogger(__name__)


class _Stopped(Exception):
    pass


class _Gone(Exception):
    """The watch cannot resume from its resourceVersion (410): list again."""


class ListWatch(Generic[T]):
    """List, then watch, a collection (``path``, from ``kuberest.path``), or the part of
    it a label selects, in a thread of its own; each event summarized there and handed to
    the event loop.

    ``what`` names them in the log (``target Secrets``). The thread parses each event and
    ``summarize`` reduces it (the rest of the body stays in the thread); ``deliver`` runs on
    the event loop with the summary, at most ``room`` of them waiting at a time (a page of a
    listing may be more at once). A page's summaries go to the loop in one call: one per
    item woke the loop and handed the GIL over thousands of times a second during a start's
    listings (decision 0067). A watch
    that cannot resume (410 Gone) lists again; errors are retried with backoff. The thread
    holds its own API client: a watch held open must not take a connection from the pool
    of :class:`Kube`.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        path: str,
        namespace: str | None,
        label_selector: str | None = None,
        what: str,
        summarize: Callable[[str, dict[str, Any]], T | None],
        deliver: Callable[[T], None],
        on_listed: Callable[[], None] | None = None,
        page: int = 100,
        room: int = 256,
        server_timeout: int = 300,
    ) -> None:
        self._rest = kuberest.Rest(api)
        self._path = path
        self._namespace = namespace
        self._selector = label_selector
        self._what = what
        self._summarize = summarize
        self._deliver = deliver
        #: Called on the event loop once, after the first listing's events were delivered.
        self._on_listed = on_listed
        self._page = page
        self._room = _Room(room)
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
            target=self._run, name=f"watch {self._what} in {where}", daemon=True
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
            "watch of %s failed (%s), retried in %.0f s", self._what, _describe(exc), delay
        )
        self._stopping.wait(delay)
        return failures_in_a_row

    def _call(self, query: list[tuple[str, str | int | bool]], timeout: kuberest.Timeout) -> Any:
        """A listing or a watch of the collection; the response unread."""
        if self._selector:
            query.append(("labelSelector", self._selector))
        return self._rest.send("GET", self._path, query=query, timeout=timeout)

    def _list(self) -> str:
        """Every selected object, in pages; returns the listing's resourceVersion."""
        token: str | None = None
        count = 0
        while True:
            query: list[tuple[str, str | int | bool]] = [("limit", self._page)]
            if token:
                query.append(("continue", token))
            page = json.loads(self._call(query, timeout=60).read() or b"{}")
            items = page.get("items") or []
            self._hand_over([self._summarize("LISTED", item) for item in items])
            count += len(items)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self.listings += 1
                logger.info("listed %d %s", count, self._what)
                if self.listings == 1 and self._on_listed is not None and self._loop:
                    # After the items' own call_soon_threadsafe: the loop runs them in order.
                    with contextlib.suppress(RuntimeError):  # the loop closed: stopping
                        self._loop.call_soon_threadsafe(self._on_listed)
                return str(meta.get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        """Follow changes from ``version`` until the server ends the watch; returns the
        version to resume from. Raises _Gone when it must list again."""
        response = self._call(
            [
                ("watch", True),
                ("resourceVersion", version),
                ("allowWatchBookmarks", True),
                ("timeoutSeconds", self._server_timeout),
            ],
            timeout=(10, self._server_timeout + 30),
        ).response
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
        self._hand_over([self._summarize(kind, obj)])

    def _hand_over(self, summaries: list[T | None]) -> None:
        """Hand the event loop these summaries (None: nothing to hand) in one call, once
        there is room for them."""
        items = [item for item in summaries if item is not None]
        if not items:
            return
        self._room.take(len(items), self._stopping)
        if self._stopping.is_set() or self._loop is None:
            self._room.give(len(items))
            raise _Stopped
        try:
            self._loop.call_soon_threadsafe(self._on_loop, items)
        except RuntimeError:  # the loop is closed: the operator is stopping
            self._room.give(len(items))
            raise _Stopped from None

    def _on_loop(self, items: list[T]) -> None:
        try:
            for item in items:
                if self._stopping.is_set():
                    return
                try:
                    self._deliver(item)
                except Exception:
                    logger.exception("an event of %s was not handled", self._what)
        finally:
            self._room.give(len(items))


class _Room:
    """How many summaries may wait for the event loop: the thread takes places before it
    hands some over, the loop gives them back once delivered. A batch larger than the
    whole room goes when nothing else waits."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._waiting = 0
        self._changed = threading.Condition()

    def take(self, n: int, stopping: threading.Event) -> None:
        with self._changed:
            while self._waiting and self._waiting + n > self._size:
                if stopping.is_set():
                    raise _Stopped
                self._changed.wait(timeout=1.0)
            self._waiting += n

    def give(self, n: int) -> None:
        with self._changed:
            self._waiting -= n
            self._changed.notify()


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
        return f"HTTP {exc.status} {kube.status_reason(exc.body)}"
    if isinstance(exc, failures.ApiError):
        return str(exc)
    return type(exc).__name__
