"""spec.rolloutRestart on the real control plane: restarts counted, never one too many.

The operator runs as a real process under the deploy/ ServiceAccount, with the opt-in
grant (the ClusterRole of deploy/components/rollout-restart) bound in each test's namespace
only, the per-namespace way docs/install.md gives. The Deployments are real objects; no
kubelet runs them, so a restart is counted where `kubectl rollout restart` makes it: a
change of the pod template (its tokensync.dev/restartedAt annotation), which bumps the
Deployment's metadata.generation. Tokens come from the loopback token server and live
40 s; the counts are printed as a FIGURES line.
"""

from __future__ import annotations

import copy
import datetime
import json
import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from support import testenv
from support.fixtures import operator
from support.operatorproc import OperatorProcess, apply_documents, delete_documents
from support.tokenserver import TokenServer

__all__ = ["operator"]  # the shared fixture, used by the tests below

pytestmark = pytest.mark.e2e

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "rollout-restart.yaml"
GRANT = REPO_ROOT / "deploy" / "components" / "rollout-restart" / "rbac.yaml"
RESTARTED_AT = "tokensync.dev/restartedAt"
RESTARTED_FOR = "tokensync.dev/restarted-for"
#: Tokens live 40 s and are renewed 32 to 35 s after issue (renewBefore 5 s, jitter, and
#: refresh.minInterval 32 s): more than the 30 s restart interval, so each token is due
#: exactly one restart of its own.
LIFETIME = 40


def report(test: str, figures: dict[str, Any]) -> None:
    print(f"\nFIGURES {json.dumps({'test': test, **figures}, sort_keys=True)}")


class Env(testenv.Env):
    def __init__(self, api: client.ApiClient, namespace: str, server: TokenServer) -> None:
        super().__init__(api, namespace, timeout=60.0)
        self.apps = client.AppsV1Api(api)
        self.server = server
        self.client_id = f"rr-{uuid.uuid4().hex[:8]}"
        server.add_client(self.client_id, "rollout-s3cret")

    def example(self, **spec: Any) -> dict[str, Any]:
        """examples/rollout-restart.yaml, applied as a user would, but pointed at the
        loopback token server; ``spec`` overrides the credential's spec."""
        docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
        secret, credential, deployment = (
            next(d for d in docs if d["kind"] == kind)
            for kind in ("Secret", testenv.KIND, "Deployment")
        )
        secret["metadata"]["annotations"][testenv.ALLOWED_DESTINATIONS] = testenv.LOOPBACK
        secret["stringData"] = {"client_id": self.client_id, "client_secret": "rollout-s3cret"}
        self.core.create_namespaced_secret(self.ns, secret)
        self.apps.create_namespaced_deployment(self.ns, deployment)
        body = {**credential["spec"], "tokenURL": self.server.url, **spec}
        self.create_credential(credential["metadata"]["name"], body)
        return credential

    def deployment(self, name: str, namespace: str | None = None) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment(name, namespace or self.ns)

    def restarts(self, name: str, namespace: str | None = None) -> int:
        """Pod template changes since creation: nothing else here changes the template."""
        return int(self.deployment(name, namespace).metadata.generation) - 1

    def record(self, name: str) -> dict[str, str]:
        annotations = self.deployment(name).metadata.annotations or {}
        return dict(json.loads(annotations.get(RESTARTED_FOR, "{}")))

    def tokens(self) -> list[datetime.datetime]:
        """The issue times of the tokens issued for this test's client, oldest first."""
        return [i.issued_at for i in self.server.issued if i.client_id == self.client_id]

    def issued_at(self, credential: str) -> str:
        secret = self.core.read_namespaced_secret(f"{credential}-token", self.ns)
        return str(secret.metadata.annotations["tokensync.dev/issued-at"])

    def reasons(self, credential: str, reason: str) -> list[client.CoreV1Event]:
        return [e for e in self.events(credential) if e.reason == reason]


def consumer(name: str) -> dict[str, Any]:
    """The example's Deployment, renamed."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["metadata"]["name"] = name
    return deployment


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=LIFETIME) as server:
        yield server


@pytest.fixture(scope="module")
def grant(api_client: client.ApiClient) -> Iterator[dict[str, Any]]:
    """The component's ClusterRole (its binding is per test namespace, see granted())."""
    (role,) = [d for d in yaml.safe_load_all(GRANT.read_text()) if d and d["kind"] == "ClusterRole"]
    apply_documents(api_client, [role])
    yield role
    delete_documents(api_client, [role])


