"""The operator as a real process, under the identity the deploy/ manifests give it.

Tests run ``python -m tokensync run`` exactly as a user would, authenticated as the
``tokensync`` ServiceAccount with a token from the TokenRequest API, so every e2e test
also proves that the RBAC in deploy/ is sufficient. Every token endpoint of the tests
listens on loopback, which tokensync refuses unless its admin allows it: the operator is
started with that allowance (:data:`LOOPBACK`, ``--allow-private-network``) unless a test
asks for none. That identity holds the default role
only; tests of workload identity federation add the opt-in rules around themselves
(:func:`workload_identity_granted`) and remove them after.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import yaml
from kubernetes import client, dynamic

from localcluster import LocalCluster
from localcluster.cluster import free_port
from support.polling import wait_for

#: Starts made on new ports when one picked was taken before the operator bound it.
PORT_ATTEMPTS = 3


class _PortTaken(RuntimeError):
    """The operator exited at start because one of its ports was taken meanwhile."""


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
RBAC = REPO_ROOT / "deploy" / "base" / "rbac.yaml"
NAMESPACE_MANIFEST = REPO_ROOT / "deploy" / "base" / "namespace.yaml"
#: The opt-in workload identity rules (kustomize component; the Helm chart reads the same).
WORKLOAD_IDENTITY_RBAC = REPO_ROOT / "deploy" / "components" / "workload-identity" / "rbac.yaml"
#: The operator's ServiceAccount (namespace, name) in the deploy/ manifests.
OPERATOR_ACCOUNT = ("tokensync-system", "tokensync")
#: What the tests' operators may reach although it is private: loopback, where the token
#: servers listen (issue 14 section 4, decision 0037).
LOOPBACK = ("127.0.0.0/8", "::1")


def apply_files(api: client.ApiClient, paths: Iterable[pathlib.Path]) -> None:
    """Server-side apply every document of every file (like ``kubectl apply --server-side``)."""
    apply_documents(
        api, [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]
    )


def apply_documents(api: client.ApiClient, docs: Iterable[dict[str, Any]]) -> None:
    dyn = dynamic.DynamicClient(api)
    for doc in docs:
        resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        resource.server_side_apply(
            body=doc,
            name=doc["metadata"]["name"],
            namespace=doc["metadata"].get("namespace"),
            field_manager="tokensync-tests",
            force_conflicts=True,
        )


def delete_documents(api: client.ApiClient, docs: Iterable[dict[str, Any]]) -> None:
    dyn = dynamic.DynamicClient(api)
    for doc in docs:
        resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        meta = doc["metadata"]
        with contextlib.suppress(dynamic.exceptions.NotFoundError):  # already gone
            resource.delete(name=meta["name"], namespace=meta.get("namespace"))


def operator_may(
    api: client.ApiClient,
    verb: str,
    resource: str,
    *,
    subresource: str = "",
    namespace: str = "",
    account: tuple[str, str] = OPERATOR_ACCOUNT,
) -> bool:
    """What the API server's authorizer answers for the operator's ServiceAccount
    (``account``: namespace, name), asked by the admin ``api`` with a SubjectAccessReview,
    as ``kubectl auth can-i --as=system:serviceaccount:...`` does."""
    account_ns, name = account
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "spec": {
                "user": f"system:serviceaccount:{account_ns}:{name}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{account_ns}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "subresource": subresource,
                    "namespace": namespace,
                },
            }
        }
    )
    return bool(review.status.allowed)


def may_mint_tokens(
    api: client.ApiClient, namespace: str, *, account: tuple[str, str] = OPERATOR_ACCOUNT
) -> bool:
    """May the operator read a ServiceAccount in ``namespace`` and mint its token?"""

    def may(verb: str, subresource: str = "") -> bool:
        return operator_may(
            api,
            verb,
            "serviceaccounts",
            subresource=subresource,
            namespace=namespace,
            account=account,
        )

    return may("get") and may("create", "token")


@contextlib.contextmanager
def workload_identity_granted(
    api: client.ApiClient, docs: Iterable[dict[str, Any]] | None = None, *, namespace: str
) -> Iterator[None]:
    """The opt-in workload identity rules applied (by default the kustomize component's,
    granted cluster-wide), then removed: the shared control plane goes back to the default
    install, which grants none. Waits until the authorizer sees each change in
    ``namespace``, so that the operator's first attempt is not refused."""
    if docs is None:
        docs = yaml.safe_load_all(WORKLOAD_IDENTITY_RBAC.read_text())
    grant = [doc for doc in docs if doc]
    apply_documents(api, grant)
    try:
        wait_for(lambda: may_mint_tokens(api, namespace), what="the workload identity grant")
        yield
    finally:
        delete_documents(api, grant)
        wait_for(lambda: not may_mint_tokens(api, namespace), what="the grant's removal")


