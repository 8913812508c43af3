"""Scale figures on the real local control plane (issue 6). Prints figures; asserts nothing.

``make bench`` runs it with 1,000 credentials, ``make bench-scale`` with 10,000. Phases:

a. Cold start: N client Secrets and N ClientCredentials are created (concurrently, by the
   admin) before the operator starts; then: time until every target Secret exists and every
   credential is Ready, token requests, API requests by verb/resource (apiserver_request_total).
e. In the same phase, the token endpoint's peak requests per 1-s bucket against --token-rate.
c. Restart with valid tokens: operator stopped and started; token requests (target 0) and the
   time until every credential is scheduled again (the health probe's credential count).
f. Time to Ready for 100 credentials created one at a time (with N present) vs the floor.
b/d. Steady state: lifetimes set so that about --refresh-rate refreshes happen per second;
   refresh lateness (operator histogram, and Secret write seen by a watch minus the due time
   in status, which is truncated to the second), CPU and RSS, and cost per refresh.

Figures go to stdout and to bench/out/<timestamp>.json; ``--plot`` draws lateness and memory
against N from the newest result file for each N.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import math
import os
import pathlib
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
from kubernetes import config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import contextlib

from quick import pct
from tokenendpoint import FastTokenEndpoint

from localcluster import LocalCluster
from support.operatorproc import (
    OperatorProcess,
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


def api_requests(cluster: LocalCluster) -> collections.Counter[tuple[str, str, str]]:
    """apiserver_request_total for our resources by (verb, resource[/subresource], code)."""
    text = httpx.get(f"{cluster.server}/metrics", verify=admin_ssl(cluster)).text
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("resource") in ("secrets", "clientcredentials", "events"):
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
        self.ready_at: dict[str, float] = {}
        self.dues: dict[str, list[float]] = collections.defaultdict(list)
        self.handled: dict[str, str | None] = {}

    def handle(self, type_: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
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
        self.handled[name] = st.get("handledRefreshRequest")


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
    """Force a refresh of every credential, ``rate`` per second (spreads the next cycles)."""
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(
        base_url=cluster.server, verify=admin_ssl(cluster), limits=limits, timeout=60
    ) as http:
        start = time.monotonic()
        tasks = []
        for i, name in enumerate(names):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(
                asyncio.create_task(
                    http.patch(
                        f"{CC_PATH}/{name}",
                        json={
                            "metadata": {
                                "annotations": {"tokensync.dev/refresh-requested-at": value}
                            }
                        },
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                )
            )
        for r in await asyncio.gather(*tasks):
            r.raise_for_status()


def profile(op: OperatorProcess, name: str, seconds: float) -> subprocess.Popen[bytes] | None:
    """With BENCH_PYSPY=<dir>: sample the operator with py-spy (speedscope JSON) meanwhile.

    Only samples holding the GIL are kept (``--gil``): the operator is bound by the GIL, and
    threads waiting for a response in C code (SSL reads) would otherwise count as busy.
    """
    target = os.environ.get("BENCH_PYSPY")
    exe = pathlib.Path(sys.executable).parent / "py-spy"
    if not target or not exe.exists():
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
        "machine": {"nproc": os.cpu_count(), "mem_total_mib": mem_total_mib()},
    }
    op_args = [f"--token-rate={args.token_rate}"]
    sampler = Sampler()
    with LocalCluster() as cluster, FastTokenEndpoint(lifetime=3600) as server:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        apply_files(api, sorted((REPO / "crds").glob("*.yaml")))
        kubeconfig = install_operator_identity(cluster, api, work / "sa.kubeconfig")
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
        api0, tok0 = api_requests(cluster), server.requests
        t_start = time.time()
        op = OperatorProcess(
            kubeconfig=kubeconfig,
            log_path=work / "operator-1.log",
            extra_args=op_args,
            verbose=args.verbose,
        ).start(timeout=120)
        sampler.pid = operator_pid(op)
        spy = profile(op, f"cold-n{n}", 60 if n < 5000 else 150)
        t_all = wait_for(
            lambda: len(creds.ready_at) >= n and len(secrets_.first_seen) >= n,
            args.cold_timeout,
            step=0.1,
        )
        t_end = t_all or time.time()
        time.sleep(2)  # let the last status writes land in the counters
        api1, tok1 = api_requests(cluster), server.requests
        cold_samples = sampler.window(t_start, time.time())
        result["cold_start"] = {
            "all_ready": t_all is not None,
            "ready": len(creds.ready_at),
            "seconds_to_all_ready": round(t_end - t_start, 2),
            "seconds_to_first_ready": round(
                min(creds.ready_at.values(), default=t_end) - t_start, 2
            ),
            "token_requests": tok1 - tok0,
            "api_requests": api_delta(api0, api1),
            "peak_token_requests_per_second": server.peak_rate(t_start, t_end),
            "rss_peak_mib": round(max((s[3] for s in cold_samples), default=0), 1),
            "cpu_seconds": round(cold_samples[-1][1] - cold_samples[0][1], 1)
            if cold_samples
            else None,
        }
        print_section("cold start", result["cold_start"])
        time.sleep(3)
        rss_idle = Sampler.read(operator_pid(op))
        result["rss_after_cold_start_mib"] = round(rss_idle[1], 1)

        # (c) Restart with valid tokens.
        op.stop()
        sampler.pid = None
        tok0, api0 = server.requests, api_requests(cluster)
        t_start = time.time()
        op = OperatorProcess(
            kubeconfig=kubeconfig,
            log_path=work / "operator-2.log",
            extra_args=op_args,
            verbose=args.verbose,
        ).start(timeout=120)
        sampler.pid = operator_pid(op)
        t_sched = wait_for(lambda: queue_size(op) >= n, 300, step=0.1)
        time.sleep(10)
        result["restart"] = {
            "seconds_to_all_scheduled": round(t_sched - t_start, 2) if t_sched else None,
            "token_requests": server.requests - tok0,
            "api_requests": api_delta(api0, api_requests(cluster)),
            "rss_mib": round(Sampler.read(operator_pid(op))[1], 1),
        }
        print_section("restart with valid tokens (10 s after all scheduled)", result["restart"])

        # (f) Time to Ready, one at a time, with N present.
        result["time_to_ready"] = time_to_ready(cluster, server, secrets_, args.ttr)
        print_section("time to Ready (one at a time)", result["time_to_ready"])

        # (b, d) Steady state.
        lifetime = max(60, round(n / (args.refresh_rate * RENEW_MEAN)))
        server.lifetime = lifetime
        spread = n / args.refresh_rate
        print(
            f"steady state: lifetime {lifetime} s, forcing one refresh each at "
            f"{args.refresh_rate}/s ({spread:.0f} s) to spread the cycles"
        )
        t_trigger = time.time()
        asyncio.run(
            request_refreshes(cluster, names, f"steady-{int(t_trigger)}", args.refresh_rate)
        )
        start = t_trigger + max(spread, lifetime * (2 / 3 - 0.1)) + 5
        time.sleep(max(0.0, start - time.time()))
        spy = profile(op, f"steady-n{n}", args.window)
        metrics0 = histogram(op.metrics(), "tokensync_refresh_lateness_seconds")
        api0, tok0, cpu0 = api_requests(cluster), server.requests, Sampler.read(operator_pid(op))[0]
        t0 = time.time()
        time.sleep(args.window)
        t1 = time.time()
        api1, tok1, cpu1 = api_requests(cluster), server.requests, Sampler.read(operator_pid(op))[0]
        metrics1 = histogram(op.metrics(), "tokensync_refresh_lateness_seconds")
        with secrets_.lock:
            writes = [w for w in secrets_.writes if t0 <= w[0] <= t1]
            late = [v for (t, v) in secrets_.lateness if t0 <= t <= t1]
        refreshes = len(writes)
        window_samples = sampler.window(t0, t1)
        api = api_delta(api0, api1)
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
            "cpu_cores": round((cpu1 - cpu0) / (t1 - t0), 3),
            "rss_steady_mib": round(window_samples[-1][2], 1) if window_samples else None,
            "rss_peak_mib": round(max(s[3] for s in sampler.samples), 1),
            "token_requests_per_refresh": round((tok1 - tok0) / max(refreshes, 1), 3),
            "api_requests_per_refresh": {
                k: round(v / max(refreshes, 1), 3) for k, v in api.items()
            },
            "api_requests": api,
            "peak_token_requests_per_second": server.peak_rate(t0, t1),
        }
        result["steady"] = steady
        print_section("steady state", steady)
        op.stop()
        if spy is not None:
            spy.wait(30)
        errors = sum(
            1
            for p in work.glob("operator-*.log")
            for line in p.read_text(errors="replace").splitlines()
            if " ERROR " in line
        )
        result["operator_error_lines"] = errors
        result["bench_watch_reconnects"] = dict(creds.reconnects + secrets_.reconnects)
        creds.stop()
        secrets_.stop()
    sampler.stop()
    return result


def time_to_ready(
    cluster: LocalCluster, server: FastTokenEndpoint, watcher: SecretWatcher, count: int
) -> dict[str, Any]:
    ctx = admin_ssl(cluster)
    floor, latencies = [], []
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
            seen = wait_for(lambda n=name: f"{n}-token" in watcher.first_seen, 30, step=0.001)
            if seen is None:
                continue
            latencies.append(watcher.first_seen[f"{name}-token"] - t0)
    p50, fp50 = statistics.median(latencies), statistics.median(floor)
    return {
        "operator": summary(latencies),
        "floor": summary(floor),
        "ratio_p50": round(p50 / fp50, 2),
    }


def mem_total_mib() -> int:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def print_section(title: str, figures: dict[str, Any]) -> None:
    print(f"== {title}")
    for key, value in figures.items():
        print(f"  {key}: {json.dumps(value)}")


def plot() -> pathlib.Path:
    import matplotlib  # noqa: PLC0415 -- only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    newest: dict[int, dict[str, Any]] = {}
    for path in sorted(OUT.glob("*.json")):
        data = json.loads(path.read_text())
        if "steady" in data:
            newest[data["n"]] = data
    ns = sorted(newest)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
        left.plot(
            ns,
            [newest[n]["steady"]["lateness_secret_written_seconds"][key] for n in ns],
            marker="o",
            label=label,
        )
    left.axhline(2.0, color="grey", linestyle="--", label="target p99")
    left.set(
        xscale="log",
        xlabel="credentials",
        ylabel="seconds",
        title="refresh lateness: Secret written - due\n(upper bound: due times are stored to the second)",
    )
    left.legend()
    right.plot(
        ns, [newest[n]["steady"]["rss_peak_mib"] for n in ns], marker="o", label="peak (VmHWM)"
    )
    right.plot(
        ns, [newest[n]["steady"]["rss_steady_mib"] for n in ns], marker="o", label="steady (VmRSS)"
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
    parser.add_argument("--plot", action="store_true", help="only draw docs/performance.png")
    args = parser.parse_args()
    if args.plot:
        print(plot())
        return 0
    result = run(args)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{time.strftime('%Y%m%dT%H%M%S')}-n{args.n}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
