"""The operator as a pod on the real node, installed from the shipped manifests (issue 15,
docs/decisions/0039).

The image is the one ``make image`` builds from the Dockerfile without a Docker daemon
(hack/build-image.sh), imported into the node's containerd. The install is ``kubectl apply
--server-side -k`` of a kustomization written here whose resource is
tests/e2e/data/operator-pod (deploy/overlays/cluster-wide with the local image,
``--allow-insecure-http`` and the ServiceAccount token volume) and which adds what depends
on the running node: the node's name (no scheduler), the address and port at which pods
reach the API server (no kube-proxy: ``KUBERNETES_SERVICE_HOST``/``_PORT``), the
allowance ``--allow-private-network=<host address>`` for the test's token endpoint, and the
cluster's CA as the ``kube-root-ca.crt`` ConfigMap. Then:

- the Deployment's two pods run in tokensync-system, which enforces Pod Security
  "restricted", as the ServiceAccount tokensync; the kubelet's liveness and readiness
  probes pass;
- their metrics are served at the pods' IPs; exactly one pod holds the shard's Lease
  (``tokensync_leader`` 1), the other stands by (issue 18);
- a ClientCredential becomes Ready against a token server on this machine's loopback,
  which the pods reach through the node's relay; only the leader sends a token request;
- once the leader's pod is deleted (a graceful stop, as a drain or a rollout does it),
  another replica takes the Lease over and the credential without a single token request
  (its token is still valid): the standby, or the Deployment's replacement pod when it
  joins first; the other one stands by.

There is no scheduler here: both pods are bound to the one node, so the Deployment's
preferred spread over nodes has nothing to choose. The times from pod creation to Ready,
and from the leader's deletion to the new leader's leadership, are printed (``FIGURES``) and
appended as JSON lines to ``TOKENSYNC_POD_FIGURES`` when set (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import re
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import LocalCluster, Node
from localcluster.cluster import Process, free_port
from support.manifests import OPERATOR_NAMESPACE, Kubectl
from support.polling import wait_for
from support.testenv import Env
from support.tokenserver import TokenServer

pytestmark = [pytest.mark.e2e, pytest.mark.node]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-image.sh"
OVERLAY = pathlib.Path(__file__).parent / "data" / "operator-pod"
IMAGE = "tokensync.local/tokensync:dev"
SELECTOR = "app.kubernetes.io/name=tokensync,app.kubernetes.io/component=operator"
RESTRICTED = "pod-security.kubernetes.io/enforce"
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Waits for pods: a cold start of the image takes a few seconds on two busy cores.
POD_TIMEOUT = 120.0
#: The Deployment's replicas (deploy/base/deployment.yaml): a leader and a warm standby.
REPLICAS = 2
#: The operator's default lease duration and retry period (seconds): a standby takes a
#: Lease over at the latest this long after its holder stopped renewing it.
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0


def figures(**values: Any) -> None:
    line = json.dumps(values, sort_keys=True)
    print(f"\nFIGURES {line}")
    target = os.environ.get("TOKENSYNC_POD_FIGURES")
    if target:
        with pathlib.Path(target).open("a") as out:
            out.write(line + "\n")


# -- the image ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_archive() -> pathlib.Path:
    """The OCI archive `make image` writes (built now unless cached: about a minute cold)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=False,
        env={**os.environ, "TOKENSYNC_IMAGE": IMAGE},
    )
    assert result.returncode == 0, "hack/build-image.sh failed; see its messages above"
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


@dataclass
class ImageMetadata:
    name: str  # what containerd names the image it imports
    config_digest: str  # the image ID the kubelet reports
    config: dict[str, Any]


def image_metadata(archive: pathlib.Path) -> ImageMetadata:
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> Any:
            member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None, digest
            return json.load(member)

        index = tar.extractfile("index.json")
        assert index is not None
        (entry,) = json.load(index)["manifests"]
        manifest = blob(entry["digest"])
        digest = manifest["config"]["digest"]
        return ImageMetadata(entry["annotations"]["io.containerd.image.name"], digest, blob(digest))


