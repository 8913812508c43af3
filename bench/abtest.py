"""Cold starts of two (or more) revisions, alternating, on one control plane. Prints figures.

On a shared 2-core machine the same cold start varies by a third from one run to the next
(docs/performance.md), more than most changes are worth. Comparing two separate
`bench/scale.py` runs then says little. This harness runs the revisions in turn, round
after round (every other round in the reverse order, so that the control plane's drift
from one start to the next cancels), on the same kube-apiserver and token endpoint, each
on a fresh namespace of N new credentials (the operator started with ``--namespace`` so that it sees only that
one), and reports per run: time until all are Ready, operator CPU, token and API requests,
the busiest second at the endpoint, the operator's RSS, and urllib3's "Connection pool is full" warnings.
With ``BENCH_PYSPY=<dir>`` each cold start is also profiled with py-spy (speedscope JSON);
with ``BENCH_APISERVER_PPROF=<dir>`` the kube-apiserver's CPU is profiled by its own pprof
handler for the first ``--pprof-seconds`` of each cold start (``go tool pprof -top FILE``).

    python bench/abtest.py -n 2000 --rounds 2 2315e12 HEAD
    python bench/abtest.py -n 2000 --rounds 2 HEAD "HEAD --workers=32"

A revision may carry operator flags (the second form): two settings of one revision.

Each revision's ``operator/`` is exported with ``git archive`` into a temporary directory
and put first on the operator's PYTHONPATH; the venv's dependencies are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from typing import Any

import httpx
from kubernetes import config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import scale
from tokenendpoint import FastTokenEndpoint

from localcluster import LocalCluster
from support.operatorproc import LOOPBACK, OperatorProcess, apply_files, install_operator_identity

#: The harness's own PYTHONPATH; each cold start puts its revision's operator/ before it.
BASE_PYTHONPATH = os.environ.get("PYTHONPATH", "")


def export(revision: str, into: pathlib.Path) -> pathlib.Path:
    """The revision's operator/ source tree, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "operator"],
        cwd=scale.REPO,
        check=True,
        capture_output=True,
    ).stdout
    target = into / revision.replace("/", "_")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "operator"


def private_networks(source: pathlib.Path) -> tuple[str, ...]:
    """The loopback allowance the token endpoint needs, for revisions that refuse loopback
    without it (issue 14 section 4); older ones know no such flag."""
    cli = (source / "tokensync" / "cli.py").read_text()
    return LOOPBACK if "--allow-private-network" in cli else ()


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    return {name: scale.Sampler.read(pid)[0] for name, pid in pids.items()}


def apiserver_profile(cluster: LocalCluster, seconds: int, name: str) -> threading.Thread | None:
    """With BENCH_APISERVER_PPROF=<dir>: a CPU profile of the kube-apiserver, <dir>/<name>."""
    target = os.environ.get("BENCH_APISERVER_PPROF")
    if not target:
        return None
    path = pathlib.Path(target) / name

    def run() -> None:
        response = httpx.get(
            f"{cluster.server}/debug/pprof/profile",
            params={"seconds": str(seconds)},
            verify=scale.admin_ssl(cluster),
            timeout=seconds + 30,
        )
        response.raise_for_status()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response.content)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def use_namespace(namespace: str) -> None:
    """Point bench/scale.py's helpers (which read these module globals) at ``namespace``."""
    scale.NS = namespace
    scale.CC_PATH = f"/apis/tokensync.dev/v1alpha1/namespaces/{namespace}/clientcredentials"
    scale.SECRET_PATH = f"/api/v1/namespaces/{namespace}/secrets"


