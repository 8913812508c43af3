"""A real Kubernetes node for a :class:`~localcluster.cluster.LocalCluster`: containerd
(with runc and CNI bridge networking) and a kubelet that registers with the API server.

Nothing is faked: pods scheduled to the node (``spec.nodeName``: the control plane runs no
scheduler) get a sandbox, a network namespace on a bridge of our own, Secret volumes
mounted by the kubelet and containers run by runc. Images come from this machine, never a
registry: :mod:`localcluster.images` writes them; the pause image and the busybox test image
(:data:`~localcluster.images.BUSYBOX_IMAGE`, ``imagePullPolicy: Never``) are loaded at
start, others with :meth:`Node.import_image`.

This module orchestrates; each part has its own module: :mod:`localcluster.containerd`,
:mod:`localcluster.kubelet`, :mod:`localcluster.hostnet` (the bridge and CNI),
:mod:`localcluster.relay` (pods reaching loopback servers) and :mod:`localcluster.hoststate`
(what the node changes on the machine, and undoes). Besides those, the node creates a
ClusterRoleBinding giving ``system:node:<name>`` the ``system:node`` role (the API server
runs RBAC only, no Node authorizer), and the Node object itself; :meth:`Node.stop` removes
them and :meth:`Node.leftovers` says what, if anything, is still there.

How pods reach the host (docs/decisions/0038): the bridge address :attr:`Node.host_ip` is
their gateway. The API server stays bound to 127.0.0.1; the node relays
``host_ip:apiserver_port`` to it and has it add ``host_ip`` to its serving certificate, so
a pod given :meth:`Node.apiserver_env` talks to it with the cluster CA as a real in-cluster
client does. A test server on loopback is reached through :meth:`Node.reach` (or
:meth:`Node.expose`), a server of the test's own can also listen on ``host_ip`` directly.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pathlib
import secrets
import shutil
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from localcluster import binaries, hoststate, images
from localcluster.containerd import Containerd
from localcluster.errors import NodeError
from localcluster.hostnet import Bridge
from localcluster.kubelet import ROLE_BINDINGS, Kubelet, registration, role_binding
from localcluster.process import Process
from localcluster.relay import Relay

if TYPE_CHECKING:
    from localcluster.cluster import LocalCluster

__all__ = ["READY_TIMEOUT", "Node", "NodeError", "stop_nodes_of"]

READY_TIMEOUT = 120.0
_LIVE_NODES: set[Node] = set()


class Node:
    """containerd + kubelet registered as ``name`` with a running :class:`LocalCluster`."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        name: str = "tokensync-node",
        bins: binaries.NodeBinaries | None = None,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self._bins = bins
        self.id = secrets.token_hex(3)
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-node-"))
        self.bridge = Bridge(f"tsnode{self.id}")
        self.cgroups = hoststate.CgroupRoot(f"tokensync-node-{self.id}")
        self.processes: dict[str, Process] = {}
        self._host = hoststate.HostChanges()
        self._containerd: Containerd | None = None
        self._kubelet: Kubelet | None = None
        self._api_ctx: ssl.SSLContext | None = None
        self._apiserver_relay: Relay | None = None
        self._relays: dict[tuple[str, int], Relay] = {}
        self._pids: list[int] = []
        self._sandboxes: set[str] = set()

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
    def bins(self) -> binaries.NodeBinaries:
        if self._bins is None:
            self._bins = binaries.locate_node()
        return self._bins

    @property
    def host_ip(self) -> str:
        """The bridge address: the pods' gateway, the node's InternalIP (the kubelet listens
        there), and the address at which pods reach servers on this machine."""
        return self.bridge.host_ip

    @property
    def node_ip(self) -> str:
        return self.host_ip

    @property
    def network(self) -> str:
        """The CNI network's name, which also prefixes its files in the CNI cache."""
        return f"tokensync-{self.id}"

    @property
    def containerd(self) -> Containerd:
        if self._containerd is None:
            raise NodeError("the node is not started")
        return self._containerd

    @property
    def kubelet(self) -> Kubelet:
        if self._kubelet is None:
            raise NodeError("the node is not started")
        return self._kubelet

    def start(self) -> None:
        """Start containerd and the kubelet; return once the Node is Ready, the test image
        is loaded and the API server answers pods at :attr:`host_ip`."""
        _LIVE_NODES.add(self)
        try:
            hoststate.require_root(NodeError)
            bins = self.bins
            self._host.record()
            self._authorize()
            self._start_network()
            self.cgroups.make()
            self._start_containerd(bins)
            self.import_image(self._image_archive("pause", images.pause_image, bins.pause))
            self.import_image(self._image_archive("busybox", images.busybox_image, bins.busybox))
            self._start_kubelet(bins)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything; leave no process, mount, link, cgroup or API object behind."""
        if self not in _LIVE_NODES:
            return
        try:
            with contextlib.suppress(Exception):
                self._delete_pods()
            self._stop_process("kubelet")
            if self._containerd is not None:
                with contextlib.suppress(Exception):
                    self._containerd.remove_containers()
                self._sandboxes = self._containerd.sandbox_ids()
            self._stop_process("containerd")
            hoststate.kill_until_gone(self._node_pids)
            hoststate.unmount_under(self.workdir)
            for relay in [*self._relays.values(), self._apiserver_relay]:
                if relay is not None:
                    relay.stop()
            self._relays.clear()
            self._apiserver_relay = None
            self.bridge.remove()
            self.cgroups.remove()
            self._host.restore(self._is_ours)
            with contextlib.suppress(Exception):
                self._unregister()
        finally:
            _LIVE_NODES.discard(self)
            if not os.environ.get("TOKENSYNC_NODE_KEEP"):
                shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this node is still on the host: empty after a clean :meth:`stop`."""
        found = [f"process {pid}" for pid in self._pids if pathlib.Path(f"/proc/{pid}").exists()]
        found += [f"process {pid}" for pid in sorted(self._node_pids())]
        found += [f"mount {m}" for m in hoststate.mounts_under(self.workdir)]
        found += self.bridge.leftovers() + self.cgroups.leftovers()
        found += self._host.leftovers(self._is_ours)
        return sorted(set(found))

    # -- how pods reach the host -----------------------------------------------------

    @property
    def apiserver_port(self) -> int:
        """The port at :attr:`host_ip` where pods reach the API server."""
        if self._apiserver_relay is None:
            raise NodeError("the node is not started")
        return self._apiserver_relay.port

    @property
    def apiserver_url(self) -> str:
        return f"https://{self.host_ip}:{self.apiserver_port}"

    def apiserver_env(self) -> list[dict[str, str]]:
        """A container's ``env`` entries that point in-cluster clients at the API server.

        The kubelet sets ``KUBERNETES_SERVICE_HOST`` to the ``kubernetes`` Service's
        ClusterIP, which nothing routes here (no kube-proxy); a container's own ``env``
        wins over it. The client still needs a token and the CA (``cluster.ca.cert_pem``)
        mounted: the ServiceAccount admission plugin is off on this control plane.
        """
        return [
            {"name": "KUBERNETES_SERVICE_HOST", "value": self.host_ip},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.apiserver_port)},
        ]

    def expose(self, port: int, host: str = "127.0.0.1") -> int:
        """Relay ``host_ip:<returned port>`` to the server at ``host:port`` on this machine,
        for as long as the node runs (once per server, however often asked)."""
        relay = self._relays.get((host, port))
        if relay is None:
            relay = Relay(self.host_ip, port, target_host=host).start()
            self._relays[host, port] = relay
        return relay.port

    def reach(self, url: str) -> str:
        """``url`` of a loopback server, as a pod reaches it (through :meth:`expose`)."""
        parts = urllib.parse.urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
            raise ValueError(f"{url} is not a loopback URL with a port")
        port = self.expose(parts.port)
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{self.host_ip}:{port}"))

    # -- images ----------------------------------------------------------------------

    def import_image(self, archive: pathlib.Path) -> None:
        """Load an OCI archive (see :mod:`localcluster.images`) for the kubelet to use."""
        self.containerd.import_image(archive)

    def _image_archive(
        self, name: str, build: Callable[[pathlib.Path, pathlib.Path], str], binary: pathlib.Path
    ) -> pathlib.Path:
        archive = self.workdir / f"{name}.oci.tar"
        build(binary, archive)
        return archive

    # -- API access ------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        if self._api_ctx is None:
            pair = self.cluster.ca.issue("tokensync-node-admin", organizations=("system:masters",))
            cert, key = self.workdir / "admin.crt", self.workdir / "admin.key"
            cert.write_bytes(pair.cert_pem)
            key.write_bytes(pair.key_pem)
            ctx = ssl.create_default_context(cadata=self.cluster.ca.cert_pem.decode())
            ctx.load_cert_chain(cert, key)
            self._api_ctx = ctx
        return self._api_ctx

    def api(self, method: str, path: str, body: object | None = None, *, raw: bool = False) -> Any:
        """One request to the API server as an admin: decoded JSON, or text with ``raw``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310  (https to our own API server)
            self.cluster.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self._context()) as resp:  # noqa: S310
            text = resp.read().decode()
        return text if raw else json.loads(text or "null")

    def kubelet_get(self, path: str) -> str:
        """GET from the kubelet's own API (see :meth:`Kubelet.get`)."""
        return self.kubelet.get(path)

    def pods(self) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"spec.nodeName={self.name}")
        items: list[dict[str, Any]] = self.api("GET", f"/api/v1/pods?fieldSelector={selector}")[
            "items"
        ]
        return items

    def _authorize(self) -> None:
        try:
            self.api("POST", ROLE_BINDINGS, role_binding(self.name))
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def _delete_quietly(self, path: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError):
            self.api("DELETE", path)

    def _unregister(self) -> None:
        for path in registration(self.name):
            self._delete_quietly(path)

    def _delete_pods(self, timeout: float = 30.0) -> None:
        """Let the kubelet stop the node's pods (and tear down their networks) itself."""
        proc = self.processes.get("kubelet")
        if proc is None or not proc.alive():
            return
        for pod in self.pods():
            meta = pod["metadata"]
            self._delete_quietly(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=1"
            )
        with contextlib.suppress(NodeError):
            proc.wait_ready(lambda: not self.pods(), timeout, NodeError, interval=0.5)

    # -- parts -----------------------------------------------------------------------

    def _start_network(self) -> None:
        self.bridge.create()
        net = self.workdir / "cni"
        (net / "net.d").mkdir(parents=True)
        conflist = self.bridge.conflist(self.network, net / "ipam")
        (net / "net.d" / "10-tokensync.conflist").write_text(json.dumps(conflist, indent=2))
        # Pods reach the API server at host_ip: its certificate must name that address.
        self.cluster.serve_also_on(self.host_ip)
        self._apiserver_relay = Relay(self.host_ip, self.cluster.apiserver_port).start()

    def _start_containerd(self, bins: binaries.NodeBinaries) -> None:
        self._containerd = Containerd(
            self.workdir / "containerd", bins, cni_conf_dir=self.workdir / "cni" / "net.d"
        )
        proc = self._spawn("containerd", self._containerd.argv())
        proc.wait_ready(self._containerd.ready, 30.0, NodeError, interval=0.25, tail=25)

    def _start_kubelet(self, bins: binaries.NodeBinaries) -> None:
        self._kubelet = Kubelet(
            self.workdir / "kubelet",
            cluster=self.cluster,
            name=self.name,
            node_ip=self.host_ip,
            runtime_socket=self.containerd.socket,
            cgroup_root=self.cgroups.path,
            pod_logs_dir=self.workdir / "pod-logs",
        )
        proc = self._spawn("kubelet", self._kubelet.argv(bins.kubelet))
        proc.wait_ready(self._node_ready, READY_TIMEOUT, NodeError, interval=0.25, tail=25)

    def _node_ready(self) -> bool:
        try:
            node = self.api("GET", f"/api/v1/nodes/{self.name}")
        except urllib.error.HTTPError:
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _spawn(self, name: str, argv: list[str]) -> Process:
        proc = Process(name, argv, self.workdir / f"{name}.log")
        self.processes[name] = proc
        self._pids.append(proc.pid)
        return proc

    def _stop_process(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is not None:
            proc.stop()

    # -- cleanup ---------------------------------------------------------------------

    def _node_pids(self) -> set[int]:
        """Shims (they outlive containerd by design) and whatever is in the node's cgroups."""
        shims: set[int] = set()
        if self._containerd is not None:
            shims = set(hoststate.pids_with(self._containerd.shim_command_marker()))
        return shims | self.cgroups.pids()

    def _is_ours(self, path: pathlib.Path) -> bool:
        """Whether a file in a host path is this node's: a link into its directory
        (``/var/log/containers``), a file named after its CNI network or sandboxes (the CNI
        result cache), or a unix socket nobody listens on any more (the shims', the kubelet's
        device plugin socket). Anything else is someone else's."""
        if path.is_symlink():
            return os.readlink(path).startswith(str(self.workdir) + "/")
        prefixes = (f"{self.network}-", *(f"cni-loopback-{sid}-" for sid in self._sandboxes))
        return path.name.startswith(prefixes) or hoststate.is_dead_socket(path)


def stop_nodes_of(cluster: LocalCluster) -> None:
    """Stop every node still running on ``cluster`` (before its API server goes away)."""
    for node in list(_LIVE_NODES):
        if node.cluster is cluster:
            node.stop()


@atexit.register
def _stop_all() -> None:
    for node in list(_LIVE_NODES):
        node.stop()
