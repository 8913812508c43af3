"""Requests stay out of the cluster's own network unless the admin allows it (issue 14
section 4, decision 0037).

A tenant who may create ClientCredentials points them at what the operator's pod can reach
and they cannot: loopback (a literal address, and ``localhost``, a name that resolves to
it), the API server, a cluster Service name, an issuer whose discovery would go there. The
operator runs under the deploy/ ServiceAccount without the loopback allowance every other
e2e test gives it; a real token server (which would issue a token to these very
credentials) and bare TCP listeners count what reaches them: nothing may, not even a TCP
connection. Then the same destinations with the admin's allowance, to show that the
refusal is the rule's doing and that the counters count.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import LocalCluster
from support import manifests, testenv
from support.operatorproc import LOOPBACK, OperatorProcess, install_operator_identity
from support.tokenserver import TokenServer
from tokensync import cli

pytestmark = pytest.mark.e2e

CLIENT_ID = "ssrf-client"
CLIENT_SECRET = "ssrf-secret-Qx7!must-not-travel"
REFUSED = "PrivateNetworkRefused"
#: How long the refused credentials are watched after their refusal, for a late request.
QUIET_SECONDS = 3.0


class ConnectionCounter:
    """A bare TCP listener that counts the connections it accepts and closes them at once:
    a request that reached it would have had to connect first."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.bind((host, 0))
        self._socket.listen(16)
        self._socket.settimeout(0.1)
        self.port: int = self._socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            connection.close()

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


@contextlib.contextmanager
def ipv6_counter() -> Iterator[ConnectionCounter | None]:
    """A counter on ::1, or None where the host has no IPv6 loopback."""
    try:
        counter = ConnectionCounter("::1")
    except OSError:
        yield None
        return
    with counter:
        yield counter


@pytest.fixture(scope="module")
def kubeconfig(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("operator-ssrf")
    return install_operator_identity(cluster, api_client, workdir / "sa.kubeconfig")


@pytest.fixture
def server() -> Iterator[TokenServer]:
    """A real token endpoint that would issue a token to every credential below."""
    with TokenServer(lifetime=3600, issuer_path="/realms/ssrf", discovery="openid") as running:
        running.add_client(CLIENT_ID, CLIENT_SECRET)
        yield running


def operator_for(
    namespace: str, kubeconfig: pathlib.Path, log: pathlib.Path, private_networks: tuple[str, ...]
) -> OperatorProcess:
    """The operator watching only ``namespace``, with exactly this allowance."""
    return OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=log,
        extra_args=["--namespace", namespace],
        private_networks=private_networks,
    )


def create_all(env: testenv.Env, specs: dict[str, dict[str, Any]]) -> None:
    """A client Secret whose owner allows every destination below (so that nothing but the
    network rule can refuse them), and one credential per destination."""
    urls = [spec.get("tokenURL") or spec["issuerURL"] for spec in specs.values()]
    env.secret(
        "oauth-client",
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        destinations=", ".join(urls),
    )
    for name, spec in specs.items():
        env.create_credential(name, {"clientSecretRef": {"name": "oauth-client"}, **spec})


def test_without_the_allowance_nothing_reaches_the_cluster_network(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: pathlib.Path,
    server: TokenServer,
    tmp_path: pathlib.Path,
) -> None:
    by_name = server.url.replace("127.0.0.1", "localhost")
    with ConnectionCounter() as counter, ipv6_counter() as counter6:
        specs: dict[str, dict[str, Any]] = {
            "loopback": {"tokenURL": server.url},
            "loopback-by-name": {"tokenURL": by_name},
            "issuer-by-name": {"issuerURL": server.issuer_url.replace("127.0.0.1", "localhost")},
            "listener-by-name": {"tokenURL": f"http://localhost:{counter.port}/token"},
            "api-server": {"tokenURL": f"{cluster.server}/api"},
            "service": {"tokenURL": "https://kubernetes.default.svc/token"},
        }
        if counter6 is not None:
            specs["ipv6-loopback"] = {"tokenURL": f"http://[::1]:{counter6.port}/token"}
        env = testenv.Env(api_client, namespace)
        with operator_for(namespace, kubeconfig, tmp_path / "operator.log", ()) as operator:
            create_all(env, specs)
            messages = {name: env.wait_ready(name, reason=REFUSED) for name in specs}
            time.sleep(QUIET_SECONDS)  # a retry, or a request that was late, would show now
            log = operator.log()
        reached = {
            "token requests": server.requests,
            "discovery requests": server.discovery_requests,
            "tokens issued": len(server.issued),
            "TCP connections (127.0.0.1)": counter.connections,
            "TCP connections (::1)": counter6.connections if counter6 else 0,
        }
    assert reached == dict.fromkeys(reached, 0), reached
    for name, ready in messages.items():
        assert ready["status"] == "False", name
        assert "--allow-private-network" in ready["message"], (name, ready["message"])
    # Refused where it is written, and where it resolves to: both say so.
    assert "127.0.0.1 is a loopback address" in messages["loopback"]["message"]
    assert "localhost resolves to" in messages["loopback-by-name"]["message"]
    assert "localhost resolves to" in messages["issuer-by-name"]["message"]
    assert "cluster-internal name" in messages["service"]["message"]
    assert env.events("loopback-by-name")[-1].reason == REFUSED
    assert CLIENT_SECRET not in log


