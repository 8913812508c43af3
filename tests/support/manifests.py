"""Rendering deploy/ (kustomize, helm) and applying it with the real kubectl.

Tests render exactly what a user would (``kubectl kustomize``, ``helm template``) and apply
it with ``kubectl apply --server-side``, the documented install command.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from localcluster import LocalCluster

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = ("cluster-wide", "single-namespace")
COMPONENTS = ("servicemonitor", "prometheusrule", "networkpolicy")
#: The opt-in workload identity grant: the component that fits each overlay.
WORKLOAD_IDENTITY = {
    "cluster-wide": "workload-identity",
    "single-namespace": "workload-identity-namespaced",
}
#: The opt-in grant of spec.rolloutRestart (decision 0042): the component for each overlay.
ROLLOUT_RESTART = {
    "cluster-wide": "rollout-restart",
    "single-namespace": "rollout-restart-namespaced",
}
OPERATOR_NAMESPACE = "tokensync-system"


class Kubectl:
    """The control plane's kubectl, with the admin kubeconfig unless told otherwise."""

    def __init__(self, cluster: LocalCluster, kubeconfig: pathlib.Path | None = None) -> None:
        if cluster.bins.kubectl is None:
            raise FileNotFoundError(
                "the control plane binaries have no kubectl (KUBEBUILDER_ASSETS without "
                "kubectl?); unset KUBEBUILDER_ASSETS to build one with hack/build-controlplane.sh"
            )
        self.path = cluster.bins.kubectl
        self.kubeconfig = kubeconfig or cluster.kubeconfig

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.path), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def kustomize(self, directory: pathlib.Path) -> str:
        return self.run("kustomize", str(directory)).stdout

    def apply(self, manifests: str, *, field_manager: str = "tokensync-install") -> str:
        """``kubectl apply --server-side``: the install command the docs give.

        With --force-conflicts: in the shared test cluster, other fixtures already own
        fields of the same objects (conftest replaces the CRD at session start, and a
        developer may have edited crds/ since); a user re-installing over another tool's
        objects takes them over the same way. A conflict inside one install cannot occur.
        """
        return self.run(
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={field_manager}",
            "-f",
            "-",
            stdin=manifests,
        ).stdout


def copy_deploy_tree(destination: pathlib.Path) -> pathlib.Path:
    """A copy of deploy/ and crds/ laid out as in the repository, to edit as a user would."""
    for name in ("deploy", "crds"):
        shutil.copytree(REPO_ROOT / name, destination / name, symlinks=True)
    return destination / "deploy"


def kustomization(
    workdir: pathlib.Path,
    *,
    overlay: str,
    components: Iterable[str] = (),
    watch_namespace: str | None = None,
) -> pathlib.Path:
    """A user's kustomization on top of ``overlay`` with ``components``; returns its directory.

    With ``watch_namespace`` the single-namespace overlay's settings.yaml is edited, which
    is what its comments tell users to do.
    """
    deploy = copy_deploy_tree(workdir)
    if watch_namespace is not None:
        settings = deploy / "overlays" / overlay / "settings.yaml"
        doc = yaml.safe_load(settings.read_text())
        doc["data"]["watchNamespace"] = watch_namespace
        settings.write_text(yaml.safe_dump(doc))
    user = deploy / "user"
    user.mkdir()
    (user / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"../overlays/{overlay}"],
                "components": [f"../components/{c}" for c in components],
            }
        )
    )
    return user


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def container(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(docs, "Deployment", "tokensync")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


HELM_CHART = DEPLOY / "helm" / "tokensync"
HELM_BUILD_SCRIPT = REPO_ROOT / "hack" / "build-helm.sh"


class HelmUnavailable(RuntimeError):
    """helm could not be built here (no Go toolchain)."""


def helm_binary() -> pathlib.Path:
    """helm from hack/build-helm.sh: built from its Go module once, then cached."""
    result = subprocess.run(
        ["bash", str(HELM_BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    if result.returncode == 2:  # the script's "no Go toolchain" exit
        raise HelmUnavailable("hack/build-helm.sh needs Go on PATH to build helm")
    if result.returncode != 0:
        raise RuntimeError(f"hack/build-helm.sh failed (exit {result.returncode}); see above")
    return pathlib.Path(result.stdout.strip().splitlines()[-1]) / "helm"


def helm(binary: pathlib.Path, *args: str) -> str:
    result = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout
