"""Shared fixtures: one real control plane per test session, and one real node on it for
the tests marked ``node``, each started on first use."""

from __future__ import annotations

import os
import pathlib
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml
from hypothesis import settings
from kubernetes import client, config

from localcluster import LocalCluster, Node

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Property tests are reproducible by default (the same examples on every run, so CI is not
# red one day in a thousand by chance); `HYPOTHESIS_PROFILE=explore` draws new examples.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
CRD_DIR = REPO_ROOT / "crds"


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """kube-apiserver + etcd + kube-controller-manager on loopback, RBAC enforced."""
    with LocalCluster() as running:
        yield running
        pids = running.pids()
    leftovers = [pid for pid in pids if pathlib.Path(f"/proc/{pid}").exists()]
    assert not leftovers, f"control plane processes left behind: {leftovers}"


@pytest.fixture(scope="session")
def node(cluster: LocalCluster) -> Iterator[Node]:
    """A real node (containerd, runc, CNI, kubelet; needs root) on the session's control
    plane, with the busybox test image loaded. Pods name it in ``spec.nodeName``; they reach
    this machine at ``node.host_ip``, the API server at ``node.apiserver_url`` and loopback
    servers through ``node.reach(url)``. It must leave nothing behind on the machine."""
    started = cluster.start_node()
    try:
        yield started
    finally:
        cluster.stop_node()
    leftovers = started.leftovers()
    assert not leftovers, f"the node left these behind: {leftovers}"


@pytest.fixture(scope="session")
def api_client(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """An admin (system:masters) client for arranging and inspecting tests."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


def apply_crds(api: client.ApiClient) -> None:
    """Create or replace every CRD in crds/ and wait until each is served."""
    ext = client.ApiextensionsV1Api(api)
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            name = doc["metadata"]["name"]
            try:
                current = ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = current.metadata.resource_version
                ext.replace_custom_resource_definition(name, doc)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                ext.create_custom_resource_definition(doc)
            wait_established(ext, name)


def wait_established(ext: client.ApiextensionsV1Api, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name)
        conditions = (crd.status and crd.status.conditions) or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise TimeoutError(f"CRD {name} not established within {timeout}s")


@pytest.fixture(scope="session")
def crds(api_client: client.ApiClient) -> None:
    """The project's CRDs, installed once per session."""
    apply_crds(api_client)


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e talks to the local control plane."""
    for item in items:
        if "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
