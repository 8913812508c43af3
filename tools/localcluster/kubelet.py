"""The kubelet of a local node: its configuration, certificates and identity.

It registers as ``system:node:<name>`` (a client certificate of the cluster's CA, and
:func:`role_binding`: the API server runs RBAC only, no Node authorizer), serves on the
node's host address with a certificate of the same CA, and asks the API server (webhook)
who may read logs or exec. Its configuration differs from the kubelet's defaults only where
this machine or a shared test machine requires it (cgroup v1, no ``CAP_SYS_RESOURCE``, no
systemd, no eviction or image garbage collection of the tests' images); in particular the
sync period is the default (``syncFrequency: 1m``), so that how long pods take to see an
updated Secret is what a real cluster shows (docs/decisions/0038).
"""

from __future__ import annotations

import pathlib
import ssl
import urllib.request
from typing import TYPE_CHECKING, Any

import yaml

from localcluster.process import free_port

if TYPE_CHECKING:
    from localcluster.cluster import LocalCluster


ROLE_BINDINGS = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"


def role_binding(name: str) -> dict[str, Any]:
    """What lets the kubelet of node ``name`` in: RBAC's ``system:node`` role has no
    subjects by default, and the Node authorizer is not enabled on this control plane."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"tokensync:node:{name}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:node",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{name}"}
        ],
    }


def registration(name: str) -> list[str]:
    """API paths of what node ``name`` leaves in the API: its Node, Lease and binding."""
    return [
        f"/api/v1/nodes/{name}",
        f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
        f"{ROLE_BINDINGS}/tokensync:node:{name}",
    ]


class Kubelet:
    """The configuration and identity of one kubelet rooted at ``directory``."""

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        cluster: LocalCluster,
        name: str,
        node_ip: str,
        runtime_socket: pathlib.Path,
        cgroup_root: str,
        pod_logs_dir: pathlib.Path,
    ) -> None:
        self.directory = directory
        self.cluster = cluster
        self.name = name
        self.node_ip = node_ip
        self.runtime_socket = runtime_socket
        self.cgroup_root = cgroup_root
        self.pod_logs_dir = pod_logs_dir
        self.port = 0
        self._client_ctx: ssl.SSLContext | None = None

    def config(self) -> dict[str, Any]:
        k = self.directory
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines run cgroup v1; 1.35+ refuse it otherwise
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.runtime_socket}",
            "address": self.node_ip,
            "port": self.port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(k / "serving.crt"),
            "tlsPrivateKeyFile": str(k / "serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(k / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "registerNode": True,
            "failSwapOn": False,
            "resolvConf": str(k / "resolv.conf"),
            "podLogsDir": str(self.pod_logs_dir),
            "volumePluginDir": str(k / "volume-plugins"),
            "makeIPTablesUtilChains": False,
            "oomScoreAdj": 0,  # lowering it takes CAP_SYS_RESOURCE, which we may not have
            # A busy or nearly full disk must not evict the tests' pods, nor collect images
            # (ours cannot be pulled again).
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
        }

    def argv(self, kubelet_binary: pathlib.Path) -> list[str]:
        """Write certificates, configuration and kubeconfig; the kubelet's command line."""
        k = self.directory
        k.mkdir()
        (k / "ca.crt").write_bytes(self.cluster.ca.cert_pem)
        serving = self.cluster.ca.issue(self.name, server_hosts=(self.node_ip, self.name))
        (k / "serving.crt").write_bytes(serving.cert_pem)
        (k / "serving.key").write_bytes(serving.key_pem)
        (k / "resolv.conf").write_text("# tokensync local node: pods resolve no names\n")
        self.port = free_port(self.node_ip)
        config = k / "config.yaml"
        config.write_text(yaml.safe_dump(self.config()))
        kubeconfig = self.cluster.write_kubeconfig(
            k / "kubeconfig", user=f"system:node:{self.name}", groups=("system:nodes",)
        )
        return [
            str(kubelet_binary),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={k / 'root'}",
            f"--cert-dir={k / 'pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.node_ip}",
            "--v=1",
        ]

    def get(self, path: str) -> str:
        """GET from the kubelet's own API, with a client certificate from the cluster CA.

        The path the API server takes for ``pods/log`` (with its kubelet client
        certificate); the kubelet authenticates the certificate and asks the API server
        (SubjectAccessReview) whether that user may read ``nodes/proxy``.
        """
        if self._client_ctx is None:
            pair = self.cluster.ca.issue(
                "tokensync-kubelet-client", organizations=("system:masters",)
            )
            cert, key = self.directory / "client.crt", self.directory / "client.key"
            cert.write_bytes(pair.cert_pem)
            key.write_bytes(pair.key_pem)
            ctx = ssl.create_default_context(cadata=self.cluster.ca.cert_pem.decode())
            ctx.load_cert_chain(cert, key)
            self._client_ctx = ctx
        url = f"https://{self.node_ip}:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10, context=self._client_ctx) as resp:
            return str(resp.read().decode())
