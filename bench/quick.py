"""Quick figures on the real local control plane: time to Ready, cost per refresh, memory.

Prints figures; asserts nothing. ``make bench`` runs it with 100 credentials.

1. Time to Ready: credentials created one at a time; time from the create request to the
   target Secret appearing (seen through a watch), against the floor: the same token request
   and Secret create made directly by this script.
2. Cost per refresh: with short token lifetimes, token requests and API requests (by verb and
   resource, from the kube-apiserver's own apiserver_request_total) per refresh.
3. The operator's resident memory with N credentials.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import ssl
import statistics
import sys
import tempfile
import threading
import time

import httpx
from kubernetes import client, config, watch

from localcluster import LocalCluster
from support.operatorproc import OperatorProcess, apply_files, install_operator_identity
from support.tokenserver import TokenServer

REPO = pathlib.Path(__file__).resolve().parents[1]
NS = "bench"
_METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def api_requests(cluster: LocalCluster) -> collections.Counter[tuple[str, str, str]]:
    d = cluster.workdir
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(d / "probe-admin.crt", d / "probe-admin.key")
    text = httpx.get(f"{cluster.server}/metrics", verify=ctx).text
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in re.findall(r'(\w+="[^"]*")', m["labels"]))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("resource") in ("secrets", "clientcredentials", "events"):
            key = (labels["verb"], labels["resource"], labels.get("subresource", ""))
            counts[key] += int(float(m["value"]))
    return counts


class SecretWatcher:
    """Records when each target Secret first appears and how many times it is written."""

    def __init__(self, api: client.ApiClient) -> None:
        self.first_seen: dict[str, float] = {}
        self.writes: collections.Counter[str] = collections.Counter()
        self._w = watch.Watch()
        self._core = client.CoreV1Api(api)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._stream()
        except Exception:
            return

    def _stream(self) -> None:
        for event in self._w.stream(
            self._core.list_namespaced_secret,
            NS,
            label_selector="app.kubernetes.io/managed-by=tokensync",
        ):
            name = event["object"].metadata.name
            self.first_seen.setdefault(name, time.monotonic())
            self.writes[name] += 1

    def stop(self) -> None:
        self._w.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100, help="credentials")
    parser.add_argument("--refresh-window", type=float, default=30.0)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-bench-"))
    with LocalCluster() as cluster, TokenServer(lifetime=3600) as server:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        apply_files(api, sorted((REPO / "crds").glob("*.yaml")))
        kubeconfig = install_operator_identity(cluster, api, work / "sa.kubeconfig")
        core.create_namespace({"metadata": {"name": NS}})
        server.add_client("bench", "bench-secret")
        core.create_namespaced_secret(
            NS,
            {
                "metadata": {
                    "name": "client",
                    "labels": {"tokensync.dev/client-secret": "true"},
                    "annotations": {"tokensync.dev/allowed-destinations": server.url},
                },
                "stringData": {"client_id": "bench", "client_secret": "bench-secret"},
            },
        )
        time.sleep(1)

        # Floor: what a script with no operator needs for the same work.
        floor = []
        with httpx.Client() as http:
            for i in range(20):
                t0 = time.monotonic()
                resp = http.post(
                    server.url,
                    data={"grant_type": "client_credentials"},
                    auth=("bench", "bench-secret"),
                )
                token = resp.json()["access_token"]
                core.create_namespaced_secret(
                    NS, {"metadata": {"name": f"floor-{i}"}, "stringData": {"access_token": token}}
                )
                floor.append(time.monotonic() - t0)

        with OperatorProcess(kubeconfig=kubeconfig, log_path=work / "operator.log") as op:
            watcher = SecretWatcher(api)
            rss_empty = rss_mib(op.proc.pid)  # type: ignore[union-attr]
            latencies = []
            for i in range(args.n):
                name = f"cc-{i:05d}"
                t0 = time.monotonic()
                custom.create_namespaced_custom_object(
                    "tokensync.dev",
                    "v1alpha1",
                    NS,
                    "clientcredentials",
                    {
                        "apiVersion": "tokensync.dev/v1alpha1",
                        "kind": "ClientCredential",
                        "metadata": {"name": name},
                        "spec": {
                            "tokenURL": server.url,
                            "clientSecretRef": {"name": "client"},
                            "refresh": {"minInterval": "1s"},
                        },
                    },
                )
                deadline = t0 + 30
                while f"{name}-token" not in watcher.first_seen and time.monotonic() < deadline:
                    time.sleep(0.001)
                latencies.append(watcher.first_seen[f"{name}-token"] - t0)
            time.sleep(2)
            rss_full = rss_mib(op.proc.pid)  # type: ignore[union-attr]

            # Cost per refresh: short lifetimes, then force one refresh each to pick them up.
            server.lifetime = 9
            for i in range(args.n):
                custom.patch_namespaced_custom_object(
                    "tokensync.dev",
                    "v1alpha1",
                    NS,
                    "clientcredentials",
                    f"cc-{i:05d}",
                    {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "bench"}}},
                )
            time.sleep(5)
            issued0, requests0, api0 = len(server.issued), server.requests, api_requests(cluster)
            time.sleep(args.refresh_window)
            issued1, requests1, api1 = len(server.issued), server.requests, api_requests(cluster)
            watcher.stop()
            log = op.log()

        refreshes = issued1 - issued0
        print(f"credentials: {args.n}")
        print(
            f"time to Ready (create -> Secret): p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p99 {pct(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        )
        print(
            f"floor (token request + Secret create, no operator): p50 {statistics.median(floor) * 1000:.0f} ms; "
            f"ratio {statistics.median(latencies) / statistics.median(floor):.1f}x"
        )
        print(
            f"operator RSS: {rss_empty:.1f} MiB empty, {rss_full:.1f} MiB with {args.n} credentials "
            f"({(rss_full - rss_empty) * 1024 / args.n:.1f} KiB each)"
        )
        print(
            f"refresh window {args.refresh_window:.0f} s: {refreshes} refreshes, "
            f"{(requests1 - requests0) / max(refreshes, 1):.2f} token requests per refresh"
        )
        for key in sorted(set(api1) | set(api0)):
            delta = api1[key] - api0[key]
            if delta:
                verb, resource, sub = key
                print(
                    f"  API {verb:6s} {resource}{'/' + sub if sub else '':20s} {delta:6d}  "
                    f"{delta / max(refreshes, 1):.2f} per refresh"
                )
        print(
            f"operator log lines with ERROR: {sum(1 for line in log.splitlines() if ' ERROR ' in line)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
