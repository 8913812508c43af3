"""Pods that consume the token Secret (issue 15): do they always hold a token the resource
server accepts, how long after a refresh do they start using the new one, and which ways of
reading the Secret never see it change?

The operator runs as a process under the deploy/ ServiceAccount against a real token server
on loopback; pods run on the session's real node (``node`` fixture) with the kubelet's
default sync period (``syncFrequency: 1m``, each pod resynced 60 to 90 s after the last
time), the only setting that gives users' figures. Each pod calls a resource server on the
node's host address every second with the token it reads; the server accepts only tokens the
token server issued and that have not expired (``TokenServer.verify``), and records when each
pod first presented each token. A watch on the target Secret records when each token reached
the API server, so each refresh's propagation delay is: first call with that token (or a
newer one) minus the Secret's update. Figures are printed as FIGURES lines
(docs/reliability.md quotes them), never asserted.

Tokens live 120 s and are renewed 100 s before expiry (every 8 to 20 s with the jitter), so
that a refresh leaves pods the operator's margin for the kubelet (90 s, no warning) and a
few refreshes happen in a minute; a 15-second token would be refreshed with 5 s left, far
less than the minute or more a pod takes to see the new one (the operator warns about that).
"""

from __future__ import annotations

import itertools
import json
import statistics
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from kubernetes import client

from localcluster import Node
from support import pods, testenv
from support.fixtures import operator
from support.operatorproc import OperatorProcess
from support.pods import busybox_pod, wait_running
from support.polling import wait_for
from support.resourceserver import ResourceServer
from support.secretwatch import SecretHistory
from support.tokenserver import TokenServer

__all__ = ["operator"]  # the shared fixture, used by the tests below

pytestmark = [pytest.mark.e2e, pytest.mark.node]

LIFETIME = 120
RENEW_BEFORE = 100
MIN_INTERVAL = 5
#: Refreshes every consumer must have seen before the fresh-token test ends.
REFRESHES = 5
CONSUMER_PODS = 3
#: After the first token expired, calls the stale consumers must have made.
CALLS_AFTER_EXPIRY = 5
TARGET = "api-token"
#: The operator's margin for the kubelet (operator/tokensync/timing.py, spelled out here).
KUBELET_SYNC_MARGIN = 90
#: Generous: pods start within seconds and see a change within about 90 s of it.
WAIT = 360.0


class Env(testenv.Env):
    def __init__(self, api: client.ApiClient, namespace: str, server: TokenServer) -> None:
        super().__init__(api, namespace)
        self.client_id = f"consumer-{uuid.uuid4().hex[:8]}"
        server.add_client(self.client_id, "consumer-s3cret")
        self.secret(
            "oauth-client", {"client_id": self.client_id, "client_secret": "consumer-s3cret"}
        )
        self.url = server.url

    def credential(self) -> dict[str, Any]:
        created = self.create_credential(
            "api",
            {
                "tokenURL": self.url,
                "clientSecretRef": {"name": "oauth-client"},
                "refresh": {"renewBefore": f"{RENEW_BEFORE}s", "minInterval": f"{MIN_INTERVAL}s"},
            },
        )
        ready = self.wait_ready()
        # The margin is kept: the operator does not warn that pods may see expired tokens.
        assert "warning" not in ready["message"], ready["message"]
        return created

    def run(self, pod: dict[str, Any]) -> str:
        return pods.create(self.core, self.ns, pod)

    def delete_pods(self) -> None:
        self.core.delete_collection_namespaced_pod(self.ns, grace_period_seconds=0)

    def pod_log(self, name: str) -> str:
        """The pod's output, read through the API server (which asks the kubelet)."""
        return str(self.core.read_namespaced_pod_log(name, self.ns))


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=LIFETIME) as server:
        yield server


@pytest.fixture(scope="module")
def resource_server(node: Node, token_server: TokenServer) -> Iterator[ResourceServer]:
    with ResourceServer(token_server.verify, host=node.host_ip) as server:
        yield server


@pytest.fixture
def env(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    token_server: TokenServer,
) -> Iterator[Env]:
    env = Env(api_client, namespace, token_server)
    yield env
    env.delete_pods()


def caller(url: str, sources: Mapping[str, str]) -> str:
    """A shell loop: every second, for each source, call ``url`` with the token that the
    source's shell expression gives, and print ``<unix time> <source> ok|failed`` (failed:
    refused, or no answer within 5 s)."""
    calls = "".join(
        f"tok={expr}; "
        f'if timeout 5 wget -q -O /dev/null --header "Authorization: Bearer $tok" '
        f'"{url}?consumer={label}"; then r=ok; else r=failed; fi; '
        f'echo "$(date +%s) {label} $r"; '
        for label, expr in sources.items()
    )
    return f"while true; do {calls}sleep 1; done"


def report(test: str, figures: dict[str, Any]) -> None:
    print(f"\nFIGURES {json.dumps({'test': test, **figures}, sort_keys=True)}")


def failed_in_log(log: str, source: str = "") -> int:
    return sum(1 for line in log.splitlines() if line.endswith(f"{source} failed"))


# -- fresh tokens ----------------------------------------------------------------------


def seen_version(history: SecretHistory, server: ResourceServer, consumer: str) -> int:
    """The newest Secret version whose token ``consumer`` has presented (-1: none)."""
    versions = [history.version_of(token) for token in server.first_seen(consumer)]
    return max((v for v in versions if v is not None), default=-1)


def propagation(history: SecretHistory, server: ResourceServer, consumer: str) -> list[float]:
    """For each refresh the consumer caught up with: seconds from the Secret's update to
    the consumer's first call with that token or a newer one."""
    versions = history.versions()
    first_call: dict[int, float] = {}
    for token, at in server.first_seen(consumer).items():
        index = history.version_of(token)
        if index is not None:
            first_call[index] = at
    delays = []
    for refresh in range(1, len(versions)):
        later = [at for index, at in first_call.items() if index >= refresh]
        if later:
            delays.append(min(later) - versions[refresh].at)
    return delays


@pytest.mark.timeout(WAIT + 120)
def test_pods_reading_a_secret_volume_always_hold_an_accepted_token(
    env: Env, node: Node, resource_server: ResourceServer
) -> None:
    env.credential()
    names = [f"consumer-{i}" for i in range(CONSUMER_PODS)]
    with SecretHistory(env.api, env.ns, TARGET) as history:
        env.wait_for(history.versions, what="the watch's first version")
        for name in names:
            env.run(
                busybox_pod(
                    name,
                    node,
                    caller(resource_server.url, {name: "$(cat /token/access_token)"}),
                    volumes=[{"name": "token", "secret": {"secretName": TARGET}}],
                    mounts=[{"name": "token", "mountPath": "/token", "readOnly": True}],
                )
            )
        for name in names:
            wait_running(env.core, env.ns, name)

        def caught_up() -> bool:
            return len(history.versions()) > REFRESHES and all(
                seen_version(history, resource_server, name) >= REFRESHES for name in names
            )

        wait_for(caught_up, timeout=WAIT, interval=1.0, what=f"{REFRESHES} refreshes in pods")
    logs = {name: env.pod_log(name) for name in names}

    calls = [c for name in names for c in resource_server.calls(name)]
    delays = {name: propagation(history, resource_server, name) for name in names}
    samples = sorted(d for per_pod in delays.values() for d in per_pod[:REFRESHES])
    versions = history.versions()
    intervals = [b.at - a.at for a, b in itertools.pairwise(versions)]
    report(
        "consumer_pods_fresh_tokens",
        {
            "token_lifetime_s": LIFETIME,
            "renew_before_s": RENEW_BEFORE,
            "kubelet_sync_margin_s": KUBELET_SYNC_MARGIN,
            "pods": CONSUMER_PODS,
            "refreshes": len(versions) - 1,
            "refresh_interval_s_median": round(statistics.median(intervals), 1),
            "calls": len(calls),
            "rejected_calls": sum(1 for c in calls if not c.accepted),
            "failed_in_pod_logs": sum(failed_in_log(log) for log in logs.values()),
            "propagation_samples": len(samples),
            "propagation_s_p50": round(statistics.median(samples), 1),
            "propagation_s_max": round(max(samples), 1),
            "propagation_s_min": round(min(samples), 1),
            "propagation_s_per_pod": {n: [round(d, 1) for d in v] for n, v in delays.items()},
        },
    )
    assert not [c for c in calls if not c.accepted], "a pod presented a refused token"
    for name, log in logs.items():
        assert failed_in_log(log) == 0, f"{name} saw failed calls:\n{log}"
    assert all(len(per_pod) >= REFRESHES for per_pod in delays.values()), delays


