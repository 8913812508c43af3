"""Adoption and retention of the target Secret (issue 16 section 2, decision 0041).

spec.target.creationPolicy (Owner, Adopt, Merge) and deletionPolicy (Delete, Retain) on a
real API server with the garbage collector of kube-controller-manager, a real token server,
and the operator under the deploy/ ServiceAccount. The recipes are applied from examples/,
pointed at the test's token server.
"""

from __future__ import annotations

import base64
import copy
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from test_operator import CLIENT_SECRET, Env

from conftest import apply_crds
from localcluster import LocalCluster
from support.fixtures import operator, token_server
from support.operatorproc import OperatorProcess, install_operator_identity
from support.testenv import GROUP, PLURAL, VERSION
from support.tokenserver import TokenServer

__all__ = ["operator", "token_server"]
pytestmark = pytest.mark.e2e

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
HAND_OVER = "tokensync.dev/hand-over-to"
LINK = "tokensync.dev/written-for"
MANAGED_BY = "app.kubernetes.io/managed-by"
MERGE_LABEL = "tokensync.dev/merge-target"
TOKEN_KEYS = {"access_token", "token_type", "expires_at", "authorization"}
#: The garbage collector notices a new CRD at its next discovery resync (30 s).
GC_TIMEOUT = 120


@pytest.fixture
def env(
    api_client: client.ApiClient,
    namespace: str,
    token_server: TokenServer,
    operator: OperatorProcess,
) -> Iterator[Env]:
    yield Env(api_client, namespace, token_server)
    assert CLIENT_SECRET not in operator.log_path.read_text(errors="replace")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def example(env: Env, name: str) -> list[dict[str, Any]]:
    """An examples/ file with its client Secret and token URL pointed at the test's server."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] == "Secret" and "tokensync.dev/client-secret" in meta.get("labels", {}):
            meta["annotations"]["tokensync.dev/allowed-destinations"] = env.server.url
            doc["stringData"] = {"client_id": env.client_id, "client_secret": CLIENT_SECRET}
        if doc["kind"] == "ClientCredential":
            doc["spec"]["tokenURL"] = env.server.url
            doc["spec"]["refresh"] = {"minInterval": "1s"}
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(d) for d in docs if d["kind"] == kind]


def create_secret(env: Env, body: dict[str, Any]) -> client.V1Secret:
    return env.core.create_namespaced_secret(env.ns, body)


def create_credential(env: Env, body: dict[str, Any]) -> None:
    env.create_credential(body["metadata"]["name"], body["spec"])


def read(env: Env, name: str) -> client.V1Secret | None:
    try:
        return env.core.read_namespaced_secret(name, env.ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete_credential(env: Env, name: str) -> None:
    env.custom.delete_namespaced_custom_object(GROUP, VERSION, env.ns, PLURAL, name)


def has_token(env: Env, name: str, *, other_than: str | None = None) -> str | None:
    data = env.secret_data(name) or {}
    token = data.get("access_token")
    if not token or token == other_than or not env.server.verify(token):
        return None
    return token if data.get("authorization") == f"Bearer {token}" else None


def test_adopt_takes_over_a_cronjob_secret_keeping_its_name_and_uid(env: Env) -> None:
    docs = example(env, "target-adopt.yaml")
    client_secret, cronjobs = of_kind(docs, "Secret")
    create_secret(env, client_secret)
    before = create_secret(env, cronjobs)  # the CronJob's Secret, handed over
    (cred,) = of_kind(docs, "ClientCredential")
    create_credential(env, cred)
    name = cred["metadata"]["name"]

    token = env.wait_for(lambda: has_token(env, "reports-api-token"), what="the adopted Secret")
    env.wait_ready(name)
    after = read(env, "reports-api-token")
    assert after is not None
    assert after.metadata.uid == before.metadata.uid
    data = env.secret_data("reports-api-token") or {}
    assert data["token"] == "the-token-the-cronjob-fetched"  # its own keys stay
    assert data["ca.crt"] == "kept-as-it-is"
    assert data["access_token"] == token
    assert after.metadata.labels[MANAGED_BY] == "tokensync"
    (owner,) = after.metadata.owner_references
    assert (owner.kind, owner.name, owner.controller) == ("ClientCredential", name, True)
    assert after.metadata.annotations[HAND_OVER] == name
    assert len(env.issued()) == 1


def test_a_secret_not_handed_over_is_refused_and_left_alone(env: Env) -> None:
    env.client_secret()
    env.secret("legacy", {"token": "from-the-cronjob"}, opt_in=False, destinations=None)
    before = read(env, "legacy")
    env.credential(target={"name": "legacy", "creationPolicy": "Adopt"})
    ready = env.wait_ready("api", "TargetNotHandedOver")
    assert ready["status"] == "False"
    assert f"{HAND_OVER}=api" in ready["message"]
    time.sleep(1)
    after = read(env, "legacy")
    assert after is not None
    assert before is not None
    assert after.metadata.resource_version == before.metadata.resource_version
    assert env.issued() == []  # refused before any token was asked for

    # Handed over to another credential: still refused.
    env.core.patch_namespaced_secret(
        "legacy", env.ns, {"metadata": {"annotations": {HAND_OVER: "someone-else"}}}
    )
    env.force_refresh()
    env.wait_for(
        lambda: "'someone-else'" in ((env.ready() or {}).get("message") or ""),
        what="the refusal naming the other credential",
    )
    assert env.issued() == []

    # Handed over: taken at the next attempt (at once on a refresh request).
    env.core.patch_namespaced_secret(
        "legacy", env.ns, {"metadata": {"annotations": {HAND_OVER: "api"}}}
    )
    env.force_refresh()
    env.wait_for(lambda: has_token(env, "legacy"), what="the handed-over Secret written")
    env.wait_ready()
    taken = read(env, "legacy")
    assert taken is not None
    assert before is not None
    assert taken.metadata.uid == before.metadata.uid
    assert (env.secret_data("legacy") or {})["token"] == "from-the-cronjob"


def test_merge_writes_only_tokensyncs_keys_into_a_secret_someone_else_owns(env: Env) -> None:
    docs = example(env, "target-merge.yaml")
    client_secret, settings = of_kind(docs, "Secret")
    (cred,) = of_kind(docs, "ClientCredential")
    name, target = cred["metadata"]["name"], cred["spec"]["target"]["name"]
    create_secret(env, client_secret)

    # The Secret does not exist yet: never created by tokensync.
    create_credential(env, cred)
    env.wait_ready(name, "TargetNotFound")
    assert read(env, target) is None
    assert env.issued() == []

    # Its owner creates it (owned by a ConfigMap, as a chart's Secret may be), handed over.
    owner = env.core.create_namespaced_config_map(
        env.ns, {"metadata": {"name": "checkout"}, "data": {"k": "v"}}
    )
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "checkout",
        "uid": owner.metadata.uid,
        "controller": True,
    }
    settings["metadata"]["ownerReferences"] = [reference]
    settings["metadata"]["labels"]["team"] = "shop"
    before = create_secret(env, settings)
    env.force_refresh(name)
    first = env.wait_for(lambda: has_token(env, target), what="tokensync's keys merged")
    env.wait_ready(name)

    after = read(env, target)
    assert after is not None
    meta = after.metadata
    assert meta.uid == before.metadata.uid
    assert after.type == "Opaque"
    assert [(o.kind, o.name, o.uid) for o in meta.owner_references] == [
        ("ConfigMap", "checkout", owner.metadata.uid)
    ]
    assert meta.labels[MANAGED_BY] == "Helm"  # the owner's, untouched
    assert meta.labels["team"] == "shop"
    assert meta.labels[MERGE_LABEL] == "true"
    assert meta.annotations[HAND_OVER] == name
    assert meta.annotations[LINK].startswith(f"{name}/")
    data = env.secret_data(target) or {}
    assert data["api-base-url"] == "https://api.example.com"
    assert set(data) >= TOKEN_KEYS

    # An edit of tokensync's key is repaired (the Merge targets' own watch).
    time.sleep(1.2)  # past minInterval
    env.core.patch_namespaced_secret(target, env.ns, {"data": {"access_token": b64("typed")}})
    env.wait_for(lambda: has_token(env, target, other_than=first), what="the Merge target repaired")

    # The credential deleted: its keys stay, unrefreshed; the Secret is its owner's.
    last = has_token(env, target)
    delete_credential(env, name)
    time.sleep(3)
    kept = read(env, target)
    assert kept is not None
    assert kept.metadata.uid == before.metadata.uid
    assert (env.secret_data(target) or {})["access_token"] == last


def test_retain_survives_the_credential_and_delete_does_not(env: Env) -> None:
    docs = example(env, "target-retain.yaml")
    (client_secret,) = of_kind(docs, "Secret")
    (cred,) = of_kind(docs, "ClientCredential")
    name = cred["metadata"]["name"]
    target = f"{name}-token"
    create_secret(env, client_secret)
    create_credential(env, cred)
    env.client_secret()
    env.credential()  # deletionPolicy Delete, the default: the control
    first = env.wait_for(lambda: has_token(env, target), what="the retained target")
    env.wait_for(lambda: has_token(env, "api-token"), what="the deleted target")
    retained = read(env, target)
    assert retained is not None
    assert not retained.metadata.owner_references
    assert retained.metadata.annotations[LINK] == f"{name}/{env.get(name)['metadata']['uid']}"

    # Repaired like any target: an edit by hand is written over with a new token.
    time.sleep(1.2)
    env.core.patch_namespaced_secret(target, env.ns, {"data": {"access_token": b64("typed")}})
    last = env.wait_for(
        lambda: has_token(env, target, other_than=first), what="the Retain target repaired"
    )

    delete_credential(env, name)
    delete_credential(env, "api")
    env.wait_for(lambda: read(env, "api-token") is None, timeout=GC_TIMEOUT, what="GC of Delete")
    kept = read(env, target)
    assert kept is not None  # the collector ran, and left the retained one
    assert kept.metadata.uid == retained.metadata.uid
    assert (env.secret_data(target) or {})["access_token"] == last

    # A new credential of the same name (a new uid) does not take it without a new hand-over.
    create_credential(env, cred)
    ready = env.wait_ready(name, "TargetConflict")
    assert LINK in ready["message"]
    assert (env.secret_data(target) or {})["access_token"] == last


def test_a_changed_deletion_policy_applies_at_the_next_write(env: Env) -> None:
    env.client_secret()
    env.credential()
    env.wait_for(lambda: has_token(env, "api-token"), what="the first token")
    uid = env.get()["metadata"]["uid"]

    def owners() -> list[tuple[str, str]]:
        secret = read(env, "api-token")
        assert secret is not None
        return [(o.kind, o.uid) for o in secret.metadata.owner_references or []]

    assert owners() == [("ClientCredential", uid)]
    env.patch("api", {"spec": {"target": {"deletionPolicy": "Retain"}}})
    env.wait_for(lambda: owners() == [], what="the ownerReference removed")
    env.patch("api", {"spec": {"target": {"deletionPolicy": "Delete"}}})
    env.wait_for(lambda: owners() == [("ClientCredential", uid)], what="the ownerReference back")
    env.wait_ready()


def test_a_changed_type_is_refused_until_the_user_deletes_the_secret(env: Env) -> None:
    """A Secret's type is immutable and the operator deletes nothing (the deploy/ role has no
    delete, decision 0041): a changed spec.target.type is Ready=False TargetTypeMismatch,
    found before any token request, and the Secret is left as it is. The user deletes it, as
    the message says; tokensync then creates it with the new type."""
    env.client_secret()
    env.credential()
    env.wait_for(lambda: has_token(env, "api-token"), what="the first token")
    env.wait_ready()
    before = read(env, "api-token")
    assert before is not None
    requests = len(env.issued())
    docker = {"type": "kubernetes.io/dockerconfigjson", "dockerConfig": {"registry": "r.example"}}
    env.patch("api", {"spec": {"target": docker}})

    ready = env.wait_ready("api", "TargetTypeMismatch")
    assert ready["status"] == "False"
    assert "'kubernetes.io/dockerconfigjson'" in ready["message"]
    assert "delete the Secret; tokensync creates it anew with the new type" in ready["message"]
    after = read(env, "api-token")
    assert after is not None
    assert (after.type, after.metadata.uid, after.metadata.resource_version) == (
        "Opaque",
        before.metadata.uid,
        before.metadata.resource_version,
    )
    assert len(env.issued()) == requests

    env.core.delete_namespaced_secret("api-token", env.ns)  # as the message says

    def recreated() -> client.V1Secret | None:
        secret = read(env, "api-token")
        return secret if secret is not None and secret.type == docker["type"] else None

    created = env.wait_for(recreated, what="the target created with the new type")
    assert created.metadata.uid != before.metadata.uid
    assert ".dockerconfigjson" in (created.data or {})
    env.wait_ready()


def test_a_merge_target_of_another_type_is_refused_before_any_token(env: Env) -> None:
    env.client_secret()
    env.core.create_namespaced_secret(
        env.ns,
        {
            "metadata": {"name": "pull", "annotations": {HAND_OVER: "api"}},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": '{"auths": {}}'},
        },
    )
    env.credential(target={"name": "pull", "creationPolicy": "Merge"})
    ready = env.wait_ready("api", "TargetTypeMismatch")
    assert "'kubernetes.io/dockerconfigjson'" in ready["message"]
    assert "'Opaque'" in ready["message"]
    assert env.issued() == []


def test_a_retained_target_stays_when_the_crd_is_deleted(
    cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    """On a control plane of its own: deleting the CRD deletes every ClientCredential, and
    the garbage collector their owned targets; a retained one stays. (Until the collector's
    discovery resync has seen the CRD, it collects nothing at all: hence the probe.)"""
    with LocalCluster(bins=cluster.bins) as own:
        api = config.new_client_from_config(config_file=str(own.kubeconfig))  # type: ignore[no-untyped-call]
        try:
            apply_crds(api)
            kubeconfig = install_operator_identity(own, api, tmp_path / "sa.kubeconfig")
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name="crd-gone"))
            )
            with (
                TokenServer(lifetime=3600) as server,
                OperatorProcess(kubeconfig=kubeconfig, log_path=tmp_path / "operator.log"),
            ):
                env = Env(api, "crd-gone", server)
                env.client_secret()
                # First the collector must know ClientCredentials (its discovery resync).
                env.credential("probe")
                env.wait_for(lambda: has_token(env, "probe-token"), what="the probe's target")
                delete_credential(env, "probe")
                env.wait_for(
                    lambda: read(env, "probe-token") is None, timeout=GC_TIMEOUT, what="GC"
                )
                env.credential("kept", target={"deletionPolicy": "Retain"})
                env.credential("gone")
                env.wait_for(lambda: has_token(env, "kept-token"), what="the retained target")
                env.wait_for(lambda: has_token(env, "gone-token"), what="the owned target")
                ext = client.ApiextensionsV1Api(api)
                ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")
                # The owned target goes (in about 1 s once the collector knows the kind).
                env.wait_for(lambda: read(env, "gone-token") is None, timeout=GC_TIMEOUT, what="GC")
                assert has_token(env, "kept-token")
        finally:
            api.close()