def test_with_the_allowance_the_same_destinations_work(
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: pathlib.Path,
    server: TokenServer,
    tmp_path: pathlib.Path,
) -> None:
    """The admin allows loopback (the flag the other e2e tests pass): the literal address,
    a name resolving to it and discovery through it get tokens; a cluster Service name,
    which the allowance does not name, stays refused."""
    specs: dict[str, dict[str, Any]] = {
        "loopback": {"tokenURL": server.url},
        "loopback-by-name": {"tokenURL": server.url.replace("127.0.0.1", "localhost")},
        "issuer": {"issuerURL": server.issuer_url},
        "service": {"tokenURL": "https://kubernetes.default.svc/token"},
    }
    env = testenv.Env(api_client, namespace)
    with operator_for(namespace, kubeconfig, tmp_path / "operator.log", LOOPBACK):
        create_all(env, specs)
        for name in ("loopback", "loopback-by-name", "issuer"):
            env.wait_ready(name)
            assert env.token(f"{name}-token"), name
        env.wait_ready("service", reason=REFUSED)
    assert len(server.issued) == 3
    assert server.discovery_requests >= 1


# -- the admin's setting, in both installs ---------------------------------------------------

ALLOWED = ["10.20.0.0/16", "keycloak.auth.svc.cluster.local"]


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_the_kustomize_component_sets_the_allowance(
    cluster: LocalCluster, tmp_path: pathlib.Path, overlay: str
) -> None:
    """deploy/components/private-networks with its settings.yaml edited, as its comments
    say: the list reaches the operator's flags, which parse it as the allowance."""
    user = manifests.kustomization(
        tmp_path,
        overlay=overlay,
        components=("private-networks",),
        watch_namespace="apps" if overlay == "single-namespace" else None,
    )
    settings = user.parent / "components" / "private-networks" / "settings.yaml"
    doc = yaml.safe_load(settings.read_text())
    doc["data"]["allowed"] = ",".join(ALLOWED)
    settings.write_text(yaml.safe_dump(doc))
    docs = manifests.documents(manifests.Kubectl(cluster).kustomize(user))
    args = manifests.container(docs)["args"]
    assert args.count(f"--allow-private-network={','.join(ALLOWED)}") == 1
    assert cli._parser().parse_args(["run", *args]).private_networks == ALLOWED
    assert not [d for d in docs if d["kind"] == "ConfigMap"]  # the settings stay local


def test_the_helm_value_sets_the_allowance() -> None:
    try:
        helm = manifests.helm_binary()
    except manifests.HelmUnavailable as exc:
        pytest.skip(f"helm cannot be built here: {exc}")
    values = f"allowedPrivateNetworks={{{','.join(ALLOWED)}}}"
    rendered = manifests.helm(
        helm, "template", "tokensync", str(manifests.HELM_CHART), "--set", values
    )
    args = manifests.container(manifests.documents(rendered))["args"]
    assert cli._parser().parse_args(["run", *args]).private_networks == ALLOWED
    default = manifests.helm(helm, "template", "tokensync", str(manifests.HELM_CHART))
    default_args = manifests.container(manifests.documents(default))["args"]
    assert not [a for a in default_args if a.startswith("--allow-private-network")]
