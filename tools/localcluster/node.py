"""A real Kubernetes node for a :class:`~localcluster.cluster.LocalCluster`: containerd
(with runc and CNI bridge networking) and a kubelet that registers with the API server.

Nothing is faked: pods scheduled to the node (``spec.nodeName``: the control plane runs no
scheduler) get a sandbox, a network namespace on a bridge of our own, Secret volumes
mounted by the kubelet and containers run by runc. Images come from this machine, never a
registry: :mod:`localcluster.images` writes them and :meth:`Node.import_image` loads them.

What the node touches on the host, all undone by :meth:`Node.stop`:

- a temporary directory (containerd's root and state, the kubelet's root dir, pod logs,
  certificates, CNI configuration and IP allocations); every mount under it is unmounted;
- a bridge ``tsnode<id>`` with the gateway address of a free ``10.77.N.0/24``, and the veth
  pairs of pods (the bridge plugin runs with ``isGateway: false`` and ``ipMasq: false``: no
  IP forwarding, no iptables rule; the bridge address is also the node's InternalIP, where
  the kubelet listens, so the kubelet is reachable from this machine only);
- a cgroup ``/tokensync-node-<id>`` in every hierarchy (the kubelet's ``cgroupRoot``);
- the kernel settings the kubelet changes at start (``vm.overcommit_memory``,
  ``kernel.panic``, ``kernel.panic_on_oops``, ...): recorded first, restored at stop;
- the few host paths containerd and the kubelet create whatever their configuration says
  (``/run/containerd/s`` for shim sockets, ``/var/log/containers`` for log links, the
  device plugin socket in ``/var/lib/kubelet/device-plugins``): removed again when they
  did not exist before;
- a ClusterRoleBinding giving ``system:node:<name>`` the ``system:node`` role (the API
  server runs RBAC only, no Node authorizer), and the Node object itself.

The API server reaches the kubelet (logs, exec) only when it was started with kubelet
client credentials: see :func:`apiserver_reaches_kubelets` and docs/decisions/0038.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import ipaddress
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from types import TracebackType
from typing import Any, Self

import yaml

from localcluster import images
from localcluster.cluster import LocalCluster, _Process, free_port

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-node.sh"
READY_TIMEOUT = 120.0
SUBNET_POOL = ipaddress.IPv4Network("10.77.0.0/16")
K8S_NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses
# The kubelet sets these at start (container_manager_linux.go, setupKernelTunables).
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Created by containerd or the kubelet whatever their configuration says.
HOST_PATHS = (
    pathlib.Path("/run/containerd"),
    pathlib.Path("/var/log/containers"),
    pathlib.Path("/var/lib/cni"),
    pathlib.Path("/var/lib/kubelet"),  # device-plugins/kubelet.sock ignores --root-dir
)
_LIVE_NODES: set[Node] = set()


class NodeError(RuntimeError):
    """The node did not come up, or could not be torn down; the message says why."""


@dataclasses.dataclass(frozen=True)
class NodeBinaries:
    directory: pathlib.Path
    runc: pathlib.Path
    busybox: pathlib.Path

    @property
    def kubelet(self) -> pathlib.Path:
        return self.directory / "kubelet"

    @property
    def containerd(self) -> pathlib.Path:
        return self.directory / "containerd"

    @property
    def ctr(self) -> pathlib.Path:
        return self.directory / "ctr"

    @property
    def shim(self) -> pathlib.Path:
        return self.directory / "containerd-shim-runc-v2"

    @property
    def pause(self) -> pathlib.Path:
        return self.directory / "pause"

    @property
    def cni(self) -> pathlib.Path:
        return self.directory / "cni"


def locate_node_binaries() -> NodeBinaries:
    """Build (or reuse) the node's binaries with hack/build-node.sh."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise NodeError(
            f"building the node failed (exit {result.returncode}); "
            "see the messages above and the build log they name"
        )
    directory = pathlib.Path(result.stdout.strip().splitlines()[-1])
    runc = shutil.which("runc") or "/usr/sbin/runc"
    bins = NodeBinaries(directory, pathlib.Path(runc), pathlib.Path("/bin/busybox"))
    for path in (bins.kubelet, bins.containerd, bins.ctr, bins.shim, bins.pause, bins.runc):
        if not os.access(path, os.X_OK):
            raise NodeError(f"{path} is missing or not executable")
    return bins


