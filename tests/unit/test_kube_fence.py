"""The fence (decision 0050): a write is refused in the client's thread, just before it
would be sent, once this replica's Leases are not fresh; reads are never fenced."""

from __future__ import annotations

import types
from typing import Any

import pytest
from kubernetes import client

from tokensync import failures, kube


def call_log() -> tuple[list[str], Any]:
    sent: list[str] = []

    def call(what: str, **_: Any) -> types.SimpleNamespace:
        sent.append(what)
        return types.SimpleNamespace(data=b"{}")

    return sent, call


async def test_a_write_is_refused_when_the_fence_is_down_and_a_read_is_not() -> None:
    fresh = [True]
    api = kube.Kube(client.ApiClient(), workers=1, fence=lambda: fresh[0])
    sent, call = call_log()
    try:
        await api._call(call, "write while fresh", write=True)
        fresh[0] = False
        with pytest.raises(failures.ApiError) as caught:
            await api._call(call, "write after the lease", write=True)
        await api._call(call, "read after the lease")
    finally:
        api.close()
    assert caught.value.status == 0
    assert "Fenced" in str(caught.value)
    assert sent == ["write while fresh", "read after the lease"]


async def test_without_leader_election_nothing_is_fenced() -> None:
    api = kube.Kube(client.ApiClient(), workers=1)
    sent, call = call_log()
    try:
        await api._call(call, "write", write=True)
    finally:
        api.close()
    assert sent == ["write"]
