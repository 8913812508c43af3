"""The watches' thread (``listwatch.ListWatch``) against a scripted API: it lists in pages,
then watches from the listing's version, lists again after a 410, and hands the event loop
one summary per event; with a label selector (the Secrets) or without (the
ClientCredentials, decision 0061)."""

from __future__ import annotations

import asyncio
import json
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
