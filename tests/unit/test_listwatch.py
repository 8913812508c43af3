"""The watches' thread (``listwatch.ListWatch``) against a scripted API: it lists in pages,
then watches from the listing's version, lists again after a 410, and hands the event loop
one summary per event, a listing's page in one call (decision 0067); with a label selector
(the Secrets) or without (the ClientCredentials, decision 0061)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tokensync import kuberest, listwatch, model, target


class Response:
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.data = b""
        self._lines = lines
        self.released = False

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        for line in self._lines:
            yield json.dumps(line).encode() + b"\n"

    def read(self) -> bytes:
        return self.data

    @property
    def response(self) -> Response:  # the client's RESTResponse wraps urllib3's: one here
        return self

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        pass


class ScriptedRest:
    """Listings and watches answered from a script; the last watch blocks until stopped."""

    def __init__(self, script: list[Any], stop: Any, path: str) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.stop = stop
        self.path = path

    def send(self, method: str, path: str, *, query: Any, timeout: Any) -> Any:
        assert (method, path) == ("GET", self.path)
        self.calls.append(dict(query))
        if not self.script:
            self.stop()
            time.sleep(0.01)
            return Response([])
        answer = self.script.pop(0)
        if isinstance(answer, dict):  # a page of a listing
            response = Response([])
            response.data = json.dumps(answer).encode()
            return response
        return Response(answer)  # watch events


def page(*items: dict[str, Any], version: str, more: str | None = None) -> dict[str, Any]:
    return {"items": list(items), "metadata": {"resourceVersion": version, "continue": more}}


@pytest.mark.parametrize(
    ("path", "selector"),
    [
        (kuberest.path("v1", "secrets"), target.MANAGED_SELECTOR),
        (kuberest.path(f"{model.GROUP}/{model.VERSION}", model.PLURAL, namespace="ns"), None),
    ],
    ids=["target Secrets, by label", "ClientCredentials, all of them"],
)
async def test_lists_then_watches_and_lists_again_after_410(
    path: str, selector: str | None
) -> None:
    delivered: list[tuple[str, str]] = []
    done = asyncio.Event()
    watch: listwatch.ListWatch[tuple[str, str]] = listwatch.ListWatch(
        None,  # type: ignore[arg-type]
        path=path,
        namespace=None,
        label_selector=selector,
        what="things",
        summarize=lambda kind, obj: (kind, obj["metadata"]["name"]),
        deliver=delivered.append,
        on_listed=lambda: delivered.append(("first listing", "delivered")),
    )
    loop = asyncio.get_running_loop()
    script: list[Any] = [
        page({"metadata": {"name": "a"}}, version="1", more="next"),
        page({"metadata": {"name": "b"}}, version="2"),
        [
            {"type": "ADDED", "object": {"metadata": {"name": "c", "resourceVersion": "3"}}},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "4"}}},
        ],
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410}}],
        page({"metadata": {"name": "a"}}, version="9"),
    ]
    rest = ScriptedRest(script, stop=lambda: loop.call_soon_threadsafe(done.set), path=path)
    watch._rest = rest  # type: ignore[assignment]
    watch.start(loop)
    try:
        await asyncio.wait_for(done.wait(), timeout=5)
        await asyncio.sleep(0.05)
    finally:
        watch.stop()
    # The first listing's end is told once, after its items (decision 0052).
    assert delivered == [
        ("LISTED", "a"),
        ("LISTED", "b"),
        ("first listing", "delivered"),
        ("ADDED", "c"),
        ("LISTED", "a"),
    ]
    assert watch.listings == 2
    assert {call.get("labelSelector") for call in rest.calls} == {selector}
    assert [call.get("continue") for call in rest.calls][:2] == [None, "next"]
    watches = [call for call in rest.calls if call.get("watch")]
    assert [w["resourceVersion"] for w in watches][:3] == ["2", "4", "9"]
    assert all(w["allowWatchBookmarks"] for w in watches)


async def test_a_listing_page_reaches_the_loop_in_one_call() -> None:
    """Decision 0067: one call per page, not per item (each call wakes the event loop and
    hands the GIL over); watch events still go one by one, in order after the page."""
    path = kuberest.path("v1", "secrets")
    delivered: list[str] = []
    done = asyncio.Event()
    watch: listwatch.ListWatch[str] = listwatch.ListWatch(
        None,  # type: ignore[arg-type]
        path=path,
        namespace=None,
        what="things",
        # One item of the page is not handed over at all (summarized to None).
        summarize=lambda kind, obj: (
            None if obj["metadata"]["name"] == "skip" else f"{kind} " + obj["metadata"]["name"]
        ),
        deliver=delivered.append,
        room=2,  # smaller than the page: a page still goes whole
    )
    loop = asyncio.get_running_loop()
    calls: list[Any] = []
    real = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any) -> Any:
        if callback == watch._on_loop:
            calls.append(args)
        return real(callback, *args)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    names = ["a", "b", "skip", "c"]
    script: list[Any] = [
        page(*({"metadata": {"name": name}} for name in names), version="1"),
        [
            {"type": "ADDED", "object": {"metadata": {"name": "d", "resourceVersion": "2"}}},
            {"type": "MODIFIED", "object": {"metadata": {"name": "d", "resourceVersion": "3"}}},
        ],
    ]
    rest = ScriptedRest(script, stop=lambda: real(done.set), path=path)
    watch._rest = rest  # type: ignore[assignment]
    try:
        watch.start(loop)
        await asyncio.wait_for(done.wait(), timeout=5)
        await asyncio.sleep(0.05)
    finally:
        watch.stop()
        del loop.call_soon_threadsafe
    assert delivered == ["LISTED a", "LISTED b", "LISTED c", "ADDED d", "MODIFIED d"]
    assert calls == [(["LISTED a", "LISTED b", "LISTED c"],), (["ADDED d"],), (["MODIFIED d"],)]
    assert watch._room._waiting == 0  # every place given back


def test_the_room_holds_a_thread_until_the_loop_gives_places_back() -> None:
    room = listwatch._Room(3)
    stopping = threading.Event()
    room.take(2, stopping)
    taken = threading.Event()

    def take_two() -> None:
        room.take(2, stopping)  # 2 + 2 > 3: waits
        taken.set()

    thread = threading.Thread(target=take_two)
    thread.start()
    assert not taken.wait(0.1)
    room.give(2)
    assert taken.wait(5)
    thread.join()
    room.give(2)
    room.take(10, stopping)  # more than the whole room: goes when nothing waits
    stopping.set()  # full, and the watch is stopping: the thread gives up its wait
    with pytest.raises(listwatch._Stopped):
        room.take(1, stopping)
