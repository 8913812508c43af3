"""A real node on the local control plane (issue 15): containerd, runc, CNI and a kubelet
that runs a pod from a locally built image, mounts a Secret into it and serves its log.

The module's node is started once on the session's control plane and must leave nothing
behind: no process, mount, network link, cgroup or changed kernel setting.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from localcluster import LocalCluster
from localcluster.images import BUSYBOX_IMAGE
from localcluster.node import Node, apiserver_reaches_kubelets

# TODO(issue 15): also mark these `node` once pyproject.toml registers that marker.
pytestmark = pytest.mark.e2e

GREETING = "hello from a Secret volume"


@pytest.fixture(scope="module")
def node(cluster: LocalCluster) -> Iterator[Node]:
    started = Node(cluster)
    started.start()
    try:
        started.import_image(started.busybox_archive())
        yield started
    finally:
        started.stop()
    leftovers = started.leftovers()
    assert not leftovers, f"the node left these behind: {leftovers}"


def _finished_status(
    core: client.CoreV1Api, namespace: str, name: str, timeout: float = 90
) -> client.V1PodStatus:
    deadline = time.monotonic() + timeout
    phase = None
    while time.monotonic() < deadline:
        status = core.read_namespaced_pod(name, namespace).status
        phase = status.phase if status else None
        if status is not None and phase in ("Succeeded", "Failed"):
            return status
        time.sleep(0.25)
    raise AssertionError(f"pod {namespace}/{name} still {phase} after {timeout}s")


def test_pod_reads_a_secret_volume_and_its_log_is_served(
    node: Node, cluster: LocalCluster, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    secret = f"greeting-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data={"text": GREETING}),
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="reader"),
        spec=client.V1PodSpec(
            node_name=node.name,  # the control plane runs no scheduler
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="reader",
                    image=BUSYBOX_IMAGE,
                    image_pull_policy="Never",  # built here and imported: no registry
                    command=["sh", "-c", "cat /secret/text; echo; ls /secret"],
                    volume_mounts=[
                        client.V1VolumeMount(name="secret", mount_path="/secret", read_only=True)
                    ],
                )
            ],
            volumes=[
                client.V1Volume(
                    name="secret", secret=client.V1SecretVolumeSource(secret_name=secret)
                )
            ],
        ),
    )
    core.create_namespaced_pod(namespace, pod)

    status = _finished_status(core, namespace, "reader")

    assert status.phase == "Succeeded", status
    assert status.pod_ip, "the pod got no address from the CNI bridge"
    (container,) = status.container_statuses or []
    assert container.state is not None
    assert container.state.terminated is not None
    assert container.state.terminated.exit_code == 0
    expected = f"{GREETING}\ntext\n"
    # The kubelet serves the log itself to a client certificate of the cluster's CA, after
    # asking the API server (SubjectAccessReview) whether that user may read it.
    assert node.kubelet_get(f"/containerLogs/{namespace}/reader/reader") == expected
    if apiserver_reaches_kubelets(cluster):
        assert core.read_namespaced_pod_log("reader", namespace) == expected