# -- what does not update --------------------------------------------------------------


@pytest.mark.timeout(WAIT + 120)
def test_subpath_and_environment_consumers_keep_the_first_token(
    env: Env, node: Node, resource_server: ResourceServer, token_server: TokenServer
) -> None:
    """One pod reads the token three ways: from the Secret volume, from a ``subPath``
    mount of the same key, and from an environment variable (``secretKeyRef``). Only the
    volume follows the Secret; the others keep the token the container started with, and
    are refused once it expires."""
    env.credential()
    with SecretHistory(env.api, env.ns, TARGET) as history:
        env.wait_for(history.versions, what="the watch's first version")
        pod = busybox_pod(
            "three-ways",
            node,
            caller(
                resource_server.url,
                {
                    "volume": "$(cat /token/access_token)",
                    "subpath": "$(cat /subpath/access_token)",
                    "env": "$TOKEN",
                },
            ),
            volumes=[{"name": "token", "secret": {"secretName": TARGET}}],
            mounts=[
                {"name": "token", "mountPath": "/token", "readOnly": True},
                {
                    "name": "token",
                    "mountPath": "/subpath/access_token",
                    "subPath": "access_token",
                    "readOnly": True,
                },
            ],
            env=[
                {
                    "name": "TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": TARGET, "key": "access_token"}},
                }
            ],
        )
        env.run(pod)
        wait_running(env.core, env.ns, "three-ways")
        # The token the container started with: what its environment holds.
        first = wait_for(lambda: resource_server.calls("env"), what="a first call")[0].token
        index = history.version_of(first)
        assert index is not None, "the pod started with a token the Secret never held"
        (issue,) = [i for i in token_server.issued if i.access_token == first]
        # A second past the expiry, so that no call counted raced the token server's clock.
        expired = issue.expires_at.timestamp() + 1

        def done() -> bool:
            return seen_version(history, resource_server, "volume") > index and all(
                len([c for c in resource_server.calls(source) if c.at > expired])
                >= CALLS_AFTER_EXPIRY
                for source in ("subpath", "env")
            )

        wait_for(done, timeout=WAIT, interval=1.0, what="the volume's update and an expiry")
    changed = history.versions()[index + 1].at
    counts: dict[str, dict[str, int]] = {}
    for source in ("volume", "subpath", "env"):
        after = [c for c in resource_server.calls(source) if c.at > changed]
        counts[source] = {
            "calls_after_secret_changed": len(after),
            "with_first_token": sum(1 for c in after if c.token == first),
            "with_a_newer_token": sum(1 for c in after if c.token != first),
            "rejected": sum(1 for c in after if not c.accepted),
            "calls_after_first_token_expired": sum(1 for c in after if c.at > expired),
            "rejected_after_first_token_expired": sum(
                1 for c in after if c.at > expired and not c.accepted
            ),
        }
    volume_moved_on = min(c.at for c in resource_server.calls("volume") if c.token != first)
    report(
        "consumer_pods_subpath_env",
        {
            "token_lifetime_s": LIFETIME,
            "secret_versions": len(history.versions()),
            "volume_first_new_token_after_s": round(volume_moved_on - changed, 1),
            **counts,
        },
    )
    log = env.pod_log("three-ways")
    assert resource_server.calls("subpath")[0].token == first
    for source in ("subpath", "env"):
        assert counts[source]["with_a_newer_token"] == 0, counts
        after_expiry = counts[source]["calls_after_first_token_expired"]
        assert counts[source]["rejected_after_first_token_expired"] == after_expiry > 0, counts
    assert counts["volume"]["with_a_newer_token"] > 0, counts
    assert counts["volume"]["rejected"] == 0, counts
    assert failed_in_log(log, "volume") == 0, log
