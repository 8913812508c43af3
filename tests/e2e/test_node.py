"""A real node on the local control plane (issue 15): containerd, runc, CNI and a kubelet
that runs a pod from a locally built image, mounts a Secret into it and serves its log
through the API server; its pods reach the API server and the tests' loopback servers.

The session's node (the ``node`` fixture) must leave nothing behind when it stops: no
process, mount, network link, cgroup or changed kernel setting (checked at its teardown).
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from localcluster import LocalCluster, Node
from support.pods import busybox_pod, create, wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.node]

GREETING = "hello from a Secret volume"
LOOPBACK_GREETING = "hello from a loopback server"


def test_pod_reads_a_secret_volume_and_its_log_is_served(
    node: Node, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    secret = f"greeting-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data={"text": GREETING}),
    )
    pod = busybox_pod(
        "reader",
        node,
        "cat /secret/text; echo; ls /secret",
        volumes=[{"name": "secret", "secret": {"secretName": secret}}],
        mounts=[{"name": "secret", "mountPath": "/secret", "readOnly": True}],
    )
    create(core, namespace, pod)

    status = wait_finished(core, namespace, "reader")

    assert status.phase == "Succeeded", status
    assert status.pod_ip, "the pod got no address from the CNI bridge"
    (container,) = status.container_statuses or []
    assert container.state is not None
    assert container.state.terminated is not None
    assert container.state.terminated.exit_code == 0
    expected = f"{GREETING}\ntext\n"
    # Through the API server, which dials the kubelet with its kubelet client certificate.
    assert core.read_namespaced_pod_log("reader", namespace) == expected
    # From the kubelet itself, which asks the API server whether this user may read it.
    assert node.kubelet_get(f"/containerLogs/{namespace}/reader/main") == expected


class _Greeter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = LOOPBACK_GREETING.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1, as the tests' token servers are."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Greeter)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pods_reach_the_api_server_and_loopback_servers(
    node: Node,
    cluster: LocalCluster,
    api_client: client.ApiClient,
    namespace: str,
    loopback_server: str,
) -> None:
    # The API server stays on loopback; the node relays its host address to it, and the
    # serving certificate names that address, so an in-cluster client can verify it.
    ctx = ssl.create_default_context(cadata=cluster.ca.cert_pem.decode())
    with urllib.request.urlopen(f"{node.apiserver_url}/version", context=ctx, timeout=10) as r:
        version = json.load(r)["gitVersion"]
    env = {e["name"]: e["value"] for e in node.apiserver_env()}
    core = client.CoreV1Api(api_client)
    script = (
        # busybox's TLS speaks none of the API server's cipher suites (it answers a wget
        # with a handshake failure), so the pod sends plain HTTP: only the API server's Go
        # TLS listener answers that with its 400. The request above proved the TLS part.
        "printf 'GET /version HTTP/1.0\\r\\n\\r\\n' "
        "| nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT | tail -n 1; "
        f"wget -q -O - {node.reach(loopback_server)}"
    )
    create(core, namespace, busybox_pod("caller", node, script, env=node.apiserver_env()))

    status = wait_finished(core, namespace, "caller")

    log = core.read_namespaced_pod_log("caller", namespace)
    assert status.phase == "Succeeded", log
    api_answer, loopback_answer = log.split("\n", 1)
    assert api_answer == "Client sent an HTTP request to an HTTPS server."
    assert loopback_answer == LOOPBACK_GREETING
    assert version.startswith("v1.")
    assert env["KUBERNETES_SERVICE_HOST"] == node.host_ip