def service_account_kubeconfig(
    cluster: LocalCluster,
    api: client.ApiClient,
    path: pathlib.Path,
    *,
    namespace: str = "tokensync-system",
    name: str = "tokensync",
) -> pathlib.Path:
    """A kubeconfig holding a TokenRequest token for the ServiceAccount."""
    request = client.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 6 * 3600}}
    )
    return cluster.token_kubeconfig(path, token=request.status.token)


def install_operator_identity(
    cluster: LocalCluster, api: client.ApiClient, path: pathlib.Path
) -> pathlib.Path:
    apply_files(api, [NAMESPACE_MANIFEST, RBAC])
    return service_account_kubeconfig(cluster, api, path)


class OperatorProcess:
    def __init__(
        self,
        *,
        kubeconfig: pathlib.Path,
        log_path: pathlib.Path,
        extra_args: Iterable[str] = (),
        verbose: bool = True,
        private_networks: Iterable[str] = LOOPBACK,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        #: More environment variables for the process (HTTPS_PROXY, say).
        self.env = dict(env or {})
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.verbose = verbose  # debug logging; the benchmarks turn it off
        #: --allow-private-network; () for an operator that reaches no private network.
        self.private_networks = tuple(private_networks)
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0
        #: The refresh endpoint's port (decision 0043): a free one per start, since several
        #: operators run at once on this machine.
        self.refresh_port = 0

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        """Start the operator and wait until it is healthy. Its three ports are picked free
        just before, and the operator binds them seconds later: an outgoing connection of
        any process on the machine can take one meanwhile (the ephemeral range is shared).
        Such a start is made again on new ports, up to :data:`PORT_ATTEMPTS` times."""
        for _ in range(PORT_ATTEMPTS - 1):
            with contextlib.suppress(_PortTaken):
                return self._start(timeout)
        return self._start(timeout)

    def _start(self, timeout: float) -> OperatorProcess:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.refresh_port = free_port()
        # The log is appended to by every start: only this start's part says why it ended.
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tokensync",
                    "run",
                    "--allow-insecure-http",
                    *(
                        [f"--allow-private-network={','.join(self.private_networks)}"]
                        if self.private_networks
                        else []
                    ),
                    f"--metrics-port={self.metrics_port}",
                    f"--health-port={self.health_port}",
                    f"--refresh-port={self.refresh_port}",
                    *(["--verbose"] if self.verbose else []),
                    *self.extra_args,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                ours = self.log_path.read_bytes()[before:].decode(errors="replace")
                taken = "address already in use" in ours.lower()
                raise (_PortTaken if taken else RuntimeError)(
                    f"operator exited at start:\n{ours[-3000:]}"
                )
            if self._get(f"http://127.0.0.1:{self.health_port}/healthz") is not None:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"operator not healthy within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)
            self.proc = None

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @staticmethod
    def _get(url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(resp.read().decode())
        except (urllib.error.URLError, OSError):
            return None

    def metrics(self) -> str:
        return self._get(f"http://127.0.0.1:{self.metrics_port}/metrics") or ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_running(self) -> None:
        """RuntimeError with the log's tail when the process has exited: a test waiting for
        its log fails at once, with the reason, instead of at its timeout."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