def test_image_is_named_for_containerd_and_runs_as_65532(image_archive: pathlib.Path) -> None:
    image = image_metadata(image_archive)
    assert image.name == IMAGE
    assert image.config["config"]["User"] == "65532:65532"
    assert image.config["config"]["Entrypoint"] == ["tokensync", "run"]
    assert "USER=tokensync" in image.config["config"]["Env"]  # see the Dockerfile


# -- the install ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster) -> Kubectl:
    return Kubectl(cluster)


@pytest.fixture(scope="module")
def deployment_controllers(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The Deployment and ReplicaSet controllers, which turn the Deployment into pods.

    The local control plane's controller manager may run only what its other tests need
    (garbage collection, namespaces, ServiceAccounts); then this module runs a second one,
    the same binary, with just these two controllers, for as long as the module runs.
    """
    running = cluster.processes.get("kube-controller-manager")
    controllers = next(
        (a.split("=", 1)[1] for a in (running.argv if running else []) if "--controllers=" in a),
        "",
    ).split(",")
    if running is not None and {"deployment", "replicaset"} <= set(controllers):
        yield
        return
    binary = cluster.bins.kube_controller_manager
    assert binary is not None, "the control plane binaries have no kube-controller-manager"
    workdir = tmp_path_factory.mktemp("kcm-deployments")
    kubeconfig = cluster.write_kubeconfig(
        workdir / "kubeconfig", user="system:kube-controller-manager", groups=("system:masters",)
    )
    proc = Process(
        "kube-controller-manager-deployments",
        [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--controllers=deployment,replicaset",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={workdir / 'certs'}",
            "--v=1",
        ],
        workdir / "kube-controller-manager.log",
    )
    try:
        time.sleep(0.5)
        assert proc.alive(), f"kube-controller-manager exited:\n{proc.log_tail()}"
        yield
    finally:
        proc.stop()


def node_layer(workdir: pathlib.Path, cluster: LocalCluster, node: Node) -> pathlib.Path:
    """A kustomization on top of tests/e2e/data/operator-pod with what this node decides."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ca.crt").write_bytes(cluster.ca.cert_pem)
    container = "/spec/template/spec/containers/0"
    ops = [
        {"op": "add", "path": "/spec/template/spec/nodeName", "value": node.name},
        {
            "op": "add",
            "path": f"{container}/args/-",
            "value": f"--allow-private-network={node.host_ip}",
        },
        *({"op": "add", "path": f"{container}/env/-", "value": e} for e in node.apiserver_env()),
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAY, workdir)],
        # What the root CA publisher of kube-controller-manager writes in every namespace.
        "configMapGenerator": [
            {
                "name": "kube-root-ca.crt",
                "namespace": OPERATOR_NAMESPACE,
                "files": ["ca.crt"],
                "options": {"disableNameSuffixHash": True},
            }
        ],
        "patches": [
            {"target": {"kind": "Deployment", "name": "tokensync"}, "patch": yaml.safe_dump(ops)}
        ],
    }
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return workdir


def operator_pods(core: client.CoreV1Api) -> list[client.V1Pod]:
    """The operator's pods, not yet being deleted."""
    pods = core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=SELECTOR).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def is_ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


@dataclass
class Started:
    """A pod of the operator, and when the test saw it appear, saw its /healthz answer
    (polled every 0.1 s at the pod's IP) and saw the kubelet mark it Ready (the readiness
    probe runs every 5 s)."""

    pod: client.V1Pod
    seen: float
    healthy: float
    ready: float


