"""Where the operator's memory goes with N credentials (issue 19): RSS, and tracemalloc.

For each N of ``--counts`` (3,000 and 10,000 by default), and each revision of
``--revision`` (default: this tree), on one local control plane and one token endpoint:

1. N client Secrets and N ClientCredentials are created in a namespace of their own
   (``mem-<rev>-<N>``, bench/scale.py's objects), before the operator starts;
2. cold start: the operator (``--namespace``, so that it sees those N only) runs until
   every credential is Ready; RSS 15 s later, and the peak (VmHWM); again 75 s after the
   start (``_late``: after runtime.HeapFreezer's first freeze, at 60 s);
3. restart with valid tokens: a new process, until all N are scheduled
   (``tokensync_refresh_queue_size``); RSS 15 s later, and the peak; again 75 s after the
   start;
4. with ``--trace``: the same restart once more, under tracemalloc (bench/tracehook: a
   ``sitecustomize`` that only this harness puts on the operator's PYTHONPATH; tracing
   starts after the imports), and a snapshot 15 s after all are scheduled (after a full
   collection).

``--operator-env NAME=VALUE`` sets a variable in every operator process (an allocator
setting, for example). ``--arenas`` adds, to the allocators' figures, the map of live
objects to pymalloc's arenas (bench/tracehook): how many arenas are sparse and the types of
the objects in them. With ``--allocators``, the cold start's and the restart's processes also load bench/tracehook
(untraced) and write the allocators' figures 75 s after their start, after the RSS there:
the two heaps compared, for what a restart leaves that a cold start does not.

5. with ``--steady SECONDS``: after the restart, in the same process and with the same N,
   the steady state of bench/scale.py: the endpoint's lifetime set so that about
   ``--refresh-rate`` refreshes happen a second, one refresh of each forced at that rate to
   spread the cycles, then RSS and VmHWM at its start, end and six points between, and the
   allocators' figures (bench/tracehook with ``TOKENSYNC_BENCH_MEMSTATS``: allocated blocks,
   pymalloc's arenas, glibc's ``mallinfo2``) at its start and end. Then every token is made
   long-lived again (at 100/s) before the traced restart, which, with ``--trace``, gets the
   same steady phase, snapshotted before and after: the report then compares the two, in
   bytes per credential per refresh cycle.

RSS figures come from the untraced processes only: tracemalloc adds its own memory per
allocation and slows the operator down several times. ``--report A.snap B.snap`` prints the
comparison of two snapshots: the largest allocation sites grouped by file, by line, and by
the innermost frame in tokensync's own code, with bytes per credential from the difference
(``--counts`` gives the two N). Figures go to stdout and bench/out/<time>-tracemem.json;
snapshots stay in the run's temporary directory (printed).

    python bench/tracemem.py --trace                          # this tree, 3,000 and 10,000
    python bench/tracemem.py --counts 3000 --revision main --revision HEAD
    python bench/tracemem.py --counts 3000 --trace --steady 600  # same N, growth by refreshes
    python bench/tracemem.py --report A.snap B.snap --counts 3000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import pathlib
import signal
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from kubernetes import config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import abtest
import scale
from tokenendpoint import FastTokenEndpoint

from localcluster import LocalCluster
from support.operatorproc import OperatorProcess, apply_files, install_operator_identity

HOOK = pathlib.Path(__file__).resolve().parent / "tracehook"
SETTLE = 15.0
#: A second reading this long after a start: runtime.HeapFreezer has frozen the heap (and
#: trimmed the C allocator) by then, at its second check, 60 s after the start.
LATE = 75.0
STDLIB = sysconfig.get_paths()["stdlib"]


def short(filename: str) -> str:
    """A file name without the interpreter's, the venv's or the tree's prefix."""
    for marker in ("site-packages/", "/operator/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    if filename.startswith(STDLIB):
        return "stdlib:" + filename[len(STDLIB) + 1 :]
    return filename


def pause_while(path: pathlib.Path | None) -> None:
    """On a shared machine: wait while another benchmark's marker file exists."""
    while path is not None and path.exists():
        time.sleep(20)


def rss(pid: int) -> dict[str, float]:
    _, now, peak = scale.Sampler.read(pid)
    return {"rss_mib": round(now, 1), "peak_mib": round(peak, 1)}


def probe(pid: int, stats: pathlib.Path) -> pathlib.Path:
    """SIGUSR1 to the hook; the stem of what it wrote (``<stem>.stats.json`` and, traced,
    ``<stem>.snap``), once written."""
    before = set(stats.glob("*.done"))
    os.kill(pid, signal.SIGUSR1)
    scale.wait_for(lambda: set(stats.glob("*.done")) - before, 900, step=1)
    (done,) = set(stats.glob("*.done")) - before
    failed = done.with_suffix(".error")
    if failed.exists():
        raise RuntimeError(f"the probe failed in the operator: {failed.read_text()}")
    return done.with_suffix("")


def allocators(stem: pathlib.Path) -> dict[str, Any]:
    """The hook's figures, in MiB where they are bytes."""
    raw = json.loads(stem.with_suffix(".stats.json").read_text())
    mallinfo = raw["mallinfo2"]
    pymalloc = raw["pymalloc"]
    out: dict[str, Any] = {
        "allocated_blocks": raw["allocated_blocks"],
        "gc_frozen": raw["gc_frozen"],
        "mallinfo2_mib": {
            k: round(mallinfo[k] / 2**20, 2) for k in ("arena", "hblkhd", "uordblks", "fordblks")
        },
        "rss_mib_before_after_trim": [
            round(raw["rss_kib_before_trim"] / 1024, 1),
            round(raw["rss_kib_after_trim"] / 1024, 1),
        ],
        "pymalloc_arenas": pymalloc.get("arenas allocated current"),
        "pymalloc_arenas_highwater": pymalloc.get("arenas highwater mark"),
        "pymalloc_mib": {
            "in_allocated_blocks": round(pymalloc.get("bytes in allocated blocks", 0) / 2**20, 2),
            "in_available_blocks": round(pymalloc.get("bytes in available blocks", 0) / 2**20, 2),
            "in_unused_pools": round(pymalloc.get("unused pools * 16384 bytes", 0) / 2**20, 2),
        },
    }
    if "malloc_arenas" in raw:
        arenas = raw["malloc_arenas"]
        out["glibc_arenas"] = len(arenas)
        out["glibc_arenas_mib"] = {  # glibc's order: the main arena first
            "system": [round(a["system"] / 2**20, 1) for a in arenas],
            "free": [round(a["free"] / 2**20, 1) for a in arenas],
        }
    if "traced" in raw:
        out["traced_mib"] = round(raw["traced"] / 2**20, 1)
    arenas_file = stem.with_suffix(".arenas.json")
    if arenas_file.exists():
        out["arenas"] = arena_summary(json.loads(arenas_file.read_text()))
    return out


#: An arena whose pools (as seen from the objects found in it) use less than this is sparse.
SPARSE_KIB = 256


def arena_summary(arenas: list[dict[str, Any]]) -> dict[str, Any]:
    """bench/tracehook's map of objects to pymalloc's arenas, reduced: how many arenas are
    sparse (under 256 KiB of their 1 MiB in use), and the types of the objects in them,
    which are what keeps them mapped."""
    sparse = [a for a in arenas if a["used_kib"] < SPARSE_KIB]
    kinds: collections.Counter[str] = collections.Counter()
    for arena in sparse:
        kinds.update(dict(arena["types"]))
    return {
        "arenas_seen": len(arenas),
        "sparse": len(sparse),
        "sparse_used_kib": sum(a["used_kib"] for a in sparse),
        "sparse_objects_seen": sum(a["objects_seen"] for a in sparse),
        "sparse_types": kinds.most_common(12),
    }


def steady(
    cluster: LocalCluster,
    server: FastTokenEndpoint,
    *,
    pid: int,
    names: list[str],
    seconds: float,
    rate: float,
    stats: pathlib.Path,
) -> tuple[dict[str, Any], dict[str, pathlib.Path]]:
    """bench/scale.py's steady state for ``seconds``, counted from the forced refreshes'
    start; RSS at eight points, the allocators' figures at the start, the middle and the
    end (their stems are returned too: growth from the middle on is what a steady state
    keeps, not the step into it)."""
    n = len(names)
    lifetime = max(60, round(n / (rate * scale.RENEW_MEAN)))
    server.lifetime = lifetime
    start = rss(pid)  # before the probe, whose malloc_trim would lower it
    first = probe(pid, stats)
    requests0, t0 = server.requests, time.time()
    points = [{"seconds": 0.0, **start}]
    asyncio.run(scale.request_refreshes(cluster, names, f"steady-{int(t0)}", rate))
    middle: pathlib.Path | None = None
    requests_middle = 0
    for k in range(1, 8):
        time.sleep(max(0.0, t0 + seconds * k / 7 - time.time()))
        points.append({"seconds": round(time.time() - t0, 1), **rss(pid)})
        if k == 4:
            requests_middle = server.requests - requests0
            middle = probe(pid, stats)
    assert middle is not None
    requests = server.requests - requests0
    last = probe(pid, stats)
    out = {
        "lifetime_seconds": lifetime,
        "seconds": round(time.time() - t0, 1),
        "token_requests": requests,
        "refresh_cycles": round(requests / n, 2),
        "refresh_cycles_after_middle": round((requests - requests_middle) / n, 2),
        "rss": points,
        "allocators_start": allocators(first),
        "allocators_middle": allocators(middle),
        "allocators_end": allocators(last),
    }
    return out, {"start": first, "middle": middle, "end": last}


def long_lived(cluster: LocalCluster, server: FastTokenEndpoint, names: list[str]) -> None:
    """Every token refreshed with an hour's lifetime, so the next restart finds them valid
    (as the first restart does) instead of a steady phase's short ones."""
    server.lifetime = 3600
    requests0 = server.requests
    asyncio.run(scale.request_refreshes(cluster, names, f"long-{int(time.time())}", 100.0))
    scale.wait_for(lambda: server.requests - requests0 >= len(names), 300, step=0.5)


# -- the run ----------------------------------------------------------------------------


def create_namespace(cluster: LocalCluster, namespace: str) -> None:
    httpx.post(
        f"{cluster.server}/api/v1/namespaces",
        json={"metadata": {"name": namespace}},
        verify=scale.admin_ssl(cluster),
    ).raise_for_status()


def one(
    cluster: LocalCluster,
    server: FastTokenEndpoint,
    *,
    kubeconfig: pathlib.Path,
    source: pathlib.Path | None,
    n: int,
    namespace: str,
    work: pathlib.Path,
    trace: bool,
    frames: int,
    timeout: float,
    steady_seconds: float = 0.0,
    refresh_rate: float = 50.0,
    quiet: pathlib.Path | None = None,
    probe_late: bool = False,
    operator_env: dict[str, str] | None = None,
    map_arenas: bool = False,
) -> dict[str, Any]:
    """The phases for one revision and one N."""
    operator_env = operator_env or {}
    pause_while(quiet)
    abtest.use_namespace(namespace)
    create_namespace(cluster, namespace)
    names = [f"cc-{i:05d}" for i in range(n)]
    t0 = time.time()
    asyncio.run(scale.create_all(cluster, server.url, names))
    out: dict[str, Any] = {"create_seconds": round(time.time() - t0, 1)}
    creds = scale.CredentialWatcher(cluster)
    creds.start()
    scale.wait_for(lambda: len(creds.handled) >= n, 120)
    base = os.pathsep.join(p for p in (str(source or ""), abtest.BASE_PYTHONPATH) if p)
    networks = abtest.private_networks(source or scale.REPO / "operator")

    def start(log: str, env: dict[str, str] | None = None) -> OperatorProcess:
        pause_while(quiet)
        os.environ["PYTHONPATH"] = (
            os.pathsep.join([str(HOOK), base]) if env else base
        )  # the hook only where it acts
        return OperatorProcess(
            kubeconfig=kubeconfig,
            log_path=work / f"{namespace}-{log}.log",
            extra_args=["--token-rate=100", f"--namespace={namespace}"],
            verbose=False,
            private_networks=networks,
            env={**operator_env, **(env or {})} or None,
        ).start(timeout=300)

    stats = work / f"stats-{namespace}"
    stats.mkdir()
    # The allocators' figures need the hook: only in the processes whose figures are asked for.
    hooked = {"TOKENSYNC_BENCH_MEMSTATS": str(stats)} | (
        {"TOKENSYNC_BENCH_ARENAS": "1"} if map_arenas else {}
    )
    started = time.time()
    op = start("cold", hooked if probe_late else None)
    done = scale.wait_for(lambda: len(creds.ready_at) >= n, timeout, step=0.2)
    out["cold_seconds"] = None if done is None else round(done - started, 1)
    time.sleep(SETTLE)
    out["cold"] = rss(scale.operator_pid(op))
    time.sleep(max(0.0, started + LATE - time.time()))
    out["cold_late"] = rss(scale.operator_pid(op))
    if probe_late:
        out["cold_late_allocators"] = allocators(probe(scale.operator_pid(op), stats))
    op.stop()
    creds.stop()

    def restart(op: OperatorProcess) -> float | None:
        begun = time.time()
        listed = scale.wait_for(lambda: scale.queue_size(op) >= n, timeout, step=0.2)
        time.sleep(SETTLE)
        return None if listed is None else round(listed - begun, 1)

    begun = time.time()
    op = start("restart", hooked if steady_seconds or probe_late else None)
    out["restart_seconds"] = restart(op)
    out["restart"] = rss(scale.operator_pid(op))
    time.sleep(max(0.0, begun + LATE - time.time()))
    out["restart_late"] = rss(scale.operator_pid(op))
    if probe_late:
        out["restart_late_allocators"] = allocators(probe(scale.operator_pid(op), stats))
    if steady_seconds:
        out["steady"], _ = steady(
            cluster,
            server,
            pid=scale.operator_pid(op),
            names=names,
            seconds=steady_seconds,
            rate=refresh_rate,
            stats=stats,
        )
        print(f"   steady, untraced: {json.dumps(out['steady'])}", flush=True)
        long_lived(cluster, server, names)
    op.stop()
    if trace:
        snaps = work / f"snap-{namespace}"
        snaps.mkdir()
        env = {
            "TOKENSYNC_BENCH_TRACEMALLOC": str(snaps),
            "TOKENSYNC_BENCH_TRACEMALLOC_FRAMES": str(frames),
        }
        op = start("traced", env)
        out["traced_restart_seconds"] = restart(op)
        pid = scale.operator_pid(op)
        out["traced"] = rss(pid)
        if steady_seconds:
            out["traced_steady"], stems = steady(
                cluster,
                server,
                pid=pid,
                names=names,
                seconds=steady_seconds,
                rate=refresh_rate,
                stats=snaps,
            )
            stem = stems["start"]
            out["middle_snapshot"] = str(stems["middle"].with_suffix(".snap"))
            out["steady_snapshot"] = str(stems["end"].with_suffix(".snap"))
            print(f"   steady, traced: {json.dumps(out['traced_steady'])}", flush=True)
            server.lifetime = 3600
        else:
            stem = probe(pid, snaps)
        out["snapshot"] = str(stem.with_suffix(".snap"))
        out["objects"] = json.loads(stem.with_suffix(".json").read_text())
        if steady_seconds:
            out["steady_objects"] = json.loads(stems["end"].with_suffix(".json").read_text())
        op.stop()
    logs = sorted(work.glob(f"{namespace}-*.log"))
    out["operator_error_lines"] = sum(p.read_text(errors="replace").count(" ERROR ") for p in logs)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-tracemem-"))
    print(f"work directory {work}", flush=True)
    revisions: list[str | None] = list(args.revision) or [None]
    sources = {rev: abtest.export(rev, work) if rev else None for rev in revisions}
    result: dict[str, Any] = {
        "counts": args.counts,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "mem_total_mib": scale.mem_total_mib()},
        "options": {
            "allocators": args.allocators,
            "arenas": args.arenas,
            "operator_env": dict(args.operator_env),
            "trace": args.trace,
            "steady": args.steady,
        },
        "runs": {},
    }
    pause_while(args.pause_while)  # before the control plane starts, too
    with LocalCluster() as cluster, FastTokenEndpoint(lifetime=3600) as server:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        apply_files(api, sorted((scale.REPO / "crds").glob("*.yaml")))
        kubeconfig = install_operator_identity(cluster, api, work / "sa.kubeconfig")
        for n in args.counts:
            for index, rev in enumerate(revisions):
                label = rev or "tree"
                figures = one(
                    cluster,
                    server,
                    kubeconfig=kubeconfig,
                    source=sources[rev],
                    n=n,
                    namespace=f"mem-{index}-{n}",
                    work=work,
                    trace=args.trace,
                    frames=args.frames,
                    timeout=args.timeout,
                    steady_seconds=args.steady,
                    refresh_rate=args.refresh_rate,
                    quiet=args.pause_while,
                    probe_late=args.allocators,
                    operator_env=dict(args.operator_env),
                    map_arenas=args.arenas,
                )
                result["runs"].setdefault(label, {})[str(n)] = figures
                shown = {k: v for k, v in figures.items() if not k.endswith("objects")}
                print(f"== {label}, {n} credentials: {json.dumps(shown)}", flush=True)
    for label, by_n in result["runs"].items():
        snaps = [by_n[str(n)].get("snapshot") for n in args.counts]
        if len(snaps) == 2 and all(snaps):
            print(f"\n#### {label}")
            report(pathlib.Path(snaps[0]), pathlib.Path(snaps[1]), args.counts, top=args.top)
        for n in args.counts:
            figures = by_n[str(n)]
            if figures.get("steady_snapshot"):
                phase = figures["traced_steady"]
                for start, key, cycles in (
                    ("restart", "snapshot", phase["refresh_cycles"]),
                    ("middle", "middle_snapshot", phase["refresh_cycles_after_middle"]),
                ):
                    print(f"\n#### {label}, {n} credentials: {start} to end ({cycles} cycles)")
                    report(
                        pathlib.Path(figures[key]),
                        pathlib.Path(figures["steady_snapshot"]),
                        [start, "end"],
                        per=n * max(cycles, 0.01),
                        unit="credential per refresh cycle",
                        top=args.top,
                    )
    return result


