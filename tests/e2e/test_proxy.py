"""Egress through the admin's proxy (issue 17 section 4, decision 0049).

Each test runs the operator process, watching its namespace only, with ``HTTPS_PROXY``
pointing at a real forward proxy on loopback (proxy.py, with Basic authentication and an
upstream filter), and ``NO_PROXY`` naming ``localhost``. The token server speaks TLS with a
private CA, so a token can only come through a CONNECT tunnel with TLS inside it, verified
with the credential's caBundleRef. The proxy counts the tunnels it was asked for.
"""

from __future__ import annotations

import pathlib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import LocalCluster
from localcluster.pki import CertificateAuthority
from support import manifests, testenv
from support.forwardproxy import ForwardProxy
from support.operatorproc import OperatorProcess, install_operator_identity
from support.tokenserver import TokenServer
from tokensync import proxies

pytestmark = pytest.mark.e2e

CLIENT_ID = "proxied-client"
CLIENT_SECRET = "s3cr3t-proxied-visible-if-leaked"
PROXY_PASSWORD = "pr0xy-pa55-visible-if-leaked"
DENIED = "denied.example"


@pytest.fixture(scope="module")
def private_ca() -> CertificateAuthority:
    return CertificateAuthority("tokensync-proxy-test-ca")


@pytest.fixture(scope="module")
def server(
    private_ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenServer]:
    pair = private_ca.issue("token-endpoint", server_hosts=("127.0.0.1", "localhost"))
    directory = tmp_path_factory.mktemp("tls")
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "tls.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    with TokenServer(
        lifetime=3600, ssl_context=context, issuer_path="/realms/proxied", discovery="openid"
    ) as running:
        running.add_client(CLIENT_ID, CLIENT_SECRET)
        yield running


@pytest.fixture(scope="module")
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=f"tokensync:{PROXY_PASSWORD}", denied=[DENIED]) as running:
        yield running


@pytest.fixture(scope="module")
def kubeconfig(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("operator-proxy")
    return install_operator_identity(cluster, api_client, workdir / "sa.kubeconfig")


def operator_for(
    namespace: str, kubeconfig: pathlib.Path, log: pathlib.Path, proxy_url: str
) -> OperatorProcess:
    """The operator watching only ``namespace`` (so that no other one acts there), with
    ``proxy_url`` as HTTPS_PROXY and localhost in NO_PROXY."""
    return OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=log,
        extra_args=["--namespace", namespace],
        env={"HTTPS_PROXY": proxy_url, "NO_PROXY": "localhost"},
    )


@pytest.fixture
def operator(
    namespace: str, kubeconfig: pathlib.Path, proxy: ForwardProxy, tmp_path: pathlib.Path
) -> Iterator[OperatorProcess]:
    log = tmp_path / "operator.log"
    with operator_for(namespace, kubeconfig, log, proxy.url_with_credentials) as running:
        yield running


class Env(testenv.Env):
    def __init__(
        self, api: client.ApiClient, namespace: str, ca: CertificateAuthority, urls: list[str]
    ) -> None:
        super().__init__(api, namespace)
        self.secret(
            "oauth-client",
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            destinations=", ".join(urls),
        )
        self.core.create_namespaced_config_map(
            namespace,
            {"metadata": {"name": "private-ca"}, "data": {"ca.crt": ca.cert_pem.decode()}},
        )

    def credential(self, name: str, **spec: Any) -> dict[str, Any]:
        return self.create_credential(
            name,
            {
                "clientSecretRef": {"name": "oauth-client"},
                "caBundleRef": {"kind": "ConfigMap", "name": "private-ca"},
                **spec,
            },
        )

    def leaked(self, name: str, operator: OperatorProcess) -> list[str]:
        """Where the proxy's password or the client secret shows up."""
        ready = self.ready(name) or {}
        texts = {
            "log": operator.log(),
            "status": str(ready),
            "events": " ".join(e.message or "" for e in self.events(name)),
        }
        return [
            where
            for where, text in texts.items()
            for secret in (PROXY_PASSWORD, CLIENT_SECRET, f"wrong-{PROXY_PASSWORD}")
            if secret in text
        ]


def by_name(url: str) -> str:
    return url.replace("127.0.0.1", "localhost")


def test_token_and_discovery_through_the_proxy(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    namespace: str,
    private_ca: CertificateAuthority,
    server: TokenServer,
    proxy: ForwardProxy,
    operator: OperatorProcess,
) -> None:
    target = server.origin.removeprefix("https://")
    before = proxy.connects_to(target)
    env = Env(api_client, namespace, private_ca, [server.url, server.issuer_url])
    env.credential("by-url", tokenURL=server.url)
    env.credential("by-issuer", issuerURL=server.issuer_url)
    for name in ("by-url", "by-issuer"):
        env.wait_ready(name)
        token = env.token(f"{name}-token")
        assert token
        assert server.verify(token)
    # The operator could reach 127.0.0.1 directly too (its allowance opens loopback): the
    # proxy's count, not the token, shows the way the requests went. Keep-alive lets one
    # tunnel carry several requests, so at least one CONNECT.
    assert proxy.connects_to(target) > before
    # The proxy is for token requests: the operator's API server traffic goes direct.
    api_server = cluster.server.removeprefix("https://").rstrip("/")
    assert proxy.connects_to(api_server) == 0, proxy.connects()
    assert env.leaked("by-url", operator) == []


