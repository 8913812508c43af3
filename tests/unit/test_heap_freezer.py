"""HeapFreezer: freeze once the credentials are loaded, again only after they grow."""

from __future__ import annotations

import gc

import pytest

from tokensync import runtime


def test_freezes_when_settled_and_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    count = [0]
    freezer = runtime.HeapFreezer(lambda: count[0], trim=lambda: calls.append("trim") or True)
    assert not freezer.check()  # nothing loaded
    count[0] = 1000
    assert not freezer.check()  # still changing
    assert calls == ["trim", "trim"]  # free pages go back at every check
    calls.clear()
    assert freezer.check()  # settled: collect, freeze, then free pages back to the system
    assert calls == ["collect", "freeze", "trim"]
    calls.clear()
    assert not freezer.check()  # settled, not grown
    count[0] = 1200
    assert not freezer.check()
    assert not freezer.check()  # grown by less than a quarter
    count[0] = 1300
    assert not freezer.check()
    assert calls == ["trim"] * 4
    calls.clear()
    assert freezer.check()
    assert calls == ["collect", "freeze", "trim"]


def test_malloc_trim_is_harmless() -> None:
    # glibc here (True); where the C library has no malloc_trim it does nothing (False).
    assert runtime.malloc_trim() in (True, False)


def test_fix_mmap_threshold_is_harmless() -> None:
    # glibc here (True); where the C library has no mallopt it does nothing (False).
    assert runtime.fix_mmap_threshold() in (True, False)
