"""Memory probes for the operator under bench/tracemem.py; inert anywhere else.

Python imports ``sitecustomize`` at start from its path, so a process started with this
directory on PYTHONPATH loads it. It acts only when ``TOKENSYNC_BENCH_MEMSTATS`` or
``TOKENSYNC_BENCH_TRACEMALLOC`` names a directory; on SIGUSR1 it runs a full collection and
writes ``<pid>-<n>.stats.json`` (the allocators' own figures, below), more files with
tracing, and, last, ``<pid>-<n>.done``.

- ``TOKENSYNC_BENCH_MEMSTATS``: the allocators' figures only, for an untraced process:
  ``sys.getallocatedblocks()``, pymalloc's arenas and pools (``sys._debugmallocstats()``),
  glibc's ``mallinfo2()`` and ``malloc_info()`` per arena. Kept objects show as allocated
  blocks and bytes in use; fragmentation as arenas, free pools or glibc's free bytes
  (``fordblks``) that RSS still holds; then RSS before and after one ``malloc_trim(0)``.
- ``TOKENSYNC_BENCH_ARENAS`` (with either): also ``<pid>-<n>.arenas.json``, which objects
  live in which of pymalloc's arenas and how full each arena's pools are, read from the
  pool headers at the objects' addresses: the sparse arenas' objects are what keeps them.
- ``TOKENSYNC_BENCH_TRACEMALLOC``: it imports the operator's modules first (kopf and the
  Kubernetes client with them: their import ran for minutes under tracemalloc;
  bench/tracemem.py measures imports apart), starts tracing
  (``TOKENSYNC_BENCH_TRACEMALLOC_FRAMES`` frames each, 6 by default), and also writes
  ``<pid>-<n>.snap`` (the tracemalloc snapshot) and ``<pid>-<n>.json`` (the traced total and
  live objects that the collector tracks, by type: count and shallow bytes).

The operator itself has no such hook (docs/performance.md).
"""

from __future__ import annotations

import os

_DIR = os.environ.get("TOKENSYNC_BENCH_TRACEMALLOC") or os.environ.get("TOKENSYNC_BENCH_MEMSTATS")
_TRACE = bool(os.environ.get("TOKENSYNC_BENCH_TRACEMALLOC"))