def test_no_proxy_destinations_go_direct(
    api_client: client.ApiClient,
    namespace: str,
    private_ca: CertificateAuthority,
    server: TokenServer,
    proxy: ForwardProxy,
    operator: OperatorProcess,
) -> None:
    url = by_name(server.url)
    env = Env(api_client, namespace, private_ca, [url])
    env.credential("direct", tokenURL=url)
    env.wait_ready("direct")
    assert env.token("direct-token")
    assert proxy.connects_to(url.removeprefix("https://").split("/")[0]) == 0


def test_a_tunnel_the_proxy_refuses(
    api_client: client.ApiClient,
    namespace: str,
    private_ca: CertificateAuthority,
    proxy: ForwardProxy,
    operator: OperatorProcess,
) -> None:
    url = f"https://{DENIED}/token"
    env = Env(api_client, namespace, private_ca, [url])
    env.credential("refused", tokenURL=url)
    ready = env.wait_ready("refused", reason="ProxyRefused")
    assert ready["status"] == "False"
    assert ready["message"].startswith(
        f"the proxy 127.0.0.1:{proxy.port} answered 418 to the tunnel to {DENIED}; next attempt"
    )
    assert proxy.connects_to(f"{DENIED}:443") >= 1
    assert env.events("refused")[-1].reason == "ProxyRefused"
    assert env.leaked("refused", operator) == []


def test_a_proxy_that_wants_other_credentials(
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: pathlib.Path,
    private_ca: CertificateAuthority,
    server: TokenServer,
    proxy: ForwardProxy,
    tmp_path: pathlib.Path,
) -> None:
    """A wrong password in HTTPS_PROXY: 407, ProxyRefused, and the password in no log,
    status or Event."""
    wrong = f"wrong-{PROXY_PASSWORD}"
    env = Env(api_client, namespace, private_ca, [server.url])
    proxy_url = f"http://tokensync:{wrong}@127.0.0.1:{proxy.port}"
    with operator_for(namespace, kubeconfig, tmp_path / "operator.log", proxy_url) as operator:
        env.credential("unauthenticated", tokenURL=server.url)
        ready = env.wait_ready("unauthenticated", reason="ProxyRefused")
        assert "answered 407" in ready["message"]
        assert "wants credentials" in ready["message"]
        assert f"egress proxy: https via 127.0.0.1:{proxy.port}" in operator.log()
        leaks = env.leaked("unauthenticated", operator)
        log = operator.log()
    assert leaks == []
    assert wrong not in log
    assert env.token("unauthenticated-token") is None


def test_the_destination_rules_apply_before_the_proxy(
    api_client: client.ApiClient,
    namespace: str,
    private_ca: CertificateAuthority,
    proxy: ForwardProxy,
    operator: OperatorProcess,
) -> None:
    """A cluster Service name goes to no proxy: refused by name, the proxy never asked."""
    url = "https://keycloak.auth.svc.cluster.local/token"
    env = Env(api_client, namespace, private_ca, [url])
    env.credential("service", tokenURL=url)
    ready = env.wait_ready("service", reason="PrivateNetworkRefused")
    assert "cluster-internal name" in ready["message"]
    assert not [c for c in proxy.connects() if "svc" in c]


# -- the admin's setting, in both installs ---------------------------------------------------


def parsed(container: dict[str, Any]) -> proxies.Proxies:
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return proxies.from_environment(env)


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_the_kustomize_component_sets_the_environment(
    cluster: LocalCluster, tmp_path: pathlib.Path, overlay: str
) -> None:
    user = manifests.kustomization(
        tmp_path,
        overlay=overlay,
        components=("egress-proxy",),
        watch_namespace="apps" if overlay == "single-namespace" else None,
    )
    settings = user.parent / "components" / "egress-proxy" / "settings.yaml"
    doc = yaml.safe_load(settings.read_text())
    doc["data"] = {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": ".svc,10.0.0.0/8"}
    settings.write_text(yaml.safe_dump(doc))
    docs = manifests.documents(manifests.Kubectl(cluster).kustomize(user))
    container = manifests.container(docs)
    assert container["envFrom"] == [{"configMapRef": {"name": "tokensync-egress-proxy"}}]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config_map["metadata"]["name"] == "tokensync-egress-proxy"
    egress = proxies.from_environment(config_map["data"])
    assert str(egress) == "https via proxy.corp:3128; direct: .svc, 10.0.0.0/8"


def test_the_helm_values_set_the_environment() -> None:
    try:
        helm = manifests.helm_binary()
    except manifests.HelmUnavailable as exc:
        pytest.skip(f"helm cannot be built here: {exc}")
    rendered = manifests.helm(
        helm,
        "template",
        "tokensync",
        str(manifests.HELM_CHART),
        "--set",
        "proxy.httpsProxy=http://proxy.corp:3128",
        "--set",
        "proxy.noProxy=.svc\\,10.0.0.0/8",
        "--set",
        "proxy.existingSecret=egress-credentials",
        "--set",
        "proxy.port=3128",
        "--set",
        "networkPolicy.enabled=true",
    )
    docs = manifests.documents(rendered)
    container = manifests.container(docs)
    assert str(parsed(container)) == "https via proxy.corp:3128; direct: .svc, 10.0.0.0/8"
    assert container["envFrom"] == [{"secretRef": {"name": "egress-credentials"}}]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"])
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert 3128 in ports
    default = manifests.documents(
        manifests.helm(helm, "template", "tokensync", str(manifests.HELM_CHART))
    )
    plain = manifests.container(default)
    assert not parsed(plain)
    assert "envFrom" not in plain
