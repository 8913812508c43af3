"""The fence (decision 0050): a write is refused in the client's thread, just before it
would be sent, once this replica's Leases are not fresh; reads are never fenced."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tokensync import failures, kube


class Recorder:
    """Stands in for :class:`kuberest.Rest`: records what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def json(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        self.sent.append((method, path))
        return {}


def fenced_kube(fence: Any = None) -> tuple[kube.Kube, Recorder]:
    api = kube.Kube(client.ApiClient(), workers=1, fence=fence)
    recorder = Recorder()
    api._rest = recorder  # type: ignore[assignment]
    return api, recorder


async def test_a_write_is_refused_when_the_fence_is_down_and_a_read_is_not() -> None:
    fresh = [True]
    api, recorder = fenced_kube(lambda: fresh[0])
    try:
        await api.patch_secret("ns", "while-fresh", {})
        fresh[0] = False
        with pytest.raises(failures.ApiError) as caught:
            await api.patch_secret("ns", "after-the-lease", {})
        for write in (
            api.create_secret("ns", {}),
            api.patch_status("ns", "c", {}),
            api.patch_workload("ns", "Deployment", "d", {}),
        ):
            with pytest.raises(failures.ApiError):
                await write
        await api.read_secret("ns", "read-after-the-lease")
    finally:
        api.close()
    assert caught.value.status == 0
    assert "Fenced" in str(caught.value)
    assert recorder.sent == [
        ("PATCH", "/api/v1/namespaces/ns/secrets/while-fresh"),
        ("GET", "/api/v1/namespaces/ns/secrets/read-after-the-lease"),
    ]


async def test_without_leader_election_nothing_is_fenced() -> None:
    api, recorder = fenced_kube()
    try:
        await api.patch_secret("ns", "s", {})
    finally:
        api.close()
    assert recorder.sent == [("PATCH", "/api/v1/namespaces/ns/secrets/s")]
