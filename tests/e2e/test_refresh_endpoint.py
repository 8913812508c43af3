"""The refresh endpoint (issue 16 section 3, decision 0043), end to end.

A workload whose token was refused asks for a new one with no Kubernetes rights: it POSTs
the SHA-256 of the token it holds. The operator runs as a process under the deploy/
ServiceAccount against a real API server, the tokens come from the real token server over
loopback, and every token request is counted there: a refresh asked for this way costs
exactly one, once per token version; a proof of an older token, of another credential's
token, or of nothing costs none.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from test_operator import Env

from localcluster import LocalCluster
from support.operatorproc import OperatorProcess, install_operator_identity
from support.polling import wait_for
from support.tokenserver import TokenServer

pytestmark = pytest.mark.e2e

HEADER = "X-Token-SHA256"


@pytest.fixture
def kubeconfig(
    cluster: LocalCluster, api_client: client.ApiClient, crds: None, tmp_path: pathlib.Path
) -> pathlib.Path:
    return install_operator_identity(cluster, api_client, tmp_path / "sa.kubeconfig")


@pytest.fixture
def operator(
    kubeconfig: pathlib.Path, namespace: str, tmp_path: pathlib.Path
) -> Iterator[OperatorProcess]:
    with OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=tmp_path / "operator.log",
        extra_args=["--namespace", namespace],
    ) as proc:
        yield proc


@pytest.fixture
def env(api_client: client.ApiClient, namespace: str) -> Iterator[Env]:
    # Tokens live an hour: nothing here is a routine refresh.
    with TokenServer(lifetime=3600) as server:
        yield Env(api_client, namespace, server)


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ask(
    operator: OperatorProcess, namespace: str, name: str, proof: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST as a workload would: no Kubernetes credentials, only the proof."""
    url = (
        f"http://127.0.0.1:{operator.refresh_port}"
        f"/v1/namespaces/{namespace}/clientcredentials/{name}/refresh"
    )
    headers = {HEADER: proof} if proof is not None else {}
    request = urllib.request.Request(url, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def first_token(env: Env, name: str = "api") -> str:
    token = wait_for(lambda: env.token(f"{name}-token"), what=f"the first token of {name}")
    env.wait_ready(name)
    return str(token)


def requested_events(env: Env, name: str = "api") -> list[client.CoreV1Event]:
    return [e for e in env.events(name) if e.reason == "RefreshRequested"]


def test_the_current_token_is_replaced_once(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.credential()  # minInterval 1s
    old = first_token(env)
    assert len(env.issued()) == 1
    time.sleep(1.1)  # past minInterval: the refresh runs at once

    status, body, _ = ask(operator, env.ns, "api", sha256(old))
    assert status == 202
    assert body["outcome"] == "requested"
    new = env.wait_new_token(old)
    assert env.server.verify(new)
    env.wait_for(
        lambda: (
            env.status().get("lastRefreshAt")
            == env.core.read_namespaced_secret("api-token", env.ns).metadata.annotations[
                "tokensync.dev/issued-at"
            ]
        ),
        what="status to describe the new token",
    )

    # The old token's proof is a no-op that says where things stand, nothing secret.
    status, body, _ = ask(operator, env.ns, "api", sha256(old))
    assert status == 200
    assert body["outcome"] == "stale"
    assert body["ready"] == "True"
    assert body["expiresAt"] == env.status()["expiresAt"]
    assert old not in json.dumps(body)
    assert new not in json.dumps(body)
    time.sleep(2)
    assert len(env.issued()) == 2  # exactly one token request for the proof

    events = requested_events(env)
    assert len(events) == 1
    assert events[0].type == "Normal"
    text = operator.log() + json.dumps([e.message for e in env.events()])
    for secret in (old, new, sha256(old), sha256(new)):
        assert secret not in text
    metrics = operator.metrics()
    assert 'tokensync_refresh_endpoint_requests_total{outcome="requested"} 1.0' in metrics
    assert 'tokensync_refresh_endpoint_requests_total{outcome="stale"} 1.0' in metrics
    # The Secret names the token by a hash of the proof, never by the proof.
    annotations = env.core.read_namespaced_secret("api-token", env.ns).metadata.annotations
    token_id = annotations["tokensync.dev/token-id"]
    assert token_id == hashlib.sha256(sha256(new).encode()).hexdigest()[:32]


def test_one_refresh_per_token_version(env: Env, operator: OperatorProcess) -> None:
    """Asked again before the new token is there: told so, and nothing more is fetched."""
    env.client_secret()
    env.credential(refresh={"minInterval": "6s"})
    old = first_token(env)
    proof = sha256(old)

    status, body, _ = ask(operator, env.ns, "api", proof)
    assert (status, body["outcome"]) == (202, "requested")
    refresh_at = body["refreshAt"]
    assert refresh_at > env.status()["lastRefreshAt"]  # held to minInterval
    status, body, _ = ask(operator, env.ns, "api", proof)
    assert (status, body["outcome"]) == (202, "already_requested")
    assert len(env.issued()) == 1  # not before minInterval

    new = env.wait_new_token(old, timeout=30)
    time.sleep(2)
    assert len(env.issued()) == 2
    assert len(requested_events(env)) == 1
    assert env.token() == new


def test_proofs_of_other_tokens_are_refused_alike(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.credential("api")
    env.credential("other")
    mine, theirs = first_token(env, "api"), first_token(env, "other")
    before = len(env.issued())
    assert before == 2

    refusals = [
        ask(operator, env.ns, "api", sha256(theirs)),  # a token of another credential
        ask(operator, env.ns, "api", sha256(mine + "x")),  # a wrong hash
        ask(operator, env.ns, "missing", sha256(mine)),  # no such credential
        ask(operator, "elsewhere", "api", sha256(mine)),  # not in this namespace
        ask(operator, env.ns, "api", mine),  # the token itself is not a proof
        ask(operator, env.ns, "api", None),  # no proof
    ]
    assert {status for status, _, _ in refusals} == {403}
    bodies = {json.dumps(body, sort_keys=True) for _, body, _ in refusals}
    assert len(bodies) == 1, bodies  # nothing tells a caller which credentials exist
    time.sleep(2)
    assert len(env.issued()) == before
    assert env.token("api-token") == mine
    assert not requested_events(env, "api")
    assert not requested_events(env, "other")


def test_valid_proofs_are_rate_limited_per_credential(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.credential(refresh={"minInterval": "1h"})  # the refresh waits: nothing changes
    token = first_token(env)
    answers = [ask(operator, env.ns, "api", sha256(token)) for _ in range(4)]
    assert [(status, body["outcome"]) for status, body, _ in answers] == [
        (202, "requested"),
        (202, "already_requested"),
        (202, "already_requested"),
        (429, "rate_limited"),
    ]
    assert 1 <= int(answers[-1][2]["Retry-After"]) <= 20
    # Refusals spend nothing of the credential's share, and are not told it is used up.
    status, body, _ = ask(operator, env.ns, "api", sha256("guess"))
    assert (status, body["outcome"]) == (403, "refused")
    assert len(env.issued()) == 1


def test_the_token_id_survives_a_restart(
    env: Env, kubeconfig: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A restarted operator fetches nothing for a valid token and still honours its proof:
    it reads the token id back from the target Secret's annotation."""
    env.client_secret()
    env.credential()
    log = tmp_path / "operator.log"
    args = ["--namespace", env.ns]
    with OperatorProcess(kubeconfig=kubeconfig, log_path=log, extra_args=args):
        old = first_token(env)
    time.sleep(1.1)  # past minInterval
    with OperatorProcess(kubeconfig=kubeconfig, log_path=log, extra_args=args) as operator:

        def known() -> tuple[int, int, dict[str, Any]] | None:
            # Refused until the restarted operator has listed the credential and its target;
            # token requests counted before the request that is not refused.
            before = len(env.issued())
            status, body, _ = ask(operator, env.ns, "api", sha256(old))
            return (before, status, body) if status != 403 else None

        before, status, body = wait_for(known, what="the restarted operator to know the token")
        assert before == 1  # the restart fetched nothing
        assert (status, body["outcome"]) == (202, "requested")
        env.wait_new_token(old)
        time.sleep(1)
        assert len(env.issued()) == 2
