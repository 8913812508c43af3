"""The local control plane is a real Kubernetes API server: schemas, RBAC and watches work."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading

import pytest
import yaml
from kubernetes import client, config, watch

from conftest import wait_established
from localcluster import Binaries, ClusterError, LocalCluster

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def widgets(api_client: client.ApiClient) -> str:
    ext = client.ApiextensionsV1Api(api_client)
    crd = yaml.safe_load((DATA / "widgets-crd.yaml").read_text())
    try:
        ext.create_custom_resource_definition(crd)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    wait_established(ext, crd["metadata"]["name"])
    return str(crd["spec"]["group"])


def _widget(name: str, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "test.tokensync.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_crd_from_file_is_served(
    api_client: client.ApiClient, widgets: str, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(
        widgets, "v1", namespace, "widgets", _widget("a", size=3)
    )
    got = custom.get_namespaced_custom_object(widgets, "v1", namespace, "widgets", "a")
    assert got["spec"] == {"size": 3}


@pytest.mark.parametrize(
    ("spec", "field"),
    [({"size": 0}, "spec.size"), ({"size": 1, "color": "green"}, "spec.color"), ({}, "spec.size")],
    ids=["below-minimum", "not-in-enum", "missing-required"],
)
def test_schema_violation_is_rejected_with_422(
    api_client: client.ApiClient, widgets: str, namespace: str, spec: dict[str, object], field: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(
            widgets, "v1", namespace, "widgets", _widget("b", **spec)
        )
    assert err.value.status == 422
    assert field in err.value.body


def test_less_privileged_identity_is_denied_by_rbac(
    cluster: LocalCluster, api_client: client.ApiClient, namespace: str, tmp_path: pathlib.Path
) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "viewer.kubeconfig", user="viewer")
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "viewer-reads-configmaps"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmap-reader",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "viewer"}
            ],
        },
    )
    viewer = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core = client.CoreV1Api(viewer)
        core.list_namespaced_config_map(namespace)  # granted
        with pytest.raises(client.ApiException) as err:
            core.list_namespaced_secret(namespace)  # not granted
        assert err.value.status == 403
        with pytest.raises(client.ApiException) as err:
            core.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}})
        assert err.value.status == 403
    finally:
        viewer.close()


def test_watch_sees_an_update(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    created = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "watched"}, "data": {"v": "1"}}
    )
    seen: list[str] = []
    w = watch.Watch()

    def consume() -> None:
        for event in w.stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=created.metadata.resource_version,
            timeout_seconds=20,
        ):
            if event["type"] == "MODIFIED":
                seen.append(event["object"].data["v"])
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    core.patch_namespaced_config_map("watched", namespace, {"data": {"v": "2"}})
    thread.join(timeout=30)
    assert seen == ["2"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes only once reaped; Popen.wait in stop() reaps it.
    return True


def test_a_second_cluster_uses_other_ports_and_leaves_no_process_behind(
    cluster: LocalCluster,
) -> None:
    with LocalCluster(controller_manager=False, bins=cluster.bins) as other:
        assert other.apiserver_port != cluster.apiserver_port
        pids = other.pids()
        port = other.apiserver_port
        workdir = other.workdir
        assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)
    assert not workdir.exists()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the port is free again


def test_a_component_that_fails_to_start_names_its_log(tmp_path: pathlib.Path) -> None:
    broken = Binaries(
        kube_apiserver=pathlib.Path("/bin/false"),
        etcd=pathlib.Path("/bin/false"),
        kube_controller_manager=None,
        kubectl=None,
    )
    with pytest.raises(ClusterError, match=r"etcd exited with code 1 .*etcd\.log"):
        LocalCluster(bins=broken, workdir=tmp_path).start()


def _processes_under(workdir: str) -> list[int]:
    """Pids whose command line names ``workdir`` (the components' data and config)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if workdir in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("attempt", range(2))
def test_make_controlplane_stops_on_two_sigterms_at_once(
    cluster: LocalCluster, attempt: int
) -> None:
    """``python -m localcluster`` (``make controlplane``) signalled twice together, as
    when make forwards a SIGTERM to a process group that also got it: it stops everything
    it started (it used to deadlock in its signal handler, 10 times in 30)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, "-m", "localcluster"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("KUBECONFIG="), line
            workdir = str(pathlib.Path(line.removeprefix("KUBECONFIG=").strip()).parent)
            assert _processes_under(workdir)
            os.killpg(proc.pid, signal.SIGTERM)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert _processes_under(workdir) == []
