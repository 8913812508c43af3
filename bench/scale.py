"""Scale figures on the real local control plane (issue 6). Prints figures; asserts nothing.

``make bench`` runs it with 1,000 credentials, ``make bench-scale`` with 10,000. Phases:

a. Cold start: N client Secrets and N ClientCredentials are created (concurrently, by the
   admin) before the operator starts; then: time until every target Secret exists and every
   credential is Ready, token requests, API requests by verb/resource (apiserver_request_total).
e. In the same phase, the token endpoint's peak requests per 1-s bucket against --token-rate.
c. Restart with valid tokens: operator stopped and started; token requests (target 0) and the
   time until every credential is scheduled again (the health probe's credential count).
f. Time to Ready for 100 credentials created one at a time (with N present) vs the floor
   (token request, Secret create, watch) and the full floor (the ClientCredential's own
   create and watch delivery added), with the median time to each step.
b/d. Steady state: lifetimes set so that about --refresh-rate refreshes happen per second;
   refresh lateness (operator histogram, and Secret write seen by a watch minus the due time
   in status, to the millisecond since decision 0064), CPU and RSS, and cost per refresh.
g. Backlog (skipped with --no-backlog): the operator stopped, every credential's refresh
   requested, the operator started; the time until all have handled it, against N /
   --token-rate and against the token lifetime (issue 19: a backlog drains within one
   lifetime), the CPU of each process meanwhile, and the tokens whose refresh came only
   after they expired (decision 0066: earliest expiry first).

Figures go to stdout and to bench/out/<timestamp>.json; ``--plot`` draws lateness and memory
against N from the newest result file for each N.

Several replicas and shards (issue 18; ``make bench-shards``): with ``--replicas R`` or
``--shards S`` above 1, every operator process runs with ``--leader-elect --lease-namespace
tokensync-system --shards S``; all R start at once for the cold start, and the restart
restarts all R. The figures are the same, for the replicas together: CPU is their total,
memory the largest replica's (what a pod's limit is compared with), lateness from the Secret
writes whichever replica made them and from their histograms summed. Each section adds one
line per replica (CPU, RSS peak and steady, credentials served and shards held from its
metrics, shard Leases taken and handed over) and the totals, and the holders of the shard
Leases. With R = S = 1 the operator runs as before (no leader election) and the output is
unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import datetime
import json
import math
import os
import pathlib
import random
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
from kubernetes import client, config

from tokensync import leases

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import contextlib

from quick import pct
from tokenendpoint import FastTokenEndpoint

from localcluster import LocalCluster
from support.operatorproc import (
    OPERATOR_ACCOUNT,
    OperatorProcess,
    apply_documents,
    apply_files,
    install_operator_identity,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
NS = "bench"
CC_PATH = f"/apis/tokensync.dev/v1alpha1/namespaces/{NS}/clientcredentials"
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets"
TICK = os.sysconf("SC_CLK_TCK")
RENEW_MEAN = 2 / 3 - 0.05  # refresh at 2/3 of the lifetime minus a jitter of up to 10 %
#: Refresh requests per second the backlog phase sends, the operator stopped.
BACKLOG_SUBMIT_RATE = 2000.0
#: Refresh-request patches in flight at most (16 connections, each with a few queued).
SUBMIT_IN_FLIGHT = 48
#: The resources whose API requests are counted (apiserver_request_total); with several
#: replicas also Leases, counted apart (kube-controller-manager runs here without leader
#: election, so the other Lease requests are the API server's own, if any: few).
RESOURCES = ("secrets", "clientcredentials", "events")
#: Where the replicas' Leases live (the operator's namespace in deploy/).
LEASE_NAMESPACE = OPERATOR_ACCOUNT[0]


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def admin_ssl(cluster: LocalCluster) -> ssl.SSLContext:
    d = cluster.workdir
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(d / "probe-admin.crt", d / "probe-admin.key")
    return ctx


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 4),
        "p99": round(pct(values, 0.99), 4),
        "max": round(max(values), 4),
    }


_METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def api_requests(
    cluster: LocalCluster, resources: tuple[str, ...] = RESOURCES
) -> collections.Counter[tuple[str, str, str]]:
    """apiserver_request_total for our resources by (verb, resource[/subresource], code)."""
    text = httpx.get(f"{cluster.server}/metrics", verify=admin_ssl(cluster)).text
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("resource") in resources:
            sub = labels.get("subresource", "")
            resource = labels["resource"] + (f"/{sub}" if sub else "")
            counts[labels["verb"], resource, labels.get("code", "")] += int(float(m["value"]))
    return counts


def api_delta(before: collections.Counter[Any], after: collections.Counter[Any]) -> dict[str, int]:
    """Requests between two scrapes, by "VERB resource" (and the code when it is not 2xx)."""
    out: collections.Counter[str] = collections.Counter()
    for key in sorted(set(before) | set(after)):
        delta = after[key] - before[key]
        if delta:
            verb, resource, code = key
            out[f"{verb} {resource}" + ("" if code.startswith("2") else f" ({code})")] += delta
    return dict(sorted(out.items()))


def split_leases(api: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(requests for our other resources, requests for Leases): the Lease traffic goes with
    time and replicas, not with refreshes, and is kept out of the per-refresh figures."""
    leases_ = {k: v for k, v in api.items() if k.split(" ")[1] == "leases"}
    return {k: v for k, v in api.items() if k not in leases_}, leases_


# -- watching ---------------------------------------------------------------------------


class Watcher:
    """One raw watch stream (no model deserialisation: it must keep up with 10,000 objects)."""

    def __init__(self, cluster: LocalCluster, path: str, params: dict[str, str]) -> None:
        self._client = httpx.Client(
            base_url=cluster.server, verify=admin_ssl(cluster), timeout=httpx.Timeout(10, read=None)
        )
        self._path, self._params = path, params
        self._stopped = False
        self.reconnects: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        rv = ""
        while not self._stopped:
            params = {**self._params, "watch": "1", "timeoutSeconds": "3600"}
            if rv:
                params["resourceVersion"] = rv
            try:
                with self._client.stream("GET", self._path, params=params) as resp:
                    for line in resp.iter_lines():
                        if self._stopped:
                            return
                        if not line:
                            continue
                        event = json.loads(line)
                        if event.get("kind") == "Status":  # the request failed: no watch
                            self.reconnects[str(event.get("reason"))] += 1
                            time.sleep(0.2)
                            break
                        if event["type"] == "ERROR":
                            rv = ""
                            break
                        rv = event["object"]["metadata"].get("resourceVersion", rv)
                        with self.lock:
                            self.handle(event["type"], event["object"], time.time())
            except Exception as exc:
                if self._stopped:
                    return
                self.reconnects[type(exc).__name__] += 1
                time.sleep(0.2)

    def handle(self, type_: str, obj: dict[str, Any], now: float) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopped = True
        self._client.close()


class CredentialWatcher(Watcher):
    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(cluster, CC_PATH, {})
        self.first_seen: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.dues: dict[str, list[float]] = collections.defaultdict(list)
        self.handled: dict[str, str | None] = {}
        self.handled_since: dict[str, float] = {}  # when handledRefreshRequest last changed
        self.expires_at: dict[str, float] = {}

    def handle(self, type_: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        self.first_seen.setdefault(name, now)
        st = obj.get("status") or {}
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in st.get("conditions") or []
        ):
            self.ready_at.setdefault(name, now)
        due = parse_time(st.get("nextRefreshAt"))
        dues = self.dues[name]
        if due is not None and (not dues or dues[-1] != due):
            dues.append(due)
            del dues[:-4]
        handled = st.get("handledRefreshRequest")
        if handled != self.handled.get(name):
            self.handled_since[name] = now
        self.handled[name] = handled
        expires = parse_time(st.get("expiresAt"))
        if expires is not None:
            self.expires_at[name] = expires


class SecretWatcher(Watcher):
    def __init__(self, cluster: LocalCluster, credentials: CredentialWatcher) -> None:
        super().__init__(
            cluster, SECRET_PATH, {"labelSelector": "app.kubernetes.io/managed-by=tokensync"}
        )
        self.credentials = credentials
        self.first_seen: dict[str, float] = {}
        self.writes: list[tuple[float, str]] = []  # (time seen, credential) of each update
        self.lateness: list[tuple[float, float]] = []  # (time seen, seen - due)

    def handle(self, type_: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        cc = name.removesuffix("-token")
        self.first_seen.setdefault(name, now)
        if type_ != "MODIFIED":
            return
        self.writes.append((now, cc))
        with self.credentials.lock:
            dues = [d for d in self.credentials.dues.get(cc, ()) if d <= now + 0.5]
        if dues:
            self.lateness.append((now, now - max(dues)))


# -- the operator process ---------------------------------------------------------------


class Sampler:
    """CPU and memory of one process, sampled twice a second."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.samples: list[tuple[float, float, float, float]] = []  # t, cpu s, rss, hwm (MiB)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def read(pid: int) -> tuple[float, float, float]:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        rss = hwm = 0.0
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
        return cpu, rss, hwm

    def _run(self) -> None:
        while not self._stopped:
            pid = self.pid
            if pid is not None:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    self.samples.append((time.time(), *self.read(pid)))
            time.sleep(0.5)

    def window(self, since: float, until: float) -> list[tuple[float, float, float, float]]:
        return [s for s in self.samples if since <= s[0] <= until]

    def stop(self) -> None:
        self._stopped = True


def operator_pid(op: OperatorProcess) -> int:
    assert op.proc is not None
    return op.proc.pid


def queue_size(op: OperatorProcess) -> int:
    """tokensync_refresh_queue_size, read at scrape time (-1 while not answering)."""
    for line in op.metrics().splitlines():
        if line.startswith("tokensync_refresh_queue_size "):
            return int(float(line.split()[1]))
    return -1


def histogram(metrics_text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of an unlabelled histogram."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[math.inf if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantile(
    before: dict[float, float], after: dict[float, float], q: float
) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of the observations between two scrapes."""
    buckets = sorted(after)
    total = after.get(math.inf, 0) - before.get(math.inf, 0)
    if total <= 0:
        return None
    for le in buckets:
        if after[le] - before.get(le, 0) >= q * total:
            return le
    return math.inf


def sum_histograms(histograms: list[dict[float, float]]) -> dict[float, float]:
    """Bucket counts of several processes' histograms, added (the replicas' together)."""
    out: collections.Counter[float] = collections.Counter()
    for one in histograms:
        out.update(one)
    return dict(out)


def gauge(metrics_text: str, name: str, labels: str = "") -> float | None:
    """A gauge's value (``labels`` as exposed, e.g. ``role="served"``), None when absent."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def transitions(metrics_text: str) -> dict[str, int]:
    """tokensync_leadership_transitions_total by change (acquired, released, lost)."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("tokensync_leadership_transitions_total{"):
            change = line.split('change="', 1)[1].split('"', 1)[0]
            out[change] = int(float(line.rsplit(" ", 1)[1]))
    return dict(sorted(out.items()))


class Replicas:
    """The operator's processes, started together and stopped together, each sampled.

    With one replica and one shard it is the operator as it always ran here: no leader
    election, and the log files named as before (operator-<run>.log).
    """

    def __init__(
        self,
        *,
        count: int,
        shards: int,
        kubeconfig: pathlib.Path,
        work: pathlib.Path,
        extra_args: list[str],
        verbose: bool,
    ) -> None:
        self.count, self.shards = count, shards
        self.ha = count > 1 or shards > 1
        self.kubeconfig, self.work = kubeconfig, work
        self.extra_args = list(extra_args)
        if self.ha:
            self.extra_args += [
                "--leader-elect",
                f"--lease-namespace={LEASE_NAMESPACE}",
                f"--shards={shards}",
            ]
        self.verbose = verbose
        self.ops: list[OperatorProcess] = []
        self.samplers = [Sampler() for _ in range(count)]

    def log_path(self, run: int, index: int) -> pathlib.Path:
        if self.count == 1:
            return self.work / f"operator-{run}.log"
        return self.work / f"operator-{run}-r{index}.log"

    def start(self, run: int) -> None:
        """All replicas at once: each started (and waited for) in a thread of its own."""

        def one(index: int) -> OperatorProcess:
            identity = [f"--identity=bench-r{index}"] if self.ha else []
            return OperatorProcess(
                kubeconfig=self.kubeconfig,
                log_path=self.log_path(run, index),
                extra_args=[*self.extra_args, *identity],
                verbose=self.verbose,
            ).start(timeout=120)

        with concurrent.futures.ThreadPoolExecutor(self.count) as pool:
            futures = [pool.submit(one, i) for i in range(self.count)]
            concurrent.futures.wait(futures)
        started = [f.result() for f in futures if f.exception() is None]
        if len(started) < self.count:
            for op in started:
                op.stop()
            for f in futures:
                f.result()  # raises the first failure
        self.ops = started
        for sampler, op in zip(self.samplers, self.ops, strict=True):
            sampler.pid = operator_pid(op)

    def stop(self) -> None:
        """SIGTERM to all at once (each hands its shards over), then wait for each."""
        for sampler in self.samplers:
            sampler.pid = None
        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.ops))) as pool:
            list(pool.map(OperatorProcess.stop, self.ops))
        self.ops = []

    def close(self) -> None:
        for sampler in self.samplers:
            sampler.stop()

    def pids(self) -> list[int]:
        return [operator_pid(op) for op in self.ops]

    def metrics(self) -> list[str]:
        return [op.metrics() for op in self.ops]

    def queue_size(self) -> int:
        """Credentials scheduled in all replicas together (-1 while one is not answering)."""
        sizes = [queue_size(op) for op in self.ops]
        return -1 if min(sizes) < 0 else sum(sizes)

    def cpu(self) -> list[float]:
        return [Sampler.read(pid)[0] for pid in self.pids()]

    def window(self, index: int, since: float, until: float) -> list[tuple[float, ...]]:
        return list(self.samplers[index].window(since, until))

    def reset_peaks(self) -> float:
        """Start a phase's peak: each replica's VmHWM set back to its RSS (clear_refs 5);
        returns when. Without it a phase's peak is its process's peak so far."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
        return time.time()

    def peak(self, since: float, until: float) -> float | None:
        """The largest replica's VmHWM sampled between two times (MiB)."""
        peaks = [s[3] for i in range(self.count) for s in self.window(i, since, until)]
        return round(max(peaks), 1) if peaks else None

    def membership(self, index: int, metrics_text: str) -> dict[str, Any]:
        """What one replica's metrics say about its shards (only with leader election)."""
        if not self.ha:
            return {}
        served = gauge(metrics_text, "tokensync_credentials", 'role="served"')
        standby = gauge(metrics_text, "tokensync_credentials", 'role="standby"')
        held = gauge(metrics_text, "tokensync_shards_held")
        return {
            "credentials_served": None if served is None else int(served),
            "credentials_standby": None if standby is None else int(standby),
            "shards_held": None if held is None else int(held),
            "shard_leases": transitions(metrics_text),
        }