def apiserver_reaches_kubelets(cluster: LocalCluster) -> bool:
    """Whether the cluster's API server can authenticate to a kubelet (logs, exec, proxy).

    That takes ``--kubelet-client-certificate``/``--kubelet-client-key`` and, since the
    node's InternalIP is what it must dial, ``--kubelet-preferred-address-types`` starting
    with ``InternalIP`` (the default tries the node's name, which does not resolve here).
    """
    proc = cluster.processes.get("kube-apiserver")
    if proc is None:
        return False
    argv = [str(a) for a in proc.popen.args]  # type: ignore[union-attr]
    return any(a.startswith("--kubelet-client-certificate=") for a in argv) and any(
        a.startswith("--kubelet-preferred-address-types=InternalIP") for a in argv
    )


# -- host inspection ------------------------------------------------------------------


def _mount_points() -> list[str]:
    points = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        field = line.split(" ")[4]
        points.append(field.encode().decode("unicode_escape"))  # octal escapes: \040 etc.
    return points


def _routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    nets = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default", "broadcast"):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dst, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def _link_exists(name: str) -> bool:
    return pathlib.Path(f"/sys/class/net/{name}").exists()


def _links_of(bridge: str) -> list[str]:
    brif = pathlib.Path(f"/sys/class/net/{bridge}/brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def _cgroup_hierarchies() -> list[pathlib.Path]:
    """Every mounted cgroup hierarchy: the v1 controllers and the v2 (unified) tree."""
    found = []
    for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
        _dev, point, fstype, *_ = line.split(" ")
        if fstype in ("cgroup", "cgroup2"):
            found.append(pathlib.Path(point))
    return found


def _pids_with(needle: str) -> list[int]:
    """Processes whose command line contains ``needle``."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(proc.name))
    return pids


def _read_sysctl(name: str) -> str | None:
    try:
        return (pathlib.Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _listening(path: pathlib.Path) -> bool:
    """Whether a server still accepts connections on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NodeError("a node needs root: it mounts, makes cgroups and network links")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


class Node:
    """containerd + kubelet registered as ``name`` with a running :class:`LocalCluster`."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        name: str = "tokensync-node",
        bins: NodeBinaries | None = None,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self._bins = bins
        self.id = secrets.token_hex(3)
        self.bridge = f"tsnode{self.id}"
        self.cgroup_root = f"/tokensync-node-{self.id}"
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-node-"))
        self.processes: dict[str, _Process] = {}
        self.subnet: ipaddress.IPv4Network | None = None
        self.kubelet_port = 0
        self._sysctls: dict[str, str] = {}
        self._host_paths_before: dict[pathlib.Path, bool] = {}
        self._api_ctx: ssl.SSLContext | None = None
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
    def bins(self) -> NodeBinaries:
        if self._bins is None:
            self._bins = locate_node_binaries()
        return self._bins

    @property
    def node_ip(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    @property
    def network(self) -> str:
        """The CNI network's name, which also prefixes its files in the CNI cache."""
        return f"tokensync-{self.id}"

    @property
    def containerd_socket(self) -> pathlib.Path:
        return self.workdir / "containerd" / "containerd.sock"

    def start(self) -> None:
        """Start containerd and the kubelet; return once the Node is Ready."""
        _LIVE_NODES.add(self)
        try:
            _require_root()
            _ = self.bins
            self._record_host_state()
            self._authorize()
            self._setup_network()
            self._make_cgroup_root()
            self._start_containerd()
            self.import_image(self._pause_archive())
            self._start_kubelet()
            self._wait_ready()
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
            proc = self.processes.pop("kubelet", None)
            if proc is not None:
                proc.stop()
            with contextlib.suppress(Exception):
                self._remove_containers()
            proc = self.processes.pop("containerd", None)
            if proc is not None:
                proc.stop()
            self._kill_leftover_processes()
            self._unmount_all()
            self._remove_links()
            self._remove_cgroups()
            self._restore_host_state()
            with contextlib.suppress(Exception):
                self._unregister()
        finally:
            _LIVE_NODES.discard(self)
            if not os.environ.get("TOKENSYNC_NODE_KEEP"):
                shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this node is still on the host: empty after a clean :meth:`stop`."""
        found = [f"process {pid}" for pid in self._pids if pathlib.Path(f"/proc/{pid}").exists()]
        found += [f"process {pid}" for pid in self._shim_pids() + sorted(self._cgroup_pids())]
        found += [f"mount {m}" for m in _mount_points() if m.startswith(str(self.workdir))]
        if _link_exists(self.bridge):
            found.append(f"link {self.bridge} (ports: {_links_of(self.bridge)})")
        found += [
            f"cgroup {h / self.cgroup_root.lstrip('/')}"
            for h in _cgroup_hierarchies()
            if (h / self.cgroup_root.lstrip("/")).exists()
        ]
        found += [
            f"host path {p} (did not exist before)"
            for p, existed in self._host_paths_before.items()
            if not existed and p.exists()
        ]
        found += [
            f"sysctl {k}={_read_sysctl(k)} (was {v})"
            for k, v in self._sysctls.items()
            if _read_sysctl(k) != v
        ]
        return sorted(set(found))

    # -- host state ------------------------------------------------------------------

    def _record_host_state(self) -> None:
        for name in KERNEL_TUNABLES:
            value = _read_sysctl(name)
            if value is not None:
                self._sysctls[name] = value
        self._host_paths_before = {p: p.exists() for p in HOST_PATHS}

    def _restore_host_state(self) -> None:
        for name, value in self._sysctls.items():
            if _read_sysctl(name) != value:
                with contextlib.suppress(OSError):
                    (pathlib.Path("/proc/sys") / name).write_text(value)
        # containerd's loopback network caches results under the pod sandbox's ID.
        cri = self.workdir / "containerd"
        self._sandboxes = {
            p.name for p in cri.glob("*/io.containerd.grpc.v1.cri/sandboxes/*") if len(p.name) == 64
        }
        for path, existed in self._host_paths_before.items():
            self._prune(path, remove_root=not existed)

    def _prune(self, root: pathlib.Path, *, remove_root: bool) -> None:
        """Remove this node's traces from a host directory, and then emptied directories.

        Ours: links into the workdir (``/var/log/containers``), files named after the CNI
        network (the CNI result cache), and unix sockets nobody listens on any more (the
        shims' and the kubelet's device plugin socket). Anything else is someone else's.
        """
        if not root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(root, topdown=False):
            for name in files:
                path = pathlib.Path(dirpath) / name
                if self._is_ours(path):
                    with contextlib.suppress(OSError):
                        path.unlink()
            if remove_root or pathlib.Path(dirpath) != root:
                with contextlib.suppress(OSError):
                    pathlib.Path(dirpath).rmdir()  # only if empty

    def _is_ours(self, path: pathlib.Path) -> bool:
        if path.is_symlink():
            return os.readlink(path).startswith(str(self.workdir) + "/")
        prefixes = (f"{self.network}-", *(f"cni-loopback-{sid}-" for sid in self._sandboxes))
        if path.name.startswith(prefixes):
            return True
        try:
            return stat.S_ISSOCK(path.lstat().st_mode) and not _listening(path)
        except OSError:
            return False

    # -- network ---------------------------------------------------------------------

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        used = _routes()
        for candidate in SUBNET_POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(n) for n in used):
                return candidate
        raise NodeError(f"no free /24 in {SUBNET_POOL}: every one overlaps a route")

    def _setup_network(self) -> None:
        self.subnet = self._pick_subnet()
        gateway = f"{self.node_ip}/{self.subnet.prefixlen}"
        for argv in (
            ("link", "add", "name", self.bridge, "type", "bridge"),
            ("addr", "add", gateway, "dev", self.bridge),
            ("link", "set", self.bridge, "up"),
        ):
            result = _ip(*argv)
            if result.returncode != 0:
                raise NodeError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")
        net = self.workdir / "cni"
        (net / "net.d").mkdir(parents=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": False,  # the bridge has its address already: no forwarding
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet), "gateway": self.node_ip}]],
                        "routes": [{"dst": "0.0.0.0/0", "gw": self.node_ip}],
                        "dataDir": str(net / "ipam"),
                    },
                }
            ],
        }
        (net / "net.d" / "10-tokensync.conflist").write_text(json.dumps(conflist, indent=2))

    def _remove_links(self) -> None:
        if not _link_exists(self.bridge):
            return
        for port in _links_of(self.bridge):
            _ip("link", "delete", port)
        _ip("link", "delete", self.bridge)

    # -- cgroups ---------------------------------------------------------------------

    def _make_cgroup_root(self) -> None:
        # The kubelet wants its cgroupRoot to exist in every hierarchy it uses.
        for hierarchy in _cgroup_hierarchies():
            (hierarchy / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for hierarchy in _cgroup_hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            if not root.is_dir():
                continue
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _remove_cgroups(self) -> None:
        for hierarchy in _cgroup_hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            if not root.is_dir():
                continue
            dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for directory in [*dirs, root]:
                with contextlib.suppress(OSError):
                    directory.rmdir()

    # -- processes and mounts --------------------------------------------------------

    def _shim_pids(self) -> list[int]:
        """containerd's shims for this node: they name its socket on their command line."""
        return _pids_with(f"-address {self.containerd_socket}")

    def _kill_leftover_processes(self) -> None:
        """Shims outlive containerd by design, and a container may outlive its shim."""
        for _ in range(50):
            pids = set(self._shim_pids()) | self._cgroup_pids()
            pids.discard(os.getpid())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _unmount_all(self) -> None:
        prefix = str(self.workdir)
        for _ in range(10):
            points = [m for m in _mount_points() if m == prefix or m.startswith(prefix + "/")]
            if not points:
                return
            for point in sorted(set(points), key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)

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
        """GET from the kubelet's own API, with a client certificate from the cluster CA.

        The same path the API server takes for ``pods/log`` once it has kubelet client
        credentials; the kubelet authenticates the certificate and asks the API server
        (SubjectAccessReview) whether that user may read ``nodes/proxy``.
        """
        pair = self.cluster.ca.issue("tokensync-kubelet-client", organizations=("system:masters",))
        cert, key = self.workdir / "kubelet-client.crt", self.workdir / "kubelet-client.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        ctx = ssl.create_default_context(cadata=self.cluster.ca.cert_pem.decode())
        ctx.load_cert_chain(cert, key)
        url = f"https://{self.node_ip}:{self.kubelet_port}{path}"
        with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
            return str(resp.read().decode())

    def _authorize(self) -> None:
        # RBAC's system:node role has no subjects by default; the Node authorizer, which
        # would otherwise let kubelets in, is not enabled on this control plane.
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"tokensync:node:{self.name}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": f"system:node:{self.name}",
                }
            ],
        }
        try:
            self.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def _delete_quietly(self, path: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError):
            self.api("DELETE", path)

    def _unregister(self) -> None:
        self._delete_quietly(f"/api/v1/nodes/{self.name}")
        self._delete_quietly(
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        )
        self._delete_quietly(
            f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/tokensync:node:{self.name}"
        )

    def pods(self) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"spec.nodeName={self.name}")
        items: list[dict[str, Any]] = self.api("GET", f"/api/v1/pods?fieldSelector={selector}")[
            "items"
        ]
        return items

    def _delete_pods(self, timeout: float = 30.0) -> None:
        """Let the kubelet stop the node's pods (and tear down their networks) itself."""
        if "kubelet" not in self.processes or not self.processes["kubelet"].alive():
            return
        for pod in self.pods():
            meta = pod["metadata"]
            self._delete_quietly(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=1"
            )
        deadline = time.monotonic() + timeout
        while self.pods() and time.monotonic() < deadline:
            time.sleep(0.5)

    # -- containerd ------------------------------------------------------------------

    def _containerd_config(self) -> str:
        d = self.workdir / "containerd"
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        lines = [
            "version = 3",
            f"root = '{d / 'root'}'",
            f"state = '{d / 'state'}'",
            "imports = []",
            # The kubelet sets the OOM score of pods' sandboxes below ours, which takes
            # CAP_SYS_RESOURCE; without it containerd clamps the score instead of failing.
            "oom_score = 0",
            "[grpc]",
            f"  address = '{self.containerd_socket}'",
            "[ttrpc]",
            f"  address = '{self.containerd_socket}.ttrpc'",
            "[plugins.'io.containerd.cri.v1.images']",
            "  snapshotter = 'overlayfs'",
            "[plugins.'io.containerd.cri.v1.images'.pinned_images]",
            f"  sandbox = '{images.PAUSE_IMAGE}'",
            f"[{runtime}]",
            "  restrict_oom_score_adj = true",
            "  netns_mounts_under_state_dir = true",
            f"  cdi_spec_dirs = ['{d / 'cdi'}']",
            f"[{runtime}.cni]",
            f"  bin_dirs = ['{self.bins.cni}']",
            f"  conf_dir = '{self.workdir / 'cni' / 'net.d'}'",
            f"[{runtime}.containerd.runtimes.runc]",
            "  runtime_type = 'io.containerd.runc.v2'",
            f"  runtime_path = '{self.bins.shim}'",
            f"[{runtime}.containerd.runtimes.runc.options]",
            f"  BinaryName = '{self.bins.runc}'",
            f"  Root = '{d / 'runc'}'",
            "  SystemdCgroup = false",
            "[plugins.'io.containerd.grpc.v1.cri']",
            "  stream_server_address = '127.0.0.1'",
            "  stream_server_port = '0'",
            "[plugins.'io.containerd.internal.v1.opt']",
            f"  path = '{d / 'opt'}'",
            "[plugins.'io.containerd.image-verifier.v1.bindir']",
            f"  bin_dir = '{d / 'image-verifier'}'",
            "[plugins.'io.containerd.nri.v1.nri']",
            "  disable = true",
        ]
        return "\n".join(lines) + "\n"

    def _start_containerd(self) -> None:
        d = self.workdir / "containerd"
        d.mkdir(exist_ok=True)
        config = d / "config.toml"
        config.write_text(self._containerd_config())
        # env(1) execs containerd with our binaries first on PATH (the shim finds itself
        # there), so the process we stop is containerd itself.
        path = f"PATH={self.bins.directory}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"
        proc = self._spawn(
            "containerd",
            ["env", path, str(self.bins.containerd), f"--config={config}", "--log-level=info"],
        )
        self._wait(proc, self._containerd_ready, 30.0)

    def ctr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bins.ctr), f"--address={self.containerd_socket}", "-n", K8S_NAMESPACE, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def _containerd_ready(self) -> bool:
        return self.containerd_socket.exists() and self.ctr("version", timeout=5).returncode == 0

    def import_image(self, archive: pathlib.Path) -> None:
        """Load an OCI archive (see :mod:`localcluster.images`) for the kubelet to use."""
        result = self.ctr("images", "import", str(archive), timeout=120)
        if result.returncode != 0:
            raise NodeError(f"ctr images import {archive} failed: {result.stderr.strip()}")

    def _pause_archive(self) -> pathlib.Path:
        archive = self.workdir / "pause.oci.tar"
        images.pause_image(self.bins.pause, archive)
        return archive

    def busybox_archive(self) -> pathlib.Path:
        """The test image (:data:`images.BUSYBOX_IMAGE`) as an archive for :meth:`import_image`."""
        archive = self.workdir / "busybox.oci.tar"
        images.busybox_image(self.bins.busybox, archive)
        return archive

    def _remove_containers(self) -> None:
        """Kill and delete whatever runs in containerd after the kubelet is gone."""
        tasks = self.ctr("tasks", "list", "-q").stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=10)
        for task in tasks:
            self.ctr("tasks", "delete", "--force", task, timeout=10)
        containers = self.ctr("containers", "list", "-q").stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, timeout=30)

    # -- kubelet ---------------------------------------------------------------------

    def _kubelet_config(self) -> dict[str, Any]:
        k = self.workdir / "kubelet"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines run cgroup v1; 1.35+ refuse it otherwise
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.node_ip,
            "port": self.kubelet_port,
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
            "podLogsDir": str(self.workdir / "pod-logs"),
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

    def _start_kubelet(self) -> None:
        k = self.workdir / "kubelet"
        k.mkdir()
        (k / "ca.crt").write_bytes(self.cluster.ca.cert_pem)
        serving = self.cluster.ca.issue(self.name, server_hosts=(self.node_ip, self.name))
        (k / "serving.crt").write_bytes(serving.cert_pem)
        (k / "serving.key").write_bytes(serving.key_pem)
        (k / "resolv.conf").write_text("# tokensync local node: pods resolve no names\n")
        self.kubelet_port = free_port()
        config = k / "config.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config()))
        kubeconfig = self.cluster.write_kubeconfig(
            k / "kubeconfig", user=f"system:node:{self.name}", groups=("system:nodes",)
        )
        self._spawn(
            "kubelet",
            [
                str(self.bins.kubelet),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={k / 'root'}",
                f"--cert-dir={k / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
        )

    def _node_ready(self) -> bool:
        try:
            node = self.api("GET", f"/api/v1/nodes/{self.name}")
        except urllib.error.HTTPError:
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _wait_ready(self) -> None:
        self._wait(self.processes["kubelet"], self._node_ready, READY_TIMEOUT)

    # -- helpers ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        proc = _Process(name, argv, self.workdir / f"{name}.log")
        self.processes[name] = proc
        self._pids.append(proc.pid)
        return proc

    def _wait(self, proc: _Process, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise NodeError(
                    f"{proc.name} exited with code {proc.popen.returncode} before it was "
                    f"ready; read {proc.log_path}\n{proc.log_tail(25)}"
                )
            if ready():
                return
            time.sleep(0.25)
        raise NodeError(
            f"{proc.name} was not ready within {timeout:.0f}s; read {proc.log_path}\n"
            + proc.log_tail(25)
        )


@atexit.register
def _stop_all() -> None:
    for node in list(_LIVE_NODES):
        node.stop()
