"""HeapFreezer: freeze once the credentials are loaded, again only after they grow."""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys

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


# In a fresh interpreter: 16 MiB of 64-KiB blocks written and freed, all but the last, which
# keeps the heap's top in place; the free pages stay resident until malloc_trim.
_RESIDENT_AFTER_TRIM = """
import ctypes, os
from tokensync import runtime
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
blocks = [libc.malloc(64 << 10) for _ in range(256)]
for block in blocks:
    ctypes.memset(block, 1, 64 << 10)
for block in blocks[:-1]:
    libc.free(block)
before = resident_mib()
trimmed = runtime.malloc_trim()
print(trimmed, round(before - resident_mib(), 1))
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="not glibc")
def test_malloc_trim_gives_free_pages_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _RESIDENT_AFTER_TRIM], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) >= 12  # of the 16 MiB freed


# In a fresh interpreter (the threshold is the process's): a 4 MiB block freed raises glibc's
# threshold to 4 MiB, so a 1 MiB block then comes from the heap, unless the threshold is fixed.
_MAPPED_AFTER_A_LARGER_FREE = """
import ctypes, sys
from tokensync import runtime
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert runtime.fix_mmap_threshold()
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="not glibc 2.33 or later")
@pytest.mark.parametrize(("mode", "mapped"), [("glibc's default", "0"), ("fixed", "1")])
def test_a_fixed_threshold_keeps_mapping_large_blocks(mode: str, mapped: str) -> None:
    """Decision 0056: with the threshold fixed, a 1 MiB block gets a mapping of its own
    (given back when freed) even after a larger block was freed."""
    out = subprocess.run(
        [sys.executable, "-c", _MAPPED_AFTER_A_LARGER_FREE, mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == mapped
