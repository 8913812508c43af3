"""Pods on the local node (``localcluster.node.Node``) for e2e tests: a busybox pod spec and
waits on its phase.

The control plane runs no scheduler, so every pod names the node (``spec.nodeName``); its
image is built on this machine and imported, never pulled (``imagePullPolicy: Never``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes import client

from localcluster import Node
from localcluster.images import BUSYBOX_IMAGE
from support.polling import wait_for


def busybox_pod(
    name: str,
    node: Node,
    script: str,
    *,
    volumes: Iterable[dict[str, Any]] = (),
    mounts: Iterable[dict[str, Any]] = (),
    env: Iterable[dict[str, Any]] = (),
    restart_policy: str = "Never",
) -> dict[str, Any]:
    """A one-container pod on ``node`` running ``sh -c script`` in the busybox test image.

    ``POD_NAME`` is set to the pod's name (downward API), for scripts that say who they are.
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node.name,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "env": [
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        *env,
                    ],
                    "volumeMounts": list(mounts),
                }
            ],
            "volumes": list(volumes),
        },
    }


def create(core: client.CoreV1Api, namespace: str, pod: dict[str, Any]) -> str:
    """Create ``pod`` (a dict, as :func:`busybox_pod` makes); return its name."""
    core.create_namespaced_pod(namespace, pod)
    return str(pod["metadata"]["name"])


def phase(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    status = core.read_namespaced_pod(name, namespace).status
    return status.phase if status else None


def wait_running(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 90) -> None:
    def running() -> bool:
        current = phase(core, namespace, name)
        if current in ("Succeeded", "Failed"):
            raise AssertionError(f"pod {namespace}/{name} ended ({current}) instead of running")
        return current == "Running"

    wait_for(running, timeout=timeout, interval=0.25, what=f"pod {namespace}/{name} running")


def wait_finished(
    core: client.CoreV1Api, namespace: str, name: str, timeout: float = 90
) -> client.V1PodStatus:
    """The pod's status once it Succeeded or Failed."""

    def finished() -> client.V1PodStatus | None:
        status = core.read_namespaced_pod(name, namespace).status
        return status if status is not None and status.phase in ("Succeeded", "Failed") else None

    return wait_for(finished, timeout=timeout, interval=0.25, what=f"pod {namespace}/{name} done")
