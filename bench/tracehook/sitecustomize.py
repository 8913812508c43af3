"""tracemalloc for the operator under bench/tracemem.py; inert anywhere else.

Python imports ``sitecustomize`` at start from its path, so a process started with this
directory on PYTHONPATH loads it. It acts only when ``TOKENSYNC_BENCH_TRACEMALLOC`` names a
directory: it then imports the operator's modules (kopf and the Kubernetes client with
them: their import ran for minutes under tracemalloc; bench/tracemem.py measures imports
apart), starts tracing (``TOKENSYNC_BENCH_TRACEMALLOC_FRAMES`` frames each, 6 by default)
and, on SIGUSR1, runs a full collection and writes ``<pid>-<n>.snap`` (the tracemalloc snapshot), ``<pid>-<n>.json``
(live objects that the collector tracks, by type: count and shallow bytes) and, last,
``<pid>-<n>.done``. The operator itself has no such hook (docs/performance.md).
"""

from __future__ import annotations

import os

_DIR = os.environ.get("TOKENSYNC_BENCH_TRACEMALLOC")

if _DIR:
    import collections
    import gc
    import itertools
    import json
    import pathlib
    import signal
    import sys
    import tracemalloc
    from types import FrameType

    _counter = itertools.count(1)

    def _types() -> list[tuple[str, int, int]]:
        gc.unfreeze()  # frozen objects (runtime.HeapFreezer) are not in gc.get_objects()
        counts: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        for obj in gc.get_objects():
            kind = type(obj)
            name = f"{kind.__module__}.{kind.__qualname__}"
            counts[name] += 1
            sizes[name] += sys.getsizeof(obj)
        return [(name, counts[name], sizes[name]) for name, _ in sizes.most_common(80)]

    def _dump(signum: int, frame: FrameType | None) -> None:
        stem = pathlib.Path(str(_DIR)) / f"{os.getpid()}-{next(_counter)}"
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        traced, peak = tracemalloc.get_traced_memory()
        snapshot.dump(str(stem.with_suffix(".snap")))
        stem.with_suffix(".json").write_text(
            json.dumps({"traced": traced, "traced_peak": peak, "types": _types()})
        )
        stem.with_suffix(".done").write_text("")

    import kubernetes.client

    import tokensync.cli
    import tokensync.handlers
    import tokensync.runtime  # noqa: F401

    # kubernetes.client imports each API module at its first use (CoreV1Api alone is about
    # 21 MiB): those the operator uses, now.
    for api in ("CoreV1Api", "CustomObjectsApi", "AppsV1Api", "CoordinationV1Api"):
        getattr(kubernetes.client, api)

    tracemalloc.start(int(os.environ.get("TOKENSYNC_BENCH_TRACEMALLOC_FRAMES", "6")))
    signal.signal(signal.SIGUSR1, _dump)