def cold_start(
    cluster: LocalCluster,
    server: FastTokenEndpoint,
    *,
    kubeconfig: pathlib.Path,
    source: pathlib.Path,
    flags: list[str],
    namespace: str,
    args: argparse.Namespace,
    log: pathlib.Path,
) -> dict[str, Any]:
    use_namespace(namespace)
    httpx.post(
        f"{cluster.server}/api/v1/namespaces",
        json={"metadata": {"name": namespace}},
        verify=scale.admin_ssl(cluster),
    ).raise_for_status()
    names = [f"cc-{i:05d}" for i in range(args.n)]
    asyncio.run(scale.create_all(cluster, server.url, names))
    creds = scale.CredentialWatcher(cluster)
    creds.start()
    scale.wait_for(lambda: len(creds.handled) >= args.n, 120)
    time.sleep(2)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(source), BASE_PYTHONPATH])
    others = {name: p.pid for name, p in cluster.processes.items()}
    others["harness and token endpoint"] = os.getpid()
    api0, tok0, cpu0 = scale.api_requests(cluster), server.requests, cpu_seconds(others)
    machine0, started = scale.machine_cpu(), time.time()
    pprof = apiserver_profile(cluster, args.pprof_seconds, f"apiserver-{namespace}.pb.gz")
    op = OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=log,
        extra_args=[f"--token-rate={args.token_rate}", f"--namespace={namespace}", *flags],
        verbose=False,
        private_networks=private_networks(source),
    ).start(timeout=120)
    pid = scale.operator_pid(op)
    spy = scale.profile(op, f"cold-start-{namespace}", args.timeout)
    done = scale.wait_for(lambda: len(creds.ready_at) >= args.n, args.timeout, step=0.1)
    (cpu, rss, hwm), cpu1 = scale.Sampler.read(pid), cpu_seconds(others)
    ended = done or time.time()
    machine = scale.machine_cores(machine0, ended - started)
    peak = server.peak_rate(started, ended)
    time.sleep(2)  # the last status writes reach the counters
    api = scale.api_delta(api0, scale.api_requests(cluster))
    op.stop()
    creds.stop()
    if spy is not None:
        spy.wait(timeout=60)
    if pprof is not None:
        pprof.join()
    return {
        "all_ready": done is not None,
        "seconds_to_all_ready": round(ended - started, 2),
        "cpu_seconds": round(cpu, 1),
        "rss_mib_when_all_ready": round(rss, 1),
        "peak_rss_mib": round(hwm, 1),
        "other_cpu_seconds": {k: round(cpu1[k] - cpu0[k], 1) for k in cpu0},
        "token_requests": server.requests - tok0,
        "peak_token_requests_per_second": peak,
        # The start: the seconds before the first Ready, and the tokens of the first and
        # the second 5 s (whole seconds from the start's), against the rate's 5 s worth.
        "seconds_to_first_ready": round(min(creds.ready_at.values(), default=ended) - started, 2),
        "token_requests_first_5_10_seconds": server.series(started, started + 9, 5),
        "machine": machine,
        "api_requests": api,
        "pool_full_warnings": log.read_text(errors="replace").count("Connection pool is full"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "revisions",
        nargs="+",
        help="git revisions to compare, each optionally with operator flags: 'HEAD --workers=32'",
    )
    parser.add_argument("-n", type=int, default=2000, help="credentials per cold start")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--token-rate", type=float, default=100.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--pprof-seconds", type=int, default=20)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-ab-"))
    variants = {spec: spec.split() for spec in args.revisions}  # label: [revision, *flags]
    sources = {rev: export(rev, work) for rev in {v[0] for v in variants.values()}}
    runs: list[dict[str, Any]] = []
    with LocalCluster() as cluster, FastTokenEndpoint(lifetime=3600) as server:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        apply_files(api, sorted((scale.REPO / "crds").glob("*.yaml")))
        kubeconfig = install_operator_identity(cluster, api, work / "sa.kubeconfig")
        count = 0
        for round_ in range(args.rounds):
            # Every other round in the reverse order (ABBA): each cold start leaves its
            # namespace's objects in etcd, and later starts on one control plane run slower
            # (docs/performance.md, issue 19's twelfth part), a drift that would otherwise
            # favour whichever revision goes first.
            order = list(variants.items())[:: -1 if round_ % 2 else 1]
            for rev, (revision, *flags) in order:
                count += 1
                run = {"revision": rev, "round": round_ + 1, "position": count}
                run |= cold_start(
                    cluster,
                    server,
                    kubeconfig=kubeconfig,
                    source=sources[revision],
                    flags=flags,
                    namespace=f"ab{count}",
                    args=args,
                    log=work / f"op{count}.log",
                )
                print(json.dumps(run), flush=True)
                runs.append(run)
    print(f"== cold start of {args.n} credentials, median [min-max] of {args.rounds} rounds")
    for rev in args.revisions:
        mine = [r for r in runs if r["revision"] == rev]
        figures = {}
        for key in (
            "seconds_to_all_ready",
            "cpu_seconds",
            "peak_token_requests_per_second",
            "seconds_to_first_ready",
            "rss_mib_when_all_ready",
        ):
            values = [r[key] for r in mine]
            figures[key] = f"{statistics.median(values)} [{min(values)}-{max(values)}]"
        print(f"  {rev}: {json.dumps(figures)}")
    scale.OUT.mkdir(parents=True, exist_ok=True)
    path = scale.OUT / f"{time.strftime('%Y%m%dT%H%M%S')}-ab-n{args.n}.json"
    path.write_text(json.dumps({"n": args.n, "runs": runs}, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