def healthy(pod: client.V1Pod) -> bool:
    ip = pod.status.pod_ip if pod.status else None
    if not ip:
        return False
    try:
        with urllib.request.urlopen(f"http://{ip}:8081/healthz", timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for_new_pod(core: client.CoreV1Api, previous: set[str]) -> Started:
    """The first operator pod whose UID is not in ``previous``, once it is Ready."""
    deadline = time.monotonic() + POD_TIMEOUT
    seen: dict[str, float] = {}
    first_healthy: dict[str, float] = {}
    while time.monotonic() < deadline:
        for pod in operator_pods(core):
            uid = pod.metadata.uid
            if uid in previous:
                continue
            seen.setdefault(uid, time.monotonic())
            if uid not in first_healthy and healthy(pod):
                first_healthy[uid] = time.monotonic()
            if is_ready(pod):
                now = time.monotonic()
                return Started(pod, seen[uid], first_healthy.get(uid, now), now)
        time.sleep(0.1)
    raise AssertionError(f"no new Ready operator pod within {POD_TIMEOUT:.0f}s: {describe(core)}")


def describe(core: client.CoreV1Api) -> str:
    pods = core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=SELECTOR).items
    lines = [f"{p.metadata.name}: {p.status.phase} {p.status.container_statuses}" for p in pods]
    for pod in pods:
        for previous in (True, False):
            try:
                log = core.read_namespaced_pod_log(
                    pod.metadata.name, OPERATOR_NAMESPACE, previous=previous, tail_lines=20
                )
            except client.ApiException:
                continue
            lines.append(f"log of {pod.metadata.name} (previous={previous}):\n{log}")
    events = core.list_namespaced_event(OPERATOR_NAMESPACE).items
    lines += [f"event {e.involved_object.name}: {e.reason} {e.message}" for e in events[-15:]]
    return "\n".join(lines) or "no pods"


@dataclass
class Install:
    directory: pathlib.Path
    first: Started
    applied: float
    #: Every replica, in the order they became Ready (``first`` is the first of them).
    started: list[Started]


@pytest.fixture(scope="module")
def installed(
    cluster: LocalCluster,
    node: Node,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    crds: None,
    image_archive: pathlib.Path,
    deployment_controllers: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Install]:
    """The operator installed with `kubectl apply -k` and its pod Ready; removed after."""
    node.import_image(image_archive)
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    directory = node_layer(tmp_path_factory.mktemp("operator-pod") / "install", cluster, node)
    previous = {p.metadata.uid for p in operator_pods(core)}
    applied = time.monotonic()
    kubectl.run("apply", "--server-side", "--force-conflicts", "-k", str(directory))
    try:
        first = wait_for_new_pod(core, previous)
        figures(
            what="operator pod, first start",
            apply_to_ready_s=round(first.ready - applied, 2),
            pod_seen_to_healthz_s=round(first.healthy - first.seen, 2),
            pod_seen_to_ready_s=round(first.ready - first.seen, 2),
        )
        started = [first]
        while len(started) < REPLICAS:
            started.append(wait_for_new_pod(core, previous | {s.pod.metadata.uid for s in started}))
        yield Install(directory, first, applied, started)
    finally:
        # The Deployment goes (its ReplicaSet and pod with it), so that no operator pod
        # keeps reconciling other modules' credentials; the rest of the install stays, as
        # test_deploy leaves its own.
        apps.delete_namespaced_deployment(
            "tokensync", OPERATOR_NAMESPACE, propagation_policy="Foreground"
        )
        wait_for(
            lambda: not core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=SELECTOR).items,
            timeout=60,
            interval=0.25,
            what="the operator's pods gone",
        )


