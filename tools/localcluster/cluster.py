"""A real Kubernetes control plane on loopback: etcd, kube-apiserver (RBAC on), optionally
kube-controller-manager for owner-reference garbage collection, and optionally a real node
(:mod:`localcluster.node`: containerd and a kubelet) that runs pods.

Tests, ``make demo``, ``make controlplane`` and the benchmarks all start it through
:class:`LocalCluster`, so they exercise the same thing. Every run gets fresh ports, a fresh
temporary directory and fresh certificates; :meth:`LocalCluster.stop` ends every process it
started (SIGTERM, then SIGKILL), and so does interpreter exit.

The API server listens on 127.0.0.1 only. It holds kubelet client credentials (pod logs,
exec), and once a node runs it also names the node's host address in its serving
certificate (:meth:`LocalCluster.serve_also_on`), where the node relays pods' connections
to it (docs/decisions/0038).

With ``audit_log`` the API server writes an audit log there (JSON lines, one per request,
at Metadata level: who, which verb, which object, when, the user agent and the response
code, never a body) for the write verbs only (:data:`AUDIT_POLICY`). Off by default; the
tests that must prove which process wrote what (tests/e2e/test_high_availability.py) turn
it on for a control plane of their own.
"""

from __future__ import annotations

import atexit
import base64
import os
import pathlib
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Self

import yaml

from localcluster import binaries, pki
from localcluster.errors import ClusterError
from localcluster.node import Node, stop_nodes_of
from localcluster.process import Process, free_port

__all__ = ["READY_TIMEOUT", "ClusterError", "LocalCluster", "Process", "free_port"]