if _DIR:
    import bisect
    import collections
    import ctypes
    import gc
    import itertools
    import json
    import pathlib
    import signal
    import sys
    import tempfile
    import tracemalloc
    from types import FrameType
    from xml.etree import ElementTree

    _counter = itertools.count(1)

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",  # bytes not mmapped, in all arenas
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",  # bytes in mmap'd chunks
                "usmblks",
                "fsmblks",
                "uordblks",  # bytes in use
                "fordblks",  # bytes free, still held
                "keepcost",  # releasable at the top of the heap
            )
        ]

    def _mallinfo2() -> dict[str, int]:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
        return {name: int(getattr(info, name)) for name, _ in _Mallinfo2._fields_}

    def _malloc_info(path: pathlib.Path) -> list[dict[str, int]]:
        """glibc's ``malloc_info``, per arena (the main one and one per thread that
        allocated): bytes obtained from the system and bytes free in it."""
        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        stream = libc.fopen(str(path).encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        arenas = []
        tree = ElementTree.parse(path)  # noqa: S314 -- glibc's own output, just written
        for heap in tree.getroot().iter("heap"):
            free = sum(int(t.get("size", "0")) for t in heap.findall("total"))
            system = heap.find("system[@type='current']")
            arenas.append(
                {
                    "nr": int(heap.get("nr", "-1")),
                    "system": int(system.get("size", "0")) if system is not None else 0,
                    "free": free,
                }
            )
        return arenas

    def _pymalloc() -> dict[str, int]:
        """The ``name = value`` lines of ``sys._debugmallocstats()``, which writes to fd 2."""
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+") as out:
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            out.seek(0)
            text = out.read()
        figures: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.rpartition("=")
            words = name.strip(" #").split()
            if not sep or not value.strip().replace(",", "").isdigit() or "free" in words:
                continue  # the free lists' lines: "3 free PyFloatObjects * 24 bytes each"
            if words and words[0].isdigit():  # "32 unused pools * 16384 bytes": in bytes
                words = words[1:]
            figures[" ".join(words)] = int(value.strip().replace(",", ""))
        return figures

    def _rss_kib() -> int:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def _trimmed() -> dict[str, int]:
        """RSS before and after ``malloc_trim(0)``: what of it was glibc's free pages (the
        operator trims every 30 s, runtime.HeapFreezer; this says what one trim finds)."""
        before = _rss_kib()
        ctypes.CDLL(None).malloc_trim(0)
        return {"rss_kib_before_trim": before, "rss_kib_after_trim": _rss_kib()}

    def _types() -> list[tuple[str, int, int]]:
        frozen = gc.get_freeze_count()
        gc.unfreeze()  # frozen objects (runtime.HeapFreezer) are not in gc.get_objects()
        counts: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        for obj in gc.get_objects():
            kind = type(obj)
            name = f"{kind.__module__}.{kind.__qualname__}"
            counts[name] += 1
            sizes[name] += sys.getsizeof(obj)
        if frozen:
            gc.freeze()  # as the operator had it: later collections skip them again
        return [(name, counts[name], sizes[name]) for name, _ in sizes.most_common(80)]

    #: pymalloc (CPython 3.11, 64-bit): 16-KiB pools, blocks up to 512 bytes in 16-byte
    #: steps; a pool's header starts with its count of blocks in use (a uint, in a union with
    #: a pointer), and holds its arena's index at byte 32 and its size class at byte 36.
    _POOL, _SMALL, _STEP = 16384, 512, 16

    def _anonymous() -> list[tuple[int, int]]:
        """This process's anonymous writable mappings, where pymalloc's arenas are."""
        spans = []
        for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) == 5 and fields[1].startswith("rw"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                spans.append((start, end))
        return spans

    def _arenas() -> list[dict[str, object]]:
        """Which objects live in which pymalloc arena, and how full each arena's pools are:
        every object the collector tracks (frozen ones too) and the untracked objects they
        refer to (strings, numbers, tuples), by the pool header of their address. The
        arenas least used are the ones a few long-lived objects keep mapped."""
        spans = sorted(_anonymous())
        starts = [start for start, _ in spans]

        def mapped(address: int) -> bool:
            """The whole pool the address would be in lies in one anonymous mapping."""
            index = bisect.bisect_right(starts, address) - 1
            return index >= 0 and spans[index][0] <= address - address % _POOL < spans[index][1]

        seen: set[int] = set()
        pools: dict[int, tuple[int, int, int]] = {}  # pool: (arena, blocks in use, size)
        kinds: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)

        def place(obj: object) -> None:
            kind = type(obj)
            # The object's own block, the collector's header included: getsizeof's, except
            # for the containers whose table is a block apart.
            own = (
                kind.__basicsize__ + 16
                if isinstance(obj, dict | list | set | frozenset)
                else sys.getsizeof(obj)
            )
            address = id(obj)
            if own > _SMALL or not mapped(address):
                return
            pool = address - address % _POOL
            count = ctypes.c_uint.from_address(pool).value
            arena = ctypes.c_uint.from_address(pool + 32).value
            block = (ctypes.c_uint.from_address(pool + 36).value + 1) * _STEP
            if not (own <= block <= _SMALL and 0 < count <= _POOL // block):
                return  # not a pymalloc block after all
            pools[pool] = (arena, count, block)
            kinds[arena][kind.__qualname__] += 1

        frozen = gc.get_freeze_count()
        gc.unfreeze()
        try:
            tracked = gc.get_objects()
            # The probe's own objects are not the operator's.
            seen.update(map(id, (seen, pools, kinds, tracked)))
            for obj in tracked:
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                place(obj)
                # Untracked referents (strings, numbers, tuples and dicts of atoms) and, in
                # turn, theirs.
                pending = [r for r in gc.get_referents(obj) if not gc.is_tracked(r)]
                while pending:
                    referent = pending.pop()
                    if id(referent) in seen:
                        continue
                    seen.add(id(referent))
                    place(referent)
                    pending.extend(gc.get_referents(referent))
        finally:
            del tracked
            if frozen:
                gc.freeze()
        used: collections.Counter[int] = collections.Counter()
        held: collections.Counter[int] = collections.Counter()
        for arena, count, block in pools.values():
            used[arena] += count * block
            held[arena] += 1
        return sorted(
            (
                {
                    "arena": arena,
                    "pools_seen": held[arena],
                    "used_kib": round(used[arena] / 1024),
                    "objects_seen": sum(kinds[arena].values()),
                    "types": kinds[arena].most_common(8),
                }
                for arena in used
            ),
            key=lambda entry: entry["used_kib"],  # type: ignore[arg-type,return-value]
        )

    def _dump(signum: int, frame: FrameType | None) -> None:
        """Never raises into the operator; ``.done`` is written whatever happens."""
        stem = pathlib.Path(str(_DIR)) / f"{os.getpid()}-{next(_counter)}"
        try:
            _write(stem)
        except Exception as exc:  # a probe's failure is reported, not raised
            stem.with_suffix(".error").write_text(repr(exc))
        finally:
            stem.with_suffix(".done").write_text("")

    def _write(stem: pathlib.Path) -> None:
        gc.collect()
        stats: dict[str, object] = {
            "allocated_blocks": sys.getallocatedblocks(),
            "gc_frozen": gc.get_freeze_count(),
            "mallinfo2": _mallinfo2(),
            "pymalloc": _pymalloc(),  # empty under tracemalloc: it wraps the allocator
            "malloc_arenas": _malloc_info(stem.with_suffix(".malloc.xml")),
        }
        if _TRACE:
            snapshot = tracemalloc.take_snapshot()
            traced, peak = tracemalloc.get_traced_memory()
            stats |= {"traced": traced, "traced_peak": peak}
            snapshot.dump(str(stem.with_suffix(".snap")))
            stem.with_suffix(".json").write_text(
                json.dumps({"traced": traced, "traced_peak": peak, "types": _types()})
            )
        if os.environ.get("TOKENSYNC_BENCH_ARENAS"):
            stem.with_suffix(".arenas.json").write_text(json.dumps(_arenas()))
        stats |= _trimmed()  # last: the figures above are the process as it ran
        stem.with_suffix(".stats.json").write_text(json.dumps(stats))

    if _TRACE:
        import kubernetes.client

        import tokensync.cli
        import tokensync.handlers
        import tokensync.runtime  # noqa: F401

        # kubernetes.client imports each API module at its first use (CoreV1Api alone is
        # about 21 MiB): those the operator uses, now.
        for api in ("CoreV1Api", "CustomObjectsApi", "AppsV1Api", "CoordinationV1Api"):
            getattr(kubernetes.client, api)

        tracemalloc.start(int(os.environ.get("TOKENSYNC_BENCH_TRACEMALLOC_FRAMES", "6")))
    signal.signal(signal.SIGUSR1, _dump)