class LogFollower:
    """A pod's log, followed from now on in a thread, and kept after the pod is deleted
    (the kubelet removes a deleted pod's log with it)."""

    def __init__(self, core: client.CoreV1Api, pod: client.V1Pod) -> None:
        self.name = pod.metadata.name
        self.lines: list[str] = []
        # Its own connection, never given back to the shared pool: close() ends it.
        self._response = core.read_namespaced_pod_log(
            self.name,
            OPERATOR_NAMESPACE,
            follow=True,
            since_seconds=60,
            _preload_content=False,
            _request_timeout=(5, 60),
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        partial = b""
        try:
            for chunk in self._response.stream():
                *complete, partial = (partial + chunk).split(b"\n")
                self.lines.extend(line.decode(errors="replace") for line in complete)
        except Exception as exc:  # the stream ends with the pod, or with close()
            self.lines.append(f"(log stream ended: {type(exc).__name__})")

    def close(self) -> None:
        # A close alone would wait for the reader's lock, held until the next line comes;
        # shutting the socket down ends the read. Refused once the stream has ended.
        with contextlib.suppress(RuntimeError, ValueError):
            self._response.shutdown()
        self._thread.join(timeout=5)
        self._response.close()  # the connection is not given back to the pool

    def __str__(self) -> str:
        return f"log of {self.name} (its last 80 lines):\n" + "\n".join(self.lines[-80:])

    def seconds_after(self, since: float, text: str) -> float | None:
        """When the first line holding ``text`` logged at or after the wall-clock time
        ``since`` was logged, in seconds after it: the operator logs to the millisecond in
        local time, which is UTC in the image, and the pod and the test share this
        machine's clock."""
        for line in self.lines:
            if text not in line:
                continue
            try:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                continue
            after = stamp.replace(tzinfo=datetime.UTC).timestamp() - since
            if after >= -0.01:  # the log's milliseconds, truncated
                return round(after, 2)
        return None


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def pod_metrics(pod: client.V1Pod) -> str:
    """The pod's metrics, or "" while it has no address or does not answer."""
    ip = pod.status.pod_ip if pod.status else None
    if not ip:
        return ""
    try:
        return scrape(f"http://{ip}:8080/metrics")
    except OSError:
        return ""


def leads(pod: client.V1Pod) -> bool | None:
    """Whether the pod holds a shard (``tokensync_leader``); None while it does not say."""
    value = samples(pod_metrics(pod), "tokensync_leader").get("")
    return None if value is None else value == 1


def leader_and_standbys(core: client.CoreV1Api) -> tuple[client.V1Pod, list[client.V1Pod]] | None:
    """The one Ready pod that leads and the Ready ones that stand by, once every Ready pod
    says which it is and exactly one leads; None until then."""
    pods = [p for p in operator_pods(core) if is_ready(p)]
    answers = [(pod, leads(pod)) for pod in pods]
    if any(answer is None for _, answer in answers):
        return None
    leaders = [pod for pod, answer in answers if answer]
    if len(leaders) != 1:
        return None
    return leaders[0], [pod for pod, answer in answers if not answer]


def samples(text: str, name: str) -> dict[str, float]:
    """``name``'s samples in a Prometheus text exposition: {labels text: value}."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def successes(metrics: str) -> float:
    """Token requests the operator counted as successful (any credential's: other modules'
    credentials may linger in the shared cluster, but their endpoints are gone or refused,
    so they only ever add errors)."""
    requests = samples(metrics, "tokensync_token_requests_total")
    return sum(v for labels, v in requests.items() if 'result="success"' in labels)


def probe_results(node: Node, pod: client.V1Pod, probe: str) -> dict[str, float]:
    """The kubelet's probe counters for the operator's container: {result: count}."""
    text = node.kubelet_get("/metrics/probes")
    results = {}
    for labels, value in samples(text, "prober_probe_total").items():
        if (
            f'pod="{pod.metadata.name}"' in labels
            and f'probe_type="{probe}"' in labels
            and 'container="tokensync"' in labels
        ):
            results[re.search(r'result="([^"]+)"', labels).group(1)] = value  # type: ignore[union-attr]
    return results


def test_pod_runs_restricted_as_its_service_account_with_passing_probes(
    installed: Install, node: Node, api_client: client.ApiClient, image_archive: pathlib.Path
) -> None:
    core = client.CoreV1Api(api_client)
    pod = installed.first.pod
    namespace = core.read_namespace(OPERATOR_NAMESPACE)
    assert namespace.metadata.labels[RESTRICTED] == "restricted"
    # The control: in that namespace, a pod without the security settings is refused.
    loose = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "loose"},
        "spec": {
            "nodeName": node.name,
            "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never"}],
        },
    }
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(OPERATOR_NAMESPACE, loose, dry_run="All")
    assert refused.value.status == 403
    assert "violates PodSecurity" in refused.value.body

    assert pod.spec.service_account_name == "tokensync"
    assert pod.spec.node_name == node.name
    (container,) = pod.spec.containers
    assert container.image == IMAGE
    assert container.image_pull_policy == "Never"
    token_mounts = [m for m in container.volume_mounts if m.mount_path == SA_TOKEN_DIR]
    assert len(token_mounts) == 1
    (status,) = pod.status.container_statuses
    assert status.ready
    assert status.state.running is not None
    assert status.restart_count == 0
    assert (status.user.linux.uid, status.user.linux.gid) == (65532, 65532)
    assert status.image_id.endswith(image_metadata(image_archive).config_digest)

    # The kubelet's probes: readiness has passed (the pod is Ready; its first probes, while
    # Python starts, may fail), liveness is first probed 15 s after the start and must pass.
    def liveness() -> dict[str, float] | None:
        results = probe_results(node, pod, "Liveness")
        return results if results.get("successful") else None

    live = wait_for(liveness, timeout=45, interval=1, what="a successful liveness probe")
    assert set(live) == {"successful"}, live
    assert probe_results(node, pod, "Readiness").get("successful")
    pod = core.read_namespaced_pod(pod.metadata.name, OPERATOR_NAMESPACE)
    assert pod.status.container_statuses[0].restart_count == 0

    # Metrics, scraped at the pod's IP (this machine routes the node's bridge).
    text = scrape(f"http://{pod.status.pod_ip}:8080/metrics")
    assert "tokensync_refresh_queue_size" in text
    assert samples(text, "tokensync_refresh_queue_size")


def test_one_pod_leads_and_the_other_stands_by(
    installed: Install, api_client: client.ApiClient
) -> None:
    """Both replicas run and are Ready; one holds the shard's Lease, named after its pod
    (POD_NAME from the downward API), in the operator's namespace (POD_NAMESPACE)."""
    core = client.CoreV1Api(api_client)
    assert len(installed.started) == REPLICAS
    for started in installed.started:
        pod = core.read_namespaced_pod(started.pod.metadata.name, OPERATOR_NAMESPACE)
        assert is_ready(pod)
        assert pod.status.container_statuses[0].restart_count == 0
    leader, standbys = wait_for(
        lambda: leader_and_standbys(core), timeout=30, interval=0.5, what="one leader"
    )
    assert len(standbys) == REPLICAS - 1
    for standby in standbys:
        assert samples(pod_metrics(standby), "tokensync_shards_held") == {"": 0}
    assert samples(pod_metrics(leader), "tokensync_shards_held") == {"": 1}
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(
        "tokensync-shard-0", OPERATOR_NAMESPACE
    )
    assert lease.spec.holder_identity.startswith(leader.metadata.name)


@pytest.fixture
def token_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    # Authlib serves plain HTTP only to requests addressed to loopback; the pod's arrive
    # through the node's relay, addressed to the host address.
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    with TokenServer(lifetime=3600) as server:
        server.add_client("operator-pod-client", "operator-pod-secret")
        yield server


def test_credential_ready_and_another_replica_takes_over_without_token_requests(
    installed: Install,
    node: Node,
    api_client: client.ApiClient,
    namespace: str,
    token_server: TokenServer,
) -> None:
    core = client.CoreV1Api(api_client)
    env = Env(api_client, namespace, timeout=60, interval=0.2)
    # The token server listens on 127.0.0.1; the pods reach it at the node's host address.
    url = node.reach(token_server.url)
    env.secret(
        "oauth-client",
        {"client_id": "operator-pod-client", "client_secret": "operator-pod-secret"},
        destinations=url,
    )
    env.create_credential("api", {"tokenURL": url, "clientSecretRef": {"name": "oauth-client"}})
    env.wait_ready()
    token = env.token()
    assert token is not None
    assert token_server.verify(token)
    expires_at = env.status()["expiresAt"]
    issued = token_server.requests
    assert issued == 1

    # The leader sent it; the standby sent nothing.
    leader, (standby,) = wait_for(
        lambda: leader_and_standbys(core), timeout=30, interval=0.5, what="one leader"
    )
    assert successes(pod_metrics(leader)) == 1
    assert successes(pod_metrics(standby)) == 0

    # The leader's pod deleted as a drain or a rollout deletes it: SIGTERM, and the operator
    # hands its Lease over as it stops. Another replica takes it over within a retry period
    # of the release; at the latest, had the release been lost, a lease duration after the
    # last renewal plus a retry period. Usually the standby; the Deployment's replacement
    # pod when its first round comes before the standby's next one (it starts in under 2 s
    # here, and a replica joins only once it has listed every credential: both are warm).
    def successor() -> client.V1Pod | None:
        for pod in operator_pods(core):  # the deleted leader is not among them
            if pod.metadata.uid != leader.metadata.uid and leads(pod):
                return pod
        return None

    logs = [LogFollower(core, pod) for pod in (leader, standby)]
    deleted, deleted_wall = time.monotonic(), time.time()
    core.delete_namespaced_pod(leader.metadata.name, OPERATOR_NAMESPACE)
    try:
        new_leader = wait_for(
            successor,
            timeout=LEASE_DURATION + RETRY_PERIOD + 5,
            interval=0.1,
            what="another replica taking the Lease over",
        )
        took_over = time.monotonic()
    except AssertionError as exc:
        try:
            lease: object = (
                client.CoordinationV1Api(api_client)
                .read_namespaced_lease("tokensync-shard-0", OPERATOR_NAMESPACE)
                .spec
            )
        except client.ApiException as read_failed:
            lease = f"not read: HTTP {read_failed.status}"
        for log in logs:
            log.close()
        told = "\n".join(map(str, logs))
        raise AssertionError(f"{exc}\nshard Lease: {lease}\n{told}") from None
    replacement = wait_for_new_pod(
        core,
        {
            leader.metadata.uid,
            standby.metadata.uid,
            *(s.pod.metadata.uid for s in installed.started),
        },
    )
    by_standby = new_leader.metadata.uid == standby.metadata.uid
    figures(
        what="operator pods, after the leader's pod was deleted",
        taken_over_by="standby" if by_standby else "replacement",
        delete_to_new_leader_s=round(took_over - deleted, 2),
        # Where that time went, from the pods' logs (the replacement's is not followed).
        delete_to_sigterm_s=logs[0].seconds_after(deleted_wall, "SIGTERM is received"),
        delete_to_hand_over_s=logs[0].seconds_after(deleted_wall, "handing shard 0 over"),
        delete_to_release_s=logs[0].seconds_after(deleted_wall, "released shard 0"),
        delete_to_taken_s=logs[1].seconds_after(deleted_wall, "took shard 0")
        if by_standby
        else None,
        delete_to_replacement_ready_s=round(replacement.ready - deleted, 2),
        pod_seen_to_healthz_s=round(replacement.healthy - replacement.seen, 2),
        pod_seen_to_ready_s=round(replacement.ready - replacement.seen, 2),
    )
    for log in logs:
        log.close()
    other_name = (replacement.pod if by_standby else standby).metadata.name

    def other() -> client.V1Pod:
        return core.read_namespaced_pod(other_name, OPERATOR_NAMESPACE)

    # The new leader lists the credential, reads its token's expiry from status and queues
    # it for its refresh, due long after this test; nothing is sent meanwhile. (Its
    # per-credential gauges stay unset until then: only an attempt's outcome sets them.)
    def queued() -> bool:
        text = pod_metrics(new_leader)
        return sum(samples(text, "tokensync_refresh_queue_size").values()) >= 1

    wait_for(queued, timeout=30, interval=0.5, what="the new leader queueing the credential")
    time.sleep(3)
    assert token_server.requests == issued
    assert successes(pod_metrics(new_leader)) == 0
    assert env.token() == token
    assert env.status()["expiresAt"] == expires_at
    assert env.ready()["status"] == "True"
    # The other replica stands by: one leader still.
    assert wait_for(
        lambda: leads(other()) is False,
        timeout=30,
        interval=0.5,
        what="the other replica standing by",
    )

    # The control: the new leader is the one serving the credential. Asked to refresh, it
    # sends exactly one request, and its metrics count it; the other replica sends none.
    env.force_refresh()
    env.wait_for(lambda: env.token() not in (None, token), what="a refreshed token")
    assert token_server.requests == issued + 1
    assert successes(pod_metrics(new_leader)) == 1
    assert successes(pod_metrics(other())) == 0