def lease_holders(cluster: LocalCluster) -> dict[str, str]:
    """The holder of each shard Lease, as the API server has it (short: the identity)."""
    r = httpx.get(
        f"{cluster.server}/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
        params={"labelSelector": f"{leases.LEASE_ROLE_LABEL}={leases.SHARD_ROLE}"},
        verify=admin_ssl(cluster),
    )
    r.raise_for_status()
    return {
        item["metadata"]["name"]: item["spec"].get("holderIdentity") or ""
        for item in sorted(r.json()["items"], key=lambda item: item["metadata"]["name"])
    }


def may_use_leases(api: client.ApiClient) -> bool:
    """Does the authorizer let the operator's ServiceAccount do what --leader-elect does
    with Leases in the lease namespace? (A SubjectAccessReview per verb.)"""
    namespace, name = OPERATOR_ACCOUNT
    authz = client.AuthorizationV1Api(api)
    for verb in ("get", "list", "create", "update", "delete"):
        review = authz.create_subject_access_review(
            {
                "spec": {
                    "user": f"system:serviceaccount:{namespace}:{name}",
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{namespace}",
                        "system:authenticated",
                    ],
                    "resourceAttributes": {
                        "group": "coordination.k8s.io",
                        "resource": "leases",
                        "verb": verb,
                        "namespace": LEASE_NAMESPACE,
                    },
                }
            }
        )
        if not (review.status and review.status.allowed):
            return False
    return True


