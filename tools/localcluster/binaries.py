"""Where the control plane binaries come from.

``KUBEBUILDER_ASSETS`` (the envtest layout: a directory with kube-apiserver and etcd) wins
when set. Otherwise ``hack/build-controlplane.sh`` builds pinned versions from Go modules
into a cache outside the repository, once, and prints the directory it used.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-controlplane.sh"


class BinariesError(RuntimeError):
    """The control plane binaries could not be found or built."""


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


def locate() -> Binaries:
    """Use KUBEBUILDER_ASSETS if set, else build (or reuse) the cached binaries."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        return from_directory(pathlib.Path(assets))
    # The script prints progress on stderr (passed through) and the directory on stdout.
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BinariesError(
            f"building the control plane failed (exit {result.returncode}); "
            "see the messages above and the build log they name"
        )
    return from_directory(pathlib.Path(result.stdout.strip().splitlines()[-1]))
