"""Where the control plane's and the node's binaries come from.

Control plane: ``KUBEBUILDER_ASSETS`` (the envtest layout: a directory with kube-apiserver
and etcd) wins when set. Otherwise ``hack/build-controlplane.sh`` builds pinned versions
from Go modules into a cache outside the repository, once, and prints the directory it used.

Node: ``hack/build-node.sh`` does the same for the kubelet, containerd, the CNI plugins and
our pause program, and installs Debian's runc and busybox-static (decision 0038).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess

from localcluster.errors import BinariesError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-controlplane.sh"
NODE_BUILD_SCRIPT = REPO_ROOT / "hack" / "build-node.sh"


@dataclasses.dataclass(frozen=True)
class Binaries:
    kube_apiserver: pathlib.Path
    etcd: pathlib.Path
    kube_controller_manager: pathlib.Path | None
    kubectl: pathlib.Path | None


def _optional(directory: pathlib.Path, name: str) -> pathlib.Path | None:
    path = directory / name
    return path if os.access(path, os.X_OK) else None


def from_directory(directory: pathlib.Path) -> Binaries:
    missing = [n for n in ("kube-apiserver", "etcd") if not os.access(directory / n, os.X_OK)]
    if missing:
        raise BinariesError(f"{directory} lacks executable {', '.join(missing)}")
    return Binaries(
        kube_apiserver=directory / "kube-apiserver",
        etcd=directory / "etcd",
        kube_controller_manager=_optional(directory, "kube-controller-manager"),
        kubectl=_optional(directory, "kubectl"),
    )


def _build(script: pathlib.Path, what: str) -> pathlib.Path:
    """Run a build script; it prints progress on stderr (passed through) and the directory
    on stdout."""
    result = subprocess.run(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BinariesError(
            f"building {what} failed (exit {result.returncode}); "
            "see the messages above and the build log they name"
        )
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def locate() -> Binaries:
    """Use KUBEBUILDER_ASSETS if set, else build (or reuse) the cached binaries."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        return from_directory(pathlib.Path(assets))
    return from_directory(_build(BUILD_SCRIPT, "the control plane"))


@dataclasses.dataclass(frozen=True)
class NodeBinaries:
    """The node's programs: ours from the cache directory, runc and busybox from Debian."""

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


def locate_node() -> NodeBinaries:
    """Build (or reuse) the node's binaries with hack/build-node.sh."""
    directory = _build(NODE_BUILD_SCRIPT, "the node")
    runc = shutil.which("runc") or "/usr/sbin/runc"
    bins = NodeBinaries(directory, pathlib.Path(runc), pathlib.Path("/bin/busybox"))
    for path in (bins.kubelet, bins.containerd, bins.ctr, bins.shim, bins.pause, bins.runc):
        if not os.access(path, os.X_OK):
            raise BinariesError(f"{path} is missing or not executable")
    return bins