READY_TIMEOUT = 90.0
#: How long the API server may take to pick up a new serving certificate (it watches the
#: files, and re-reads them every minute anyway).
CERT_RELOAD_TIMEOUT = 90.0
_LIVE_CLUSTERS: set[LocalCluster] = set()
#: The audit policy of ``audit_log``: every write at Metadata level, nothing else. One line
#: per request (the ResponseComplete stage), written before the response is sent.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete"]},
        {"level": "None"},
    ],
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class LocalCluster:
    """kube-apiserver + etcd (+ kube-controller-manager) on 127.0.0.1 with free ports, and
    with ``node=True`` a node (:attr:`node`) started after them and stopped before them."""

    def __init__(
        self,
        *,
        controller_manager: bool = True,
        node: bool = False,
        bins: binaries.Binaries | None = None,
        workdir: pathlib.Path | None = None,
        audit_log: pathlib.Path | None = None,
    ) -> None:
        self._want_kcm = controller_manager
        #: Where the API server writes its audit log of writes (None: no audit log).
        self.audit_log = audit_log
        self._want_node = node
        self._bins = bins
        self._own_workdir = workdir is None
        self.workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="tokensync-cp-"))
        self.processes: dict[str, Process] = {}
        self.ca = pki.CertificateAuthority()
        self.apiserver_port = 0
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        #: The node started by :meth:`start_node` (or ``node=True``), while it runs.
        self.node: Node | None = None
        self._serving_hosts: list[str] = ["127.0.0.1", "localhost"]

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def bins(self) -> binaries.Binaries:
        if self._bins is None:
            self._bins = binaries.locate()
        return self._bins

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def start(self) -> None:
        _LIVE_CLUSTERS.add(self)
        try:
            self._write_pki()
            self._start_etcd()
            self.start_apiserver()
            self.write_kubeconfig(self.kubeconfig, user="admin", groups=("system:masters",))
            if self._want_kcm and self.bins.kube_controller_manager is not None:
                self._start_controller_manager()
            if self._want_node:
                self.start_node()
        except BaseException:
            self.stop()
            raise

    def start_node(self) -> Node:
        """Start a node (containerd + kubelet) on this control plane; :meth:`stop` stops it."""
        if self.node is None:
            started = Node(self)
            started.start()
            self.node = started
        return self.node

    def stop_node(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None

    def stop(self) -> None:
        self.stop_node()
        stop_nodes_of(self)  # nodes started on it directly, while the API server runs
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.processes.pop(name, None)
            if proc is not None:
                proc.stop()
        _LIVE_CLUSTERS.discard(self)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    # -- components ------------------------------------------------------------------

    def _write_pki(self) -> None:
        d = self.workdir
        (d / "ca.crt").write_bytes(self.ca.cert_pem)
        self._write_serving_certificate()
        # What the API server presents to kubelets (pods/log, exec, port-forward, proxy).
        kubelet_client = self.ca.issue(
            "kube-apiserver-kubelet-client", organizations=("system:masters",)
        )
        (d / "apiserver-kubelet-client.crt").write_bytes(kubelet_client.cert_pem)
        (d / "apiserver-kubelet-client.key").write_bytes(kubelet_client.key_pem)
        pki.write_service_account_keys(d)

    def _write_serving_certificate(self) -> None:
        """apiserver.crt and .key for every address in ``_serving_hosts``; each file is
        replaced in one rename, the key first, so the API server's file watch never reads a
        half-written file (a certificate that does not match the key is retried)."""
        serving = self.ca.issue("kube-apiserver", server_hosts=tuple(self._serving_hosts))
        for name, data in (("apiserver.key", serving.key_pem), ("apiserver.crt", serving.cert_pem)):
            tmp = self.workdir / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.chmod(0o600)
            tmp.replace(self.workdir / name)

    def serve_also_on(self, address: str) -> None:
        """Have the API server's serving certificate name ``address`` too (a node's host
        address, where pods reach it through a relay); returns once the running API server
        presents it. The API server keeps listening on 127.0.0.1 only."""
        if address in self._serving_hosts:
            return
        self._serving_hosts.append(address)
        self._write_serving_certificate()
        proc = self.processes.get("kube-apiserver")
        if proc is not None:
            proc.wait_ready(
                lambda: self._presents_certificate_for(address), CERT_RELOAD_TIMEOUT, ClusterError
            )

    def _presents_certificate_for(self, address: str) -> bool:
        ctx = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        try:
            with (
                socket.create_connection(("127.0.0.1", self.apiserver_port), timeout=2) as sock,
                ctx.wrap_socket(sock, server_hostname=address),
            ):
                return True
        except (ssl.SSLError, OSError):
            return False

    def _spawn(self, name: str, argv: list[str]) -> Process:
        proc = Process(name, argv, self.workdir / f"{name}.log")
        self.processes[name] = proc
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn(
            "etcd",
            [
                str(self.bins.etcd),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # throwaway data; fsync only slows tests down
                "--log-level=warn",
            ],
        )
        self._wait(proc, lambda: self._http_ok(f"{self.etcd_url}/health"))

    def start_apiserver(self) -> None:
        """Start (or restart, keeping etcd and the port) the API server."""
        if not self.apiserver_port:
            self.apiserver_port = free_port()
        d = self.workdir
        proc = self._spawn(
            "kube-apiserver",
            [
                str(self.bins.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                # Pod logs and exec through the API server: it dials the node's InternalIP
                # (its name does not resolve here) and verifies the kubelet with the CA.
                f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={d / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",  # 127.0.0.1 cannot back the kubernetes Service
                # Go's pprof handlers, for the benchmarks (BENCH_APISERVER_PPROF): off otherwise.
                f"--profiling={'true' if os.environ.get('BENCH_APISERVER_PPROF') else 'false'}",
                f"--cert-dir={d / 'apiserver-certs'}",
                "--v=1",
                *self._audit_flags(d),
            ],
        )
        self._wait(proc, self._apiserver_ready)

    def _audit_flags(self, d: pathlib.Path) -> list[str]:
        if self.audit_log is None:
            return []
        policy = d / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            # Written in the request's path, so a test reads every write that was answered.
            "--audit-log-mode=blocking",
        ]

    def stop_apiserver(self) -> None:
        proc = self.processes.pop("kube-apiserver", None)
        if proc is not None:
            proc.stop()

    def _start_controller_manager(self) -> None:
        assert self.bins.kube_controller_manager is not None
        kcm_config = self.workdir / "kcm.kubeconfig"
        # One identity for every controller (no per-controller ServiceAccounts): it needs the
        # union of their permissions, which only system:masters gives without more setup.
        self.write_kubeconfig(
            kcm_config, user="system:kube-controller-manager", groups=("system:masters",)
        )
        proc = self._spawn(
            "kube-controller-manager",
            [
                str(self.bins.kube_controller_manager),
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--controllers=garbagecollector,namespace,serviceaccount",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )
        # The controller manager has no readiness we need to wait for beyond starting.
        time.sleep(0.2)
        if not proc.alive():
            raise ClusterError(
                f"kube-controller-manager exited at start; read {proc.log_path}\n" + proc.log_tail()
            )

    # -- readiness -------------------------------------------------------------------

    def _ssl_context(
        self, user: str = "admin", groups: tuple[str, ...] = ("system:masters",)
    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        pair = self.ca.issue(user, organizations=groups)
        cert = self.workdir / f"probe-{user.replace(':', '_')}.crt"
        key = self.workdir / f"probe-{user.replace(':', '_')}.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        ctx.load_cert_chain(cert, key)
        return ctx

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _apiserver_ready(self) -> bool:
        if not hasattr(self, "_probe_ctx"):
            self._probe_ctx = self._ssl_context()
        return self._http_ok(f"{self.server}/readyz", self._probe_ctx)

    @staticmethod
    def _wait(proc: Process, ready: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        proc.wait_ready(ready, timeout, ClusterError)

    # -- identities ------------------------------------------------------------------

    def write_kubeconfig(
        self, path: pathlib.Path, *, user: str, groups: tuple[str, ...] = ()
    ) -> pathlib.Path:
        """A kubeconfig for ``user`` (in ``groups``) authenticated by a client certificate.

        Certificates prove identity only; what the user may do is up to RBAC, which is how
        tests obtain a less privileged identity and prove rules rather than assume them.
        """
        pair = self.ca.issue(user, organizations=groups)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.ca.cert_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": _b64(pair.cert_pem),
                        "client-key-data": _b64(pair.key_pem),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def token_kubeconfig(self, path: pathlib.Path, *, token: str) -> pathlib.Path:
        """A kubeconfig that authenticates with a bearer token (e.g. from TokenRequest)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.ca.cert_pem),
                    },
                }
            ],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "token"}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


@atexit.register
def _stop_all() -> None:
    for cluster in list(_LIVE_CLUSTERS):
        cluster.stop()