def granted(api: client.ApiClient, role: dict[str, Any], namespace: str) -> None:
    """Bind the rollout-restart ClusterRole to the operator in ``namespace`` and wait until
    the authorizer says so."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": role["metadata"]["name"], "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
        ],
    }
    apply_documents(api, [binding])
    deadline = time.monotonic() + 30
    while not may_patch_deployments(api, namespace):
        assert time.monotonic() < deadline, "the grant did not take effect"
        time.sleep(0.2)


def may_patch_deployments(api: client.ApiClient, namespace: str) -> bool:
    """The authorizer's answer for the operator's ServiceAccount (SubjectAccessReview)."""
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "spec": {
                "user": "system:serviceaccount:tokensync-system:tokensync",
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "resourceAttributes": {
                    "group": "apps",
                    "verb": "patch",
                    "resource": "deployments",
                    "namespace": namespace,
                },
            }
        }
    )
    return bool(review.status.allowed)


@pytest.fixture
def env(
    api_client: client.ApiClient,
    namespace: str,
    token_server: TokenServer,
    grant: dict[str, Any],
    operator: OperatorProcess,
) -> Env:
    granted(api_client, grant, namespace)
    return Env(api_client, namespace, token_server)


def wait_tokens(env: Env, count: int, *, timeout: float) -> None:
    env.wait_for(
        lambda: len(env.tokens()) >= count or None, timeout=timeout, what=f"{count} tokens"
    )


def wait_restarts(env: Env, name: str, count: int) -> None:
    env.wait_for(lambda: env.restarts(name) >= count or None, what=f"{count} restarts of {name}")


def test_one_restart_per_new_token_and_none_for_an_operator_restart(
    env: Env, operator: OperatorProcess
) -> None:
    """Over four tokens and two operator restarts: exactly one restart per token; none
    when the operator restarts with a valid token; and one when it comes back after a
    crash that left a token without its restart (the workload's record says so)."""
    credential = env.example(
        refresh={"renewBefore": "5s", "minInterval": "32s"},
        rolloutRestart={
            "targets": [{"kind": "Deployment", "name": "billing-worker"}],
            "minInterval": "30s",
        },
    )
    name, deployment = credential["metadata"]["name"], "billing-worker"
    figures: dict[str, Any] = {}

    # The Deployment existed before the first token, so the first token restarts it too.
    wait_restarts(env, deployment, 2)
    before_third = dict(env.deployment(deployment).spec.template.metadata.annotations)
    wait_tokens(env, 3, timeout=2 * LIFETIME)
    wait_restarts(env, deployment, 3)
    time.sleep(2)  # a late second restart would show now
    figures["tokens_before_operator_restart"] = len(env.tokens())
    figures["restarts_before_operator_restart"] = env.restarts(deployment)
    assert env.restarts(deployment) == len(env.tokens()) == 3
    assert env.record(deployment) == {name: env.issued_at(name)}

    # The operator restarts while the token is valid: it restarts nothing, fetches nothing.
    generation, tokens = env.restarts(deployment), len(env.tokens())
    operator.stop()
    operator.start()
    time.sleep(8)
    figures["restarts_after_operator_restart"] = env.restarts(deployment) - generation
    figures["tokens_after_operator_restart"] = len(env.tokens()) - tokens
    assert env.restarts(deployment) == generation
    assert len(env.tokens()) == tokens

    # A crash between the third token and its restart: the workload as it was before that
    # restart (record of the second token, its restart time). The operator that comes back
    # restarts it once.
    operator.stop()
    previous = env.tokens()[-2].strftime("%Y-%m-%dT%H:%M:%SZ")
    env.apps.patch_namespaced_deployment(
        deployment,
        env.ns,
        {
            "metadata": {"annotations": {RESTARTED_FOR: json.dumps({name: previous})}},
            "spec": {"template": {"metadata": {"annotations": before_third}}},
        },
    )
    manual = 1  # that patch changed the pod template too
    before_crash = env.restarts(deployment)
    operator.start()
    env.wait_for(
        lambda: env.restarts(deployment) > before_crash or None,
        timeout=20,
        what="the restart the crash prevented",
    )
    figures["restarts_after_crash"] = env.restarts(deployment) - before_crash
    third = env.issued_at(name)
    assert env.record(deployment) == {name: third}

    # The fourth token, 30 s or less after that restart, is restarted for at minInterval.
    # The endpoint counts a token a few ms before its Secret holds it: until then the
    # record matches the Secret's (third) issue time, and the wait below would end at once.
    wait_tokens(env, 4, timeout=2 * LIFETIME)
    env.wait_for(
        lambda: env.issued_at(name) != third or None,
        timeout=10,
        what="the fourth token in its Secret",
    )
    env.wait_for(
        lambda: env.record(deployment) == {name: env.issued_at(name)} or None,
        timeout=40,
        what="the fourth token's restart",
    )
    time.sleep(3)
    tokens = len(env.tokens())
    restarts = env.restarts(deployment) - manual
    events = len(env.reasons(name, "RolloutRestarted"))
    figures.update(tokens=tokens, restarts=restarts, restart_events=events)
    report("rollout_restart_once_per_token", figures)
    assert figures["restarts_after_crash"] == 1
    assert tokens == 4
    assert restarts == tokens + 1, "one per token, and the one a crash prevented"
    assert events == restarts
    ready = env.ready(name)
    assert ready is not None
    assert ready["reason"] == "TokenIssued"


def test_tokens_within_min_interval_make_one_deferred_restart(env: Env) -> None:
    """Two new tokens within minInterval of a restart: one restart, at the interval's end,
    for the token current then."""
    credential = env.example(
        refresh={"renewBefore": "5s", "minInterval": "1s"},
        rolloutRestart={
            "targets": [{"kind": "Deployment", "name": "billing-worker"}],
            "minInterval": "30s",
        },
    )
    name, deployment = credential["metadata"]["name"], "billing-worker"
    wait_restarts(env, deployment, 1)  # the first token's
    first = env.deployment(deployment).spec.template.metadata.annotations[RESTARTED_AT]
    for _ in range(2):
        time.sleep(2)
        seen = len(env.tokens())
        env.force_refresh(name)
        wait_tokens(env, seen + 1, timeout=20)
    inside = env.restarts(deployment)
    started = time.monotonic()
    wait_restarts(env, deployment, 2)
    waited = time.monotonic() - started
    time.sleep(3)
    restarts, tokens = env.restarts(deployment), len(env.tokens())
    second = env.deployment(deployment).spec.template.metadata.annotations[RESTARTED_AT]
    gap = (
        datetime.datetime.fromisoformat(second) - datetime.datetime.fromisoformat(first)
    ).total_seconds()
    report(
        "rollout_restart_min_interval",
        {
            "tokens": tokens,
            "restarts": restarts,
            "restarts_within_interval": inside - 1,
            "seconds_between_restarts": gap,
            "deferred_wait_s": round(waited, 1),
        },
    )
    assert tokens == 3
    assert inside == 1, "no restart within minInterval"
    assert restarts == 2
    assert gap >= 30
    assert env.record(deployment) == {name: env.issued_at(name)}  # the last token's


def test_a_missing_or_forbidden_workload_is_a_warning_and_ready_is_unaffected(
    env: Env, api_client: client.ApiClient
) -> None:
    """A missing Deployment: a Warning Event, Ready stays TokenIssued. One of the same name
    in another namespace is untouched (targets have no namespace field: the API server
    prunes one). One the operator may not patch (no grant there): a Warning as well."""
    other = f"t-{uuid.uuid4().hex[:8]}"
    env.core.create_namespace({"metadata": {"name": other}})
    try:
        env.apps.create_namespaced_deployment(other, consumer("elsewhere"))
        env.secret("c", {"client_id": env.client_id, "client_secret": "rollout-s3cret"})
        env.create_credential(
            "api",
            {
                "tokenURL": env.server.url,
                "clientSecretRef": {"name": "c"},
                "rolloutRestart": {
                    "targets": [{"kind": "Deployment", "name": "elsewhere", "namespace": other}]
                },
            },
        )
        assert "namespace" not in env.get("api")["spec"]["rolloutRestart"]["targets"][0]
        env.wait_ready("api")
        warning = env.wait_for(lambda: env.reasons("api", "RolloutRestartFailed") or None)[0]
        assert warning.type == "Warning"
        assert "Deployment elsewhere (spec.rolloutRestart) was not restarted: not found" in (
            warning.message
        )
        ready = env.ready("api")
        assert ready is not None
        assert (ready["status"], ready["reason"]) == ("True", "TokenIssued")
        assert env.restarts("elsewhere", other) == 0

        # The same in a namespace where the operator holds no grant: Forbidden.
        forbidden = Env(api_client, other, env.server)
        forbidden.secret("c", {"client_id": forbidden.client_id, "client_secret": "rollout-s3cret"})
        forbidden.create_credential(
            "api",
            {
                "tokenURL": env.server.url,
                "clientSecretRef": {"name": "c"},
                "rolloutRestart": {"targets": [{"kind": "Deployment", "name": "elsewhere"}]},
            },
        )
        forbidden.wait_ready("api")
        denied = forbidden.wait_for(
            lambda: forbidden.reasons("api", "RolloutRestartFailed") or None
        )[0]
        assert "may not read or patch it" in denied.message
        assert "rolloutRestart.enabled=true" in denied.message
        assert forbidden.restarts("elsewhere") == 0
        ready = forbidden.ready("api")
        assert ready is not None
        assert (ready["status"], ready["reason"]) == ("True", "TokenIssued")
        report(
            "rollout_restart_failures",
            {
                "not_found_warnings": len(env.reasons("api", "RolloutRestartFailed")),
                "forbidden_warnings": len(forbidden.reasons("api", "RolloutRestartFailed")),
                "restarts_elsewhere": forbidden.restarts("elsewhere"),
            },
        )
    finally:
        env.core.delete_namespace(other)
