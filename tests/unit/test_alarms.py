"""Alarms ring at their time, once, whatever else is busy (issue 14 section 2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tokensync import alarms

T0 = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alarms, "POLL_INTERVAL", 0.001)


@contextlib.asynccontextmanager
async def ringing(clock_alarms: alarms.Alarms[str], rung: list[str]) -> AsyncIterator[None]:
    async def ring(key: str) -> None:
        rung.append(key)
        if key == "broken":
            raise RuntimeError("a bug in one alarm")

    task = asyncio.create_task(clock_alarms.run(ring))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle() -> None:
    await asyncio.sleep(0.02)


async def test_alarms_ring_once_at_their_time_replaced_and_cancelled_ones_do_not() -> None:
    clock = Clock()
    bell = alarms.Alarms[str](clock=clock)
    rung: list[str] = []
    bell.set("a", at=T0 + 10)
    bell.set("moved", at=T0 + 5)
    bell.set("moved", at=T0 + 20)
    bell.set("cancelled", at=T0 + 1)
    bell.cancel("cancelled")
    bell.set("broken", at=T0 + 2)
    bell.set("same", at=T0 + 3)
    bell.set("same", at=T0 + 3)  # repeated by the watch: still one alarm
    async with ringing(bell, rung):
        await settle()
        assert rung == []
        clock.now = T0 + 10
        await settle()
        assert rung == ["broken", "same", "a"]  # a failing ring does not stop the others
        assert (len(bell), bell.at("moved")) == (1, T0 + 20)
        clock.now = T0 + 30
        await settle()
    assert rung == ["broken", "same", "a", "moved"]
    assert len(bell) == 0
