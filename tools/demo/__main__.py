"""``make demo``: tokensync's main job, live, on a laptop.

Starts a local control plane and a local OAuth token endpoint issuing 30-second tokens,
installs the CRD and the operator's RBAC, applies examples/demo/clientcredential.yaml, runs
the operator under its own ServiceAccount, and prints every change of the target Secret
(a fingerprint of the token, never the token) with the credential's status and events.
Ctrl-C stops and removes everything.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import pathlib
import signal
import sys
import tempfile
import threading
import time
import types
from typing import Any

import yaml
from kubernetes import client, config, watch

from localcluster import BinariesError, ClusterError, LocalCluster
from support.operatorproc import OperatorProcess, apply_files, install_operator_identity
from support.tokenserver import TokenServer

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "demo" / "clientcredential.yaml"
NAMESPACE = "demo"
LIFETIME = 30


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {text}", flush=True)


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def apply_example(api: client.ApiClient, token_url: str) -> str:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    name = ""
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["metadata"]["annotations"]["tokensync.dev/allowed-destinations"] = token_url
            core.create_namespaced_secret(NAMESPACE, doc)
            client_id = doc["stringData"]["client_id"]
        else:
            doc["spec"]["tokenURL"] = token_url
            name = doc["metadata"]["name"]
            custom.create_namespaced_custom_object(
                "tokensync.dev", "v1alpha1", NAMESPACE, "clientcredentials", doc
            )
    say(f"applied {EXAMPLE.relative_to(REPO)} (client {client_id!r}, ClientCredential {name!r})")
    return name


def status_line(api: client.ApiClient, name: str) -> str:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "tokensync.dev", "v1alpha1", NAMESPACE, "clientcredentials", name
    )
    st = obj.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
    return (
        f"Ready={ready.get('status', '?')} ({ready.get('reason', '-')}), "
        f"expiresAt={st.get('expiresAt', '-')}, nextRefreshAt={st.get('nextRefreshAt', '-')}, "
        f"authMethod={st.get('authMethod', '-')}"
    )


def follow(api: client.ApiClient, name: str, target: str, stop: threading.Event) -> int:
    """Print each version of the target Secret and each new event until ``stop``."""
    core = client.CoreV1Api(api)
    seen_events: set[str] = set()
    last_version = ""
    versions = 0
    w = watch.Watch()
    while not stop.is_set():
        for event in w.stream(
            core.list_namespaced_secret,
            NAMESPACE,
            field_selector=f"metadata.name={target}",
            timeout_seconds=2,
        ):
            data = event["object"].data or {}
            version = event["object"].metadata.resource_version
            # Each 2 s re-list repeats the current Secret as ADDED: print real changes only.
            if version != last_version and "access_token" in data:
                last_version = version
                versions += 1
                token = base64.b64decode(data["access_token"]).decode()
                expires = base64.b64decode(data["expires_at"]).decode()
                say(
                    f"Secret {target} v{versions}: token sha256:{fingerprint(token)}… "
                    f"expires_at={expires}"
                )
                time.sleep(0.3)  # let the status patch that follows the Secret land
                say(f"  status: {status_line(api, name)}")
            if stop.is_set():
                break
        for ev in core.list_namespaced_event(NAMESPACE).items:
            if ev.metadata.uid not in seen_events:
                seen_events.add(ev.metadata.uid)
                say(f"  event: {ev.type} {ev.reason}: {ev.message}")
    return versions


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args()
    stop = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-demo-"))
    say("starting a local control plane (kube-apiserver + etcd + controller-manager)")
    try:
        cluster = LocalCluster()
        cluster.start()
    except (BinariesError, ClusterError) as exc:
        print(f"control plane failed: {exc}", file=sys.stderr)
        return 1
    try:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        kubectl = cluster.bins.kubectl or "kubectl"
        say(f"control plane ready: export KUBECONFIG={cluster.kubeconfig}")
        with TokenServer(lifetime=LIFETIME) as server:
            server.add_client("demo-client", "demo-secret-change-me")
            say(f"local token endpoint {server.url} issues {LIFETIME}-second tokens")
            apply_files(api, sorted((REPO / "crds").glob("*.yaml")))
            time.sleep(1)  # the CRD becomes Established
            kubeconfig = install_operator_identity(cluster, api, workdir / "operator.kubeconfig")
            client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
            log = workdir / "operator.log"
            with OperatorProcess(kubeconfig=kubeconfig, log_path=log) as op:
                say(f"operator running as ServiceAccount tokensync-system/tokensync; log: {log}")
                say(f"metrics: http://127.0.0.1:{op.metrics_port}/metrics")
                name = apply_example(api, server.url)
                say(f"try: {kubectl} get ccred -n {NAMESPACE} -o wide")
                say(
                    f"     {kubectl} annotate ccred -n {NAMESPACE} {name} "
                    "tokensync.dev/refresh-requested-at=$(date +%s) --overwrite"
                )
                say("watching the token Secret; Ctrl-C to stop and clean up")
                versions = follow(api, name, f"{name}-token", stop)
                valid = sum(1 for i in server.issued if server.verify(i.access_token))
                say(
                    f"{versions} token versions seen, {len(server.issued)} tokens issued, "
                    f"{valid} still valid"
                )
        api.close()
    finally:
        say("stopping the operator, the token endpoint and the control plane")
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
