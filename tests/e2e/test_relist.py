"""A ClientCredential deleted while the operator's watch was down (issue 14 section 7).

A watch that cannot resume (the API server restarted, its watch cache starts fresh: 410
Gone) is replaced by a new listing, and a listing has no DELETED events: the operator would
go on refreshing a credential that no longer exists, recreating its Secret each time for
the garbage collector to delete again. The operator lists ClientCredentials on its own
every ``--resync-interval`` seconds and forgets the ones missing from the listing.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time

import httpx
import pytest
from kubernetes import client

from localcluster import LocalCluster
from support import testenv
from support.operatorproc import OperatorProcess, install_operator_identity
from support.polling import wait_for
from support.tokenserver import TokenServer
from tokensync import kube, model

RESYNC_SECONDS = 2
#: Tokens renewed every few seconds, so that a forgotten credential would be noticed.
REFRESH = {"minInterval": "1s", "renewBefore": "57s"}


def compact(cluster: LocalCluster) -> None:
    """Compact etcd's history up to now (its JSON gateway: no etcdctl needed)."""
    with httpx.Client(base_url=cluster.etcd_url, timeout=10) as etcd:
        head = etcd.post("/v3/kv/range", json={"key": "AA=="}).json()["header"]["revision"]
        etcd.post("/v3/kv/compaction", json={"revision": head, "physical": True}).raise_for_status()


@pytest.mark.chaos
def test_a_credential_deleted_while_the_watch_was_down_is_forgotten(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    crds: None,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    kubeconfig = install_operator_identity(cluster, api_client, tmp_path / "sa.kubeconfig")
    with TokenServer(lifetime=60) as server:
        env = testenv.Env(api_client, namespace)
        for name in ("kept", "gone"):
            server.add_client(name, f"{name}-secret")
            env.secret(f"{name}-client", {"client_id": name, "client_secret": f"{name}-secret"})
            env.create_credential(
                name,
                {
                    "tokenURL": server.url,
                    "clientSecretRef": {"name": f"{name}-client"},
                    "refresh": REFRESH,
                },
            )
        with OperatorProcess(
            kubeconfig=kubeconfig,
            log_path=tmp_path / "operator.log",
            extra_args=["--namespace", namespace, f"--resync-interval={RESYNC_SECONDS}"],
        ) as operator:
            for name in ("kept", "gone"):
                env.wait_ready(name, timeout=60)
            assert operator.proc is not None
            # The operator is frozen while the API server restarts (its watch connection
            # dies with the old server) and the credential is deleted: no watch of it is
            # open to carry the DELETED event.
            os.kill(operator.proc.pid, signal.SIGSTOP)
            try:
                cluster.stop_apiserver()
            finally:
                cluster.start_apiserver()
            try:
                env.custom.delete_namespaced_custom_object(
                    testenv.GROUP, testenv.VERSION, namespace, testenv.PLURAL, "gone"
                )
                # Compacted history: the watch cannot resume from where it was (410 Gone),
                # so the deletion reaches the operator only as a listing without it.
                compact(cluster)
            finally:
                os.kill(operator.proc.pid, signal.SIGCONT)
            wait_for(
                lambda: "forgot " + f"{namespace}/gone" in operator.log(),
                timeout=60,
                what="the operator forgetting the deleted credential",
            )
            forgotten_at = time.time()
            # The other credential is still served: a forced refresh gets a new token.
            before = env.token("kept-token")
            env.force_refresh("kept")
            wait_for(
                lambda: env.token("kept-token") not in (None, before),
                timeout=60,
                what="a new token for the credential that was kept",
            )
            time.sleep(3 * RESYNC_SECONDS)
    late = [
        i for i in server.issued if i.client_id == "gone" and i.issued_at.timestamp() > forgotten_at
    ]
    assert not late, f"{len(late)} token requests for a deleted credential after it was forgotten"
    # Its target Secret is not recreated (the garbage collector removed it with its owner).
    assert wait_for(lambda: env.secret_data("gone-token") is None, timeout=30, what="no gone-token")


async def test_the_client_secret_listing_has_every_labelled_secret_at_its_version(
    api_client: client.ApiClient, namespace: str
) -> None:
    """The listing that keeps watched client Secrets trusted (decision 0025 addendum), against
    the API server: metadata only, the label's Secrets only, their current versions."""
    core = client.CoreV1Api(api_client)
    label = {model.CLIENT_SECRET_LABEL: "true"}
    versions = {}
    for name, labels in (("one", label), ("two", label), ("other", {"app": "x"})):
        made = core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name, labels=labels),
                string_data={"client_secret": "s3cr3t"},
            ),
        )
        versions[(namespace, name)] = made.metadata.resource_version
    changed = core.patch_namespaced_secret("two", namespace, {"stringData": {"k": "v"}})
    versions[(namespace, "two")] = changed.metadata.resource_version
    api = kube.Kube(api_client, workers=1)
    selector = f"{model.CLIENT_SECRET_LABEL}=true"
    try:
        here = await api.list_secret_versions(namespace, selector)
        everywhere = await api.list_secret_versions(None, selector)
    finally:
        api.close()
    expected = {key: versions[key] for key in ((namespace, "one"), (namespace, "two"))}
    assert here == expected
    assert {key: v for key, v in everywhere.items() if key[0] == namespace} == expected