# -- the report ---------------------------------------------------------------------------


def _ours(frame: tracemalloc.Frame) -> bool:
    return "/tokensync/" in frame.filename


def _library(frame: tracemalloc.Frame) -> bool:
    """Not the standard library, nor code compiled from a string (dataclass methods)."""
    return not (frame.filename.startswith((STDLIB, "<")))


def _owner(trace: tracemalloc.Trace, mine: Callable[[tracemalloc.Frame], bool]) -> str:
    """The innermost frame that ``mine`` picks (who asked for it), else the innermost."""
    frames = list(trace.traceback)  # oldest first
    for frame in reversed(frames):
        if mine(frame):
            return f"{short(frame.filename)}:{frame.lineno}"
    return f"{short(frames[-1].filename)}:{frames[-1].lineno} (no such frame)"


def _top(trace: tracemalloc.Trace, *, line: bool) -> str:
    frame = list(trace.traceback)[-1]
    return f"{short(frame.filename)}:{frame.lineno}" if line else short(frame.filename)


def grouped(
    snapshot: tracemalloc.Snapshot, key: Callable[[tracemalloc.Trace], str]
) -> dict[str, list[int]]:
    """Bytes and blocks per group."""
    out: dict[str, list[int]] = {}
    for trace in snapshot.traces:
        entry = out.setdefault(key(trace), [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    return out


def table(
    title: str,
    small: dict[str, list[int]],
    large: dict[str, list[int]],
    labels: list[Any],
    *,
    per: float,
    top: int,
) -> list[dict[str, Any]]:
    """Groups by growth from ``small`` to ``large``, per ``per`` units (credentials added,
    or credentials times refresh cycles)."""
    rows = []
    for group in set(small) | set(large):
        a, b = small.get(group, [0, 0]), large.get(group, [0, 0])
        rows.append(
            {
                "group": group,
                "mib": [round(a[0] / 2**20, 2), round(b[0] / 2**20, 2)],
                "bytes_per_unit": round((b[0] - a[0]) / per, 1),
                "blocks_per_unit": round((b[1] - a[1]) / per, 3),
            }
        )
    rows.sort(key=lambda r: -r["bytes_per_unit"])
    print(f"\n{title}")
    print(f"| {'where':<70} | MiB at {labels[0]} | MiB at {labels[1]} | B/unit | blocks/unit |")
    print(f"|{'-' * 72}|---|---|---|---|")
    for row in rows[:top]:
        where = row["group"]
        where = where if len(where) <= 70 else "…" + where[-69:]
        print(
            f"| {where:<70} | {row['mib'][0]:.2f} | {row['mib'][1]:.2f}"
            f" | {row['bytes_per_unit']} | {row['blocks_per_unit']} |"
        )
    return rows[:top]


def report(
    small_path: pathlib.Path,
    large_path: pathlib.Path,
    labels: list[Any],
    *,
    per: float | None = None,
    unit: str = "credential",
    top: int = 25,
) -> dict[str, Any]:
    """Two snapshots compared; ``per`` defaults to the difference of two counts (labels)."""
    ignore = [tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
    small = tracemalloc.Snapshot.load(str(small_path)).filter_traces(ignore)
    large = tracemalloc.Snapshot.load(str(large_path)).filter_traces(ignore)
    totals = [sum(t.size for t in s.traces) for s in (small, large)]
    units = per if per is not None else labels[1] - labels[0]
    growth = (totals[1] - totals[0]) / units
    print(
        f"traced: {totals[0] / 2**20:.1f} MiB at {labels[0]}, {totals[1] / 2**20:.1f} MiB at "
        f"{labels[1]}: {growth:.1f} bytes per {unit} (unit: {units:.0f})"
    )
    out: dict[str, Any] = {"traced_mib": [round(t / 2**20, 1) for t in totals]}
    out["bytes_per_unit"] = round(growth, 1)
    for name, key in (
        ("by file (innermost frame)", lambda t: _top(t, line=False)),
        ("by line (innermost frame)", lambda t: _top(t, line=True)),
        ("by the innermost frame outside the standard library", lambda t: _owner(t, _library)),
        ("by the innermost tokensync frame", lambda t: _owner(t, _ours)),
    ):
        out[name] = table(
            name, grouped(small, key), grouped(large, key), labels, per=units, top=top
        )
    return out


def counts_arg(text: str) -> list[int]:
    """Two ascending counts (their snapshots are compared), or one (for ``--steady``)."""
    values = sorted(int(v) for v in text.split(","))
    if len(values) not in (1, 2) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError("one count, or two ascending: 3000,10000")
    return values


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not name or not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=counts_arg, default=[3000, 10000])
    parser.add_argument(
        "--revision", action="append", default=[], help="a git revision (repeatable)"
    )
    parser.add_argument("--trace", action="store_true", help="a traced restart and a snapshot")
    parser.add_argument("--frames", type=int, default=6, help="tracemalloc frames")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument(
        "--steady",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a steady phase this long after the restart (and after the traced one)",
    )
    parser.add_argument(
        "--allocators",
        action="store_true",
        help="the allocators' figures 75 s after the cold start and after the restart",
    )
    parser.add_argument(
        "--arenas",
        action="store_true",
        help="with --allocators: which objects keep pymalloc's sparse arenas (bench/tracehook)",
    )
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        type=env_pair,
        metavar="NAME=VALUE",
        help="set in every operator process's environment (repeatable), e.g. PYTHONMALLOC=malloc",
    )
    parser.add_argument(
        "--refresh-rate", type=float, default=50.0, help="steady refreshes/s (bench/scale.py's)"
    )
    parser.add_argument(
        "--pause-while",
        type=pathlib.Path,
        help="wait before each phase while this file exists (another benchmark's marker)",
    )
    parser.add_argument(
        "--report", nargs=2, type=pathlib.Path, metavar="SNAP", help="compare two snapshots"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.arenas and not args.allocators:
        parser.error("--arenas maps the arenas at --allocators' probes: give both")
    if args.report:
        if len(args.counts) != 2:
            parser.error("--report compares two counts: --counts 3000,10000")
        report(*args.report, args.counts, top=args.top)
        return 0
    result = run(args)
    scale.OUT.mkdir(parents=True, exist_ok=True)
    path = scale.OUT / f"{time.strftime('%Y%m%dT%H%M%S')}-tracemem.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