def grant_leases(api: client.ApiClient) -> str:
    """The Lease rules for the operator's identity: deploy/base/rbac.yaml's when it has
    them, otherwise a Role and RoleBinding of the benchmark's own (same rules)."""
    if may_use_leases(api):
        return "deploy/base/rbac.yaml"
    namespace, name = OPERATOR_ACCOUNT
    meta = {"name": "tokensync-bench-leases", "namespace": LEASE_NAMESPACE}
    apply_documents(
        api,
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": [
                    {
                        "apiGroups": ["coordination.k8s.io"],
                        "resources": ["leases"],
                        "verbs": ["get", "list", "create", "update", "delete"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": meta["name"],
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        ],
    )
    if wait_for(lambda: may_use_leases(api), 30, step=0.5) is None:
        raise RuntimeError("the benchmark's Lease Role was not in effect within 30 s")
    return "Role tokensync-bench-leases, applied by bench/scale.py"


def shard_sizes(names: list[str], shards: int) -> list[int]:
    """How many of the credentials fall in each shard (the operator's own hash)."""
    sizes = [0] * shards
    for name in names:
        sizes[leases.shard_of(NS, name, shards)] += 1
    return sizes


# -- creating objects -------------------------------------------------------------------


async def create_all(cluster: LocalCluster, token_url: str, names: list[str]) -> None:
    sem = asyncio.Semaphore(48)
    limits = httpx.Limits(max_connections=48, max_keepalive_connections=48)
    async with httpx.AsyncClient(
        base_url=cluster.server, verify=admin_ssl(cluster), limits=limits, timeout=60
    ) as http:

        async def one(name: str) -> None:
            async with sem:
                r = await http.post(
                    SECRET_PATH,
                    json={
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {
                            "name": f"{name}-client",
                            "labels": {"tokensync.dev/client-secret": "true"},
                            "annotations": {"tokensync.dev/allowed-destinations": token_url},
                        },
                        "stringData": {"client_id": name, "client_secret": f"{name}-secret"},
                    },
                )
                r.raise_for_status()
                r = await http.post(CC_PATH, json=credential(name, token_url))
                r.raise_for_status()

        await asyncio.gather(*(one(n) for n in names))


def credential(name: str, token_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "ClientCredential",
        "metadata": {"name": name},
        "spec": {"tokenURL": token_url, "clientSecretRef": {"name": f"{name}-client"}},
    }


async def request_refreshes(
    cluster: LocalCluster, names: list[str], value: str, rate: float
) -> None:
    """Force a refresh of every credential, ``rate`` per second (spreads the next cycles).

    At most :data:`SUBMIT_IN_FLIGHT` patches wait at a time: thousands of requests queued
    on httpx's pool of 16 connections made the pool, not the API server, the bound (10,000
    patches took 345 s at a rate of 2,000/s, longer than the backlog's token lifetime)."""
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    in_flight = asyncio.Semaphore(SUBMIT_IN_FLIGHT)
    patch = {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": value}}}
    async with httpx.AsyncClient(
        base_url=cluster.server, verify=admin_ssl(cluster), limits=limits, timeout=60
    ) as http:

        async def one(name: str) -> None:
            try:
                await _merge_patch(http, f"{CC_PATH}/{name}", patch)
            finally:
                in_flight.release()

        start = time.monotonic()
        tasks = []
        for i, name in enumerate(names):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            tasks.append(asyncio.create_task(one(name)))
        await asyncio.gather(*tasks)


async def _merge_patch(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    """A merge patch, sent again after a 5xx or a dropped connection (a busy API server's
    504 ended a run once, a reset connection another): the patch is idempotent."""
    for attempt in range(4):
        try:
            r = await http.patch(
                path, json=body, headers={"Content-Type": "application/merge-patch+json"}
            )
        except httpx.TransportError:
            if attempt == 3:
                raise
        else:
            if r.status_code < 500 or attempt == 3:
                r.raise_for_status()
                return
        await asyncio.sleep(1.0 + attempt)


def profile(op: OperatorProcess, name: str, seconds: float) -> subprocess.Popen[bytes] | None:
    """With BENCH_PYSPY=<dir>: sample the operator with py-spy (speedscope JSON) meanwhile;
    with BENCH_PYSPY_PHASES=cold,steady,backlog (a comma list) only in those phases.

    Only samples holding the GIL are kept (``--gil``): the operator is bound by the GIL, and
    threads waiting for a response in C code (SSL reads) would otherwise count as busy.
    """
    target = os.environ.get("BENCH_PYSPY")
    exe = pathlib.Path(sys.executable).parent / "py-spy"
    phases = os.environ.get("BENCH_PYSPY_PHASES")  # e.g. "backlog": only those phases
    if (
        not target
        or not exe.exists()
        or (phases and name.split("-", maxsplit=1)[0] not in phases.split(","))
    ):
        return None
    pathlib.Path(target).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(operator_pid(op)),
            "--duration",
            str(int(seconds)),
            "--rate",
            "50",
            "--format",
            "speedscope",
            "--output",
            f"{target}/{name}.json",
            "--nonblocking",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> float | None:
    """Time (time.time()) at which predicate() became true, or None on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(step)
    return None


# -- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    names = [f"cc-{i:05d}" for i in range(n)]
    work = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-bench-"))
    result: dict[str, Any] = {
        "n": n,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "token_rate": args.token_rate,
        "operator_args": args.operator_args,
        "machine": {"nproc": os.cpu_count(), "mem_total_mib": mem_total_mib()},
    }
    op_args = [f"--token-rate={args.token_rate}", *args.operator_args.split()]
    with LocalCluster() as cluster, FastTokenEndpoint(lifetime=3600) as server:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        apply_files(api, sorted((REPO / "crds").glob("*.yaml")))
        kubeconfig = install_operator_identity(cluster, api, work / "sa.kubeconfig")
        ops = Replicas(
            count=args.replicas,
            shards=args.shards,
            kubeconfig=kubeconfig,
            work=work,
            extra_args=op_args,
            verbose=args.verbose,
        )
        resources = RESOURCES + (("leases",) if ops.ha else ())
        if ops.ha:
            result["replicas"] = args.replicas
            result["shards"] = args.shards
            result["shard_sizes"] = shard_sizes(names, args.shards)
            result["lease_rbac"] = grant_leases(api)
            print(
                f"{args.replicas} replicas, {args.shards} shards of {result['shard_sizes']} "
                f"credentials; Lease rules: {result['lease_rbac']}; logs in {work}"
            )
        httpx.post(
            f"{cluster.server}/api/v1/namespaces",
            json={"metadata": {"name": NS}},
            verify=admin_ssl(cluster),
        ).raise_for_status()
        time.sleep(1)

        t0 = time.time()
        asyncio.run(create_all(cluster, server.url, names))
        result["create_seconds"] = round(time.time() - t0, 1)
        print(f"created {n} client Secrets + {n} ClientCredentials in {result['create_seconds']} s")

        creds = CredentialWatcher(cluster)
        secrets_ = SecretWatcher(cluster, creds)
        creds.start()
        secrets_.start()
        wait_for(lambda: len(creds.handled) >= n, 120)
        time.sleep(1)

        # (a, e) Cold start.
        api0, tok0 = api_requests(cluster, resources), server.requests
        others0, machine0, t_start = process_cpu(cluster), machine_cpu(), time.time()
        ops.start(run=1)
        spies = profiles(ops, "cold", n, 60 if n < 5000 else 150)
        t_all = wait_for(
            lambda: len(creds.ready_at) >= n and len(secrets_.first_seen) >= n,
            args.cold_timeout,
            step=0.1,
        )
        t_end = t_all or time.time()
        time.sleep(2)  # let the last status writes land in the counters
        api1, tok1 = api_requests(cluster, resources), server.requests
        machine = machine_cores(machine0, time.time() - t_start)
        others1, t_now = process_cpu(cluster), time.time()
        cold_windows = [ops.window(i, t_start, t_now) for i in range(ops.count)]
        cold_cpu = [round(w[-1][1] - w[0][1], 1) if w else None for w in cold_windows]
        cold_peak = [round(max((s[3] for s in w), default=0), 1) for w in cold_windows]
        result["cold_start"] = {
            "all_ready": t_all is not None,
            "ready": len(creds.ready_at),
            "seconds_to_all_ready": round(t_end - t_start, 2),
            "seconds_to_first_ready": round(
                min(creds.ready_at.values(), default=t_end) - t_start, 2
            ),
            "token_requests": tok1 - tok0,
            "api_requests": split_leases(api_delta(api0, api1))[0],
            "peak_token_requests_per_second": server.peak_rate(t_start, t_end),
            # Where the time goes: the rate floor is flat at --token-rate.
            "token_requests_per_10_seconds": server.series(t_start, t_end, 10),
            "other_cpu_seconds": {k: round(others1[k] - others0[k], 1) for k in others0},
            "machine": machine,
            "rss_peak_mib": max(cold_peak),
            "cpu_seconds": cold_cpu[0]
            if not ops.ha
            else round(sum(c for c in cold_cpu if c is not None), 1),
        }
        if ops.ha:
            result["cold_start"]["lease_api_requests"] = split_leases(api_delta(api0, api1))[1]
            per = [
                {"cpu_seconds": cpu, "rss_peak_mib": peak, **ops.membership(i, text)}
                for i, (cpu, peak, text) in enumerate(
                    zip(cold_cpu, cold_peak, ops.metrics(), strict=True)
                )
            ]
            result["cold_start"] |= replica_figures(cluster, per)
        print_section(
            "cold start" + (" (CPU: all replicas; RSS: the largest)" if ops.ha else ""),
            result["cold_start"],
        )
        time.sleep(3)
        rss_idle = [Sampler.read(pid)[1] for pid in ops.pids()]
        result["rss_after_cold_start_mib"] = round(max(rss_idle), 1)
        if ops.ha:
            result["rss_after_cold_start_mib_per_replica"] = [round(r, 1) for r in rss_idle]

        # (c) Restart with valid tokens.
        ops.stop()
        tok0, api0 = server.requests, api_requests(cluster, resources)
        t_start = time.time()
        ops.start(run=2)
        t_sched = wait_for(lambda: ops.queue_size() >= n, 300, step=0.1)
        time.sleep(10)
        rss_now = [Sampler.read(pid)[1] for pid in ops.pids()]
        api, lease_api = split_leases(api_delta(api0, api_requests(cluster, resources)))
        result["restart"] = {
            "seconds_to_all_scheduled": round(t_sched - t_start, 2) if t_sched else None,
            "token_requests": server.requests - tok0,
            "api_requests": api,
            "rss_mib": round(max(rss_now), 1),
        }
        if ops.ha:
            result["restart"]["lease_api_requests"] = lease_api
            per = [
                {"rss_mib": round(rss, 1), **ops.membership(i, text)}
                for i, (rss, text) in enumerate(zip(rss_now, ops.metrics(), strict=True))
            ]
            result["restart"] |= replica_figures(cluster, per)
        print_section(
            "restart with valid tokens (10 s after all scheduled)"
            + (", all replicas restarted" if ops.ha else ""),
            result["restart"],
        )

        # Each later phase's own memory peak, as well as the process's since the restart.
        peaks = {"restart": ops.peak(t_start, time.time())}
        # (f) Time to Ready, one at a time, with N present.
        since = ops.reset_peaks()
        result["time_to_ready"] = time_to_ready(cluster, server, creds, secrets_, args.ttr)
        peaks["time_to_ready"] = ops.peak(since, time.time())
        print_section("time to Ready (one at a time)", result["time_to_ready"])

        # (b, d) Steady state.
        lifetime = max(60, round(n / (args.refresh_rate * RENEW_MEAN)))
        server.lifetime = lifetime
        spread = n / args.refresh_rate
        print(
            f"steady state: lifetime {lifetime} s, forcing one refresh each at "
            f"{args.refresh_rate}/s ({spread:.0f} s) to spread the cycles"
        )
        t_trigger = ops.reset_peaks()
        # In an order of their own (seeded), so that the tokens' expiries are not in the
        # order of the names, which is the order a listing delivers them in: a backlog's
        # order then matters as it does on a real cluster (decision 0066).
        shuffled = random.Random(19).sample(names, len(names))  # noqa: S311 -- an order, not a secret
        asyncio.run(
            request_refreshes(cluster, shuffled, f"steady-{int(t_trigger)}", args.refresh_rate)
        )
        start = t_trigger + max(spread, lifetime * (2 / 3 - 0.1)) + 5
        time.sleep(max(0.0, start - time.time()))
        peaks["forced_refreshes"] = ops.peak(t_trigger, time.time())
        ops.reset_peaks()
        spies = profiles(ops, "steady", n, args.window)
        hist0 = [histogram(text, "tokensync_refresh_lateness_seconds") for text in ops.metrics()]
        api0, tok0, cpu0 = api_requests(cluster, resources), server.requests, ops.cpu()
        others0, machine0, t0 = process_cpu(cluster), machine_cpu(), time.time()
        time.sleep(args.window)
        t1 = time.time()
        machine = machine_cores(machine0, t1 - t0)
        api1, tok1, cpu1 = api_requests(cluster, resources), server.requests, ops.cpu()
        others1 = process_cpu(cluster)
        texts = ops.metrics()
        hist1 = [histogram(text, "tokensync_refresh_lateness_seconds") for text in texts]
        metrics0, metrics1 = sum_histograms(hist0), sum_histograms(hist1)
        with secrets_.lock:
            writes = [w for w in secrets_.writes if t0 <= w[0] <= t1]
            late = [v for (t, v) in secrets_.lateness if t0 <= t <= t1]
        refreshes = len(writes)
        windows = [ops.window(i, t0, t1) for i in range(ops.count)]
        rss_steady = [round(w[-1][2], 1) if w else None for w in windows]
        rss_peak = [round(max(s[3] for s in sampler.samples), 1) for sampler in ops.samplers]
        cores = [round((c1 - c0) / (t1 - t0), 3) for c0, c1 in zip(cpu0, cpu1, strict=True)]
        api, lease_api = split_leases(api_delta(api0, api1))
        steady: dict[str, Any] = {
            "lifetime_seconds": lifetime,
            "window_seconds": round(t1 - t0, 1),
            "refreshes": refreshes,
            "refreshes_per_second": round(refreshes / (t1 - t0), 1),
            "lateness_secret_written_seconds": summary(late),
            "lateness_operator_histogram_upper_bound_seconds": {
                "p50": histogram_quantile(metrics0, metrics1, 0.5),
                "p99": histogram_quantile(metrics0, metrics1, 0.99),
                "observations": metrics1.get(math.inf, 0) - metrics0.get(math.inf, 0),
            },
            "cpu_cores": round((sum(cpu1) - sum(cpu0)) / (t1 - t0), 3),
            "other_cores": cores_between(others0, others1, t1 - t0),
            "machine": machine,
            "rss_steady_mib": max((r for r in rss_steady if r is not None), default=None),
            # VmHWM: the process's peak since the restart (every phase since).
            "rss_peak_mib": max(rss_peak),
            "rss_peak_by_phase_mib": peaks | {"steady_window": ops.peak(t0, t1)},
            "token_requests_per_refresh": round((tok1 - tok0) / max(refreshes, 1), 3),
            "api_requests_per_refresh": {
                k: round(v / max(refreshes, 1), 3) for k, v in api.items()
            },
            "api_requests": api,
            "peak_token_requests_per_second": server.peak_rate(t0, t1),
        }
        if ops.ha:
            steady["lease_api_requests_per_second"] = {
                k: round(v / (t1 - t0), 2) for k, v in lease_api.items()
            }
            per = [
                {
                    "cpu_cores": cores[i],
                    "rss_steady_mib": rss_steady[i],
                    "rss_peak_mib": rss_peak[i],
                    "refreshes_started": h1.get(math.inf, 0) - h0.get(math.inf, 0),
                    **ops.membership(i, texts[i]),
                }
                for i, (h0, h1) in enumerate(zip(hist0, hist1, strict=True))
            ]
            steady |= replica_figures(cluster, per)
        result["steady"] = steady
        print_section(
            "steady state" + (" (CPU: all replicas; RSS: the largest)" if ops.ha else ""), steady
        )
        # (g) A backlog: every credential's refresh requested while the operator was stopped.
        if args.backlog:
            result["backlog"] = backlog(
                cluster,
                server,
                creds,
                names,
                ops,
                lifetime=lifetime,
                token_rate=args.token_rate,
                resources=resources,
            )
            print_section(
                "backlog: every credential's refresh requested while stopped", result["backlog"]
            )
        ops.stop()
        for spy in spies:
            spy.wait(30)
        logs = sorted(work.glob("operator-*.log"))
        counts = {p.name: log_counts(p) for p in logs}
        result["operator_error_lines"] = sum(c["ERROR"] for c in counts.values())
        if ops.ha:
            result["operator_error_lines_per_log"] = {n: c["ERROR"] for n, c in counts.items()}
        # Per start (1: cold start; 2: restart to steady window; 3: backlog): WARNING lines
        # and, among them, tokens that expired before their refresh.
        result["operator_log_lines"] = counts
        print_section("operator log lines per start", counts)
        result["bench_watch_reconnects"] = dict(creds.reconnects + secrets_.reconnects)
        creds.stop()
        secrets_.stop()
    ops.close()
    return result


def log_counts(path: pathlib.Path) -> dict[str, int]:
    """An operator log's ERROR and WARNING lines, and the tokens it reports expired."""
    counts = dict.fromkeys(("ERROR", "WARNING", "expired"), 0)
    for line in path.read_text(errors="replace").splitlines():
        if " ERROR " in line:
            counts["ERROR"] += 1
        elif " WARNING " in line:
            counts["WARNING"] += 1
            counts["expired"] += ": token expired at " in line
    return counts


def backlog(
    cluster: LocalCluster,
    server: FastTokenEndpoint,
    creds: CredentialWatcher,
    names: list[str],
    ops: Replicas,
    *,
    lifetime: float,
    token_rate: float,
    resources: tuple[str, ...],
) -> dict[str, Any]:
    """A backlog: the operator stopped, every credential's refresh requested meanwhile, the
    operator started; the time until each has handled its request
    (status.handledRefreshRequest), on top of the refreshes that come due meanwhile. Issue
    19: it drains within one token lifetime; the floor is N / --token-rate. Submitting the
    requests while the operator runs measures the harness and the API server instead: 10,000
    patches took 355 s that way, while the operator handled each as it came."""
    ops.stop()
    value = f"backlog-{int(time.time())}"
    submit0 = time.time()
    asyncio.run(request_refreshes(cluster, names, value, BACKLOG_SUBMIT_RATE))
    submitted = time.time() - submit0
    tokens0, cpu0, t0 = server.requests, process_cpu(cluster), time.time()
    api0 = api_requests(cluster, resources)
    with creds.lock:
        expiry = {name: creds.expires_at.get(name) for name in names}
    ops.start(run=3)
    cpu_op0 = ops.cpu()
    spies = profiles(ops, "backlog", len(names), 40)  # the ramp: its first 40 s

    def handled() -> int:
        with creds.lock:
            return sum(1 for name in names if creds.handled.get(name) == value)

    done = wait_for(lambda: handled() >= len(names), timeout=max(900.0, 3 * lifetime), step=0.5)
    t1 = done or time.time()
    cpu1, cpu_op1 = process_cpu(cluster), ops.cpu()
    api = split_leases(api_delta(api0, api_requests(cluster, resources)))[0]
    for spy in spies:
        spy.wait(60)
    with creds.lock:
        handled_at = {n: creds.handled_since[n] for n in names if creds.handled.get(n) == value}
    return {
        "credentials": len(names),
        "requests_submitted_in_seconds": round(submitted, 1),
        "drained_seconds": round(t1 - t0, 1) if done else None,
        "handled": handled(),
        **expiries(expiry, handled_at, t0),
        "floor_seconds": round(len(names) / token_rate, 1),
        "lifetime_seconds": lifetime,
        "drained_within_a_lifetime": bool(done and t1 - t0 <= lifetime),
        "token_requests": server.requests - tokens0,
        "api_requests": api,
        "peak_token_requests_per_second": server.peak_rate(t0, t1),
        "token_requests_per_10_seconds": server.series(t0, t1, 10),
        "operator_cores": round((sum(cpu_op1) - sum(cpu_op0)) / (t1 - t0), 3),
        "other_cores": cores_between(cpu0, cpu1, t1 - t0),
    }


def expiries(
    expiry: dict[str, float | None], handled_at: dict[str, float], t0: float
) -> dict[str, Any]:
    """How the backlog's order met the tokens' expiries: the seconds each token had left
    when the operator started (``t0``), and the tokens whose refresh (their request handled,
    as seen on the watch) came after they expired, with the longest such gap."""
    left = sorted(at - t0 for at in expiry.values() if at is not None)
    overrun = [
        handled_at[name] - at
        for name, at in expiry.items()
        if at is not None and name in handled_at and handled_at[name] > at
    ]
    return {
        "token_seconds_left_at_start": {
            "min": round(left[0], 1),
            "p50": round(statistics.median(left), 1),
            "max": round(left[-1], 1),
        }
        if left
        else None,
        "expired_before_refresh": len(overrun),
        "expired_longest_seconds": round(max(overrun, default=0.0), 1),
    }


def process_cpu(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds so far of each control-plane process and of this harness (which also
    runs the token endpoint and the watches)."""
    pids = {name: proc.pid for name, proc in cluster.processes.items()}
    pids["harness and token endpoint"] = os.getpid()
    return {name: Sampler.read(pid)[0] for name, pid in pids.items()}


def machine_cpu() -> dict[str, float]:
    """The whole machine's CPU seconds so far (/proc/stat): busy, and stolen by the
    hypervisor. A run on a VM whose neighbours take its CPU is slower for no fault of the
    code; the steal says so."""
    fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return {"busy": (user + nice + system + irq + softirq) / TICK, "steal": steal / TICK}


def machine_cores(before: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores busy and stolen on average since ``before`` (a :func:`machine_cpu`)."""
    after = machine_cpu()
    return {f"{k}_cores": round((after[k] - before[k]) / max(seconds, 1e-9), 3) for k in before}


def cores_between(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    return {name: round((after[name] - before[name]) / seconds, 3) for name in before}


def replica_figures(cluster: LocalCluster, per: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-replica figures of a phase, their totals, and the shard Leases' holders."""
    totals: dict[str, Any] = {}
    for key in per[0]:
        values = [p[key] for p in per]
        if all(isinstance(v, int | float) for v in values):
            totals[key] = round(sum(values), 3)
    return {"per_replica": per, "totals": totals, "lease_holders": lease_holders(cluster)}


def profiles(ops: Replicas, phase: str, n: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy for each replica (BENCH_PYSPY), named as before with one replica."""
    spies = []
    for i, op in enumerate(ops.ops):
        name = f"{phase}-n{n}" + (f"-r{i}" if ops.count > 1 else "")
        spy = profile(op, name, seconds)
        if spy is not None:
            spies.append(spy)
    return spies


def time_to_ready(
    cluster: LocalCluster,
    server: FastTokenEndpoint,
    creds: CredentialWatcher,
    watcher: SecretWatcher,
    count: int,
) -> dict[str, Any]:
    """Create to target Secret seen, one credential at a time, against the floor.

    The floor is one token request, one Secret create and its delivery through the same
    watch, made by this harness. It leaves out what any operator waits for before it can
    start: the ClientCredential's own create and its delivery through a watch. So each
    credential's time is also cut into steps, from the create request's start: the create
    request's round trip, the ClientCredential seen on this harness's watch (as the
    operator's watch would see it), the token request's arrival at the endpoint, the Secret
    seen, and Ready seen (after the status write). The full floor adds the median of the
    second step to the floor's (issue 19).
    """
    ctx = admin_ssl(cluster)
    floor, latencies = [], []
    steps: dict[str, list[float]] = collections.defaultdict(list)
    with httpx.Client(base_url=cluster.server, verify=ctx) as kube, httpx.Client() as http:
        for i in range(count):
            t0 = time.time()
            r = http.post(
                server.url, data={"grant_type": "client_credentials"}, auth=("floor", "floor")
            )
            token = r.json()["access_token"]
            kube.post(
                SECRET_PATH,
                json={
                    "metadata": {
                        "name": f"floor-{i}",
                        "labels": {"app.kubernetes.io/managed-by": "tokensync"},
                    },
                    "stringData": {"access_token": token},
                },
            ).raise_for_status()
            # Seen through the same watch as the operator's Secrets: the same clock path.
            seen = wait_for(lambda i=i: f"floor-{i}" in watcher.first_seen, 30, step=0.001)
            if seen is not None:
                floor.append(watcher.first_seen[f"floor-{i}"] - t0)
        kube.post(
            SECRET_PATH,
            json={
                "metadata": {
                    "name": "ttr-client",
                    "labels": {"tokensync.dev/client-secret": "true"},
                    "annotations": {"tokensync.dev/allowed-destinations": server.url},
                },
                "stringData": {"client_id": "ttr", "client_secret": "ttr"},
            },
        ).raise_for_status()
        for i in range(count):
            name = f"ttr-{i:04d}"
            body = credential(name, server.url)
            body["spec"]["clientSecretRef"]["name"] = "ttr-client"
            t0 = time.time()
            kube.post(CC_PATH, json=body).raise_for_status()
            created = time.time()
            seen = wait_for(lambda n=name: f"{n}-token" in watcher.first_seen, 30, step=0.001)
            if seen is None:
                continue
            ready = wait_for(lambda n=name: n in creds.ready_at, 30, step=0.001)
            latencies.append(watcher.first_seen[f"{name}-token"] - t0)
            marks = {
                "create_returned": created,
                "credential_seen": creds.first_seen.get(name),
                "token_requested": server.last_request.get("ttr"),
                "secret_seen": watcher.first_seen[f"{name}-token"],
                "ready_seen": creds.ready_at.get(name) if ready is not None else None,
            }
            for step, at in marks.items():
                if at is not None and at >= t0:
                    steps[step].append(at - t0)
    p50, fp50 = statistics.median(latencies), statistics.median(floor)
    seen_p50 = statistics.median(steps["credential_seen"] or [0.0])
    return {
        "operator": summary(latencies),
        "floor": summary(floor),
        "ratio_p50": round(p50 / fp50, 2),
        "full_floor_p50": round(seen_p50 + fp50, 4),
        "ratio_p50_to_full_floor": round(p50 / (seen_p50 + fp50), 2),
        # Milliseconds from the create request's start to each step, median of the count.
        "steps_p50_ms": {k: round(statistics.median(v) * 1000, 2) for k, v in steps.items() if v},
    }


def mem_total_mib() -> int:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def print_section(title: str, figures: dict[str, Any]) -> None:
    print(f"== {title}")
    for key, value in figures.items():
        if key == "per_replica":
            for i, one in enumerate(value):
                print(f"  replica {i}: {json.dumps(one)}")
        else:
            print(f"  {key}: {json.dumps(value)}")


def plot() -> pathlib.Path:
    import matplotlib  # noqa: PLC0415 -- only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    newest: dict[int, dict[str, Any]] = {}
    # Runs with several replicas or shards: points of their own, per (replicas, shards).
    sharded: dict[tuple[int, int], dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for path in sorted(OUT.glob("*.json")):
        data = json.loads(path.read_text())
        if "steady" not in data:
            continue
        layout = (data.get("replicas", 1), data.get("shards", 1))
        if layout == (1, 1):
            newest[data["n"]] = data
        else:
            sharded[layout][data["n"]] = data
    ns = sorted(newest)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
        left.plot(
            ns,
            [newest[n]["steady"]["lateness_secret_written_seconds"][key] for n in ns],
            marker="o",
            label=label,
        )
    for (replicas, shards), runs in sorted(sharded.items()):
        xs = sorted(runs)
        left.plot(
            xs,
            [runs[n]["steady"]["lateness_secret_written_seconds"]["p99"] for n in xs],
            marker="s",
            linestyle="none",
            label=f"p99, {replicas} replicas ({shards} shards)",
        )
    left.axhline(2.0, color="grey", linestyle="--", label="target p99")
    left.set(
        xscale="log",
        xlabel="credentials",
        ylabel="seconds",
        title="refresh lateness: Secret written - due\n(due times in status to the millisecond; before decision 0064 to the second, an upper bound)",
    )
    left.legend()
    right.plot(
        ns, [newest[n]["steady"]["rss_peak_mib"] for n in ns], marker="o", label="peak (VmHWM)"
    )
    right.plot(
        ns, [newest[n]["steady"]["rss_steady_mib"] for n in ns], marker="o", label="steady (VmRSS)"
    )
    for (replicas, shards), runs in sorted(sharded.items()):
        xs = sorted(runs)
        right.plot(
            xs,
            [runs[n]["steady"]["rss_peak_mib"] for n in xs],
            marker="s",
            linestyle="none",
            label=f"peak, largest of {replicas} replicas ({shards} shards)",
        )
    right.axhline(256, color="grey", linestyle="--", label="target")
    right.set(xscale="log", xlabel="credentials", ylabel="MiB", title="operator resident memory")
    right.legend()
    fig.tight_layout()
    target = REPO / "docs" / "performance.png"
    fig.savefig(target, dpi=100)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="credentials")
    parser.add_argument("--token-rate", type=float, default=100.0, help="operator --token-rate")
    parser.add_argument("--refresh-rate", type=float, default=25.0, help="steady refreshes/s")
    parser.add_argument("--window", type=float, default=60.0, help="steady-state window (s)")
    parser.add_argument("--ttr", type=int, default=100, help="credentials for time to Ready")
    parser.add_argument("--cold-timeout", type=float, default=900.0)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--operator-args", default="", help="more operator flags, e.g. '--workers=32'"
    )
    parser.add_argument(
        "--no-backlog",
        dest="backlog",
        action="store_false",
        help="skip the last phase: every credential's refresh requested at once",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="operator processes (leader election above 1)"
    )
    parser.add_argument(
        "--shards", type=int, default=1, help="operator --shards (leader election above 1)"
    )
    parser.add_argument("--plot", action="store_true", help="only draw docs/performance.png")
    args = parser.parse_args()
    if args.replicas < 1 or args.shards < 1:
        parser.error("--replicas and --shards must be at least 1")
    if args.plot:
        print(plot())
        return 0
    result = run(args)
    OUT.mkdir(parents=True, exist_ok=True)
    layout = f"-r{args.replicas}s{args.shards}" if (args.replicas, args.shards) != (1, 1) else ""
    path = OUT / f"{time.strftime('%Y%m%dT%H%M%S')}-n{args.n}{layout}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
