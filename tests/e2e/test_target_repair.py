"""The target Secret is watched and repaired (issue 14 section 6, decision 0035).

Before, the operator did not watch the Secrets it writes: a deleted target stayed absent until
the next refresh (two thirds of a token's lifetime), an edited ``access_token`` stayed, and a
restarted operator believed the timing annotations on the Secret, so a Secret edited to say
its token expires in 2099 was never refreshed while status said Ready. Here the operator runs
under the deploy/ ServiceAccount against a real API server and token server; tokens live an
hour, so nothing here is a routine refresh.

The restore times are measured and printed (docs/reliability.md has them), not asserted.
"""

from __future__ import annotations

import base64
import datetime
import pathlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from test_operator import CLIENT_SECRET, Env

from localcluster import LocalCluster
from support.operatorproc import OperatorProcess, install_operator_identity
from support.polling import wait_for
from support.tokenserver import TokenServer

ISSUED_AT, EXPIRES_AT, REFRESH_AT = (
    "tokensync.dev/issued-at",
    "tokensync.dev/expires-at",
    "tokensync.dev/refresh-at",
)
#: Repairs fetch no token sooner than minInterval after the current one: 1 s here.
REFRESH = {"minInterval": "1s"}
DELETIONS = 5


@pytest.fixture
def operator(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    crds: None,
    namespace: str,
    tmp_path: pathlib.Path,
) -> Iterator[OperatorProcess]:
    """An operator of the test's own (one test restarts it), limited to its namespace."""
    kubeconfig = install_operator_identity(cluster, api_client, tmp_path / "sa.kubeconfig")
    with OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=tmp_path / "operator.log",
        extra_args=["--namespace", namespace],
    ) as proc:
        yield proc


@pytest.fixture
def env(api_client: client.ApiClient, namespace: str) -> Iterator[Env]:
    with TokenServer(lifetime=3600) as server:
        yield Env(api_client, namespace, server)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def target(env: Env, name: str = "api-token") -> client.V1Secret | None:
    try:
        return env.core.read_namespaced_secret(name, env.ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def whole(env: Env, name: str = "api-token") -> dict[str, str] | None:
    """The target's data, if it holds a token the server issued, whole."""
    data = env.secret_data(name)
    if not data or "access_token" not in data:
        return None
    token = data["access_token"]
    if not env.server.verify(token) or data.get("authorization") != f"Bearer {token}":
        return None
    return data


def status_agrees(env: Env, name: str = "api") -> bool:
    """Status describes the token the target holds, and says Ready."""
    secret = target(env, f"{name}-token")
    if secret is None:
        return False
    annotations = secret.metadata.annotations or {}
    status = env.status(name)
    ready = env.ready(name) or {}
    return (
        status.get("lastRefreshAt") == annotations.get(ISSUED_AT)
        and status.get("expiresAt") == annotations.get(EXPIRES_AT)
        and status.get("nextRefreshAt") == annotations.get(REFRESH_AT)
        and (ready.get("status"), ready.get("reason")) == ("True", "TokenIssued")
    )


def report(what: str, seconds: list[float]) -> None:
    print(  # the figures docs/reliability.md quotes
        f"\n{what}: n={len(seconds)} min={min(seconds):.2f}s "
        f"median={statistics.median(seconds):.2f}s max={max(seconds):.2f}s"
    )


def until(check: Any, *, what: str, timeout: float = 60) -> float:
    """Seconds until ``check`` holds (polled every 20 ms), for the figures."""
    started = time.monotonic()
    wait_for(check, timeout=timeout, interval=0.02, what=what)
    return time.monotonic() - started


def test_a_deleted_target_is_recreated_at_once(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.credential(refresh=REFRESH)
    wait_for(lambda: whole(env), what="the first token")
    env.wait_for(lambda: status_agrees(env), what="status")
    restored = []
    for _ in range(DELETIONS):
        before = whole(env)
        assert before is not None
        time.sleep(1.2)  # past minInterval, so that the repair is not held back by it
        env.core.delete_namespaced_secret("api-token", env.ns)
        restored.append(until(lambda: whole(env), what="the target Secret recreated"))
        after = whole(env)
        assert after is not None
        assert after["access_token"] != before["access_token"]  # the old one is not kept
        env.wait_for(lambda: status_agrees(env), what="status to describe the new token")
    report("deleted target restored", restored)
    # One new token per deletion, and none besides.
    assert len(env.issued()) == 1 + DELETIONS
    assert not [e for e in env.events() if e.type == "Warning"]


def test_an_edited_target_is_restored(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.credential(refresh=REFRESH)
    first = wait_for(lambda: whole(env), what="the first token")
    env.wait_for(lambda: status_agrees(env), what="status")
    time.sleep(1.2)

    # Labels and annotations of its own on the target are the user's: no new token.
    env.core.patch_namespaced_secret(
        "api-token", env.ns, {"metadata": {"labels": {"team": "payments"}}}
    )
    time.sleep(2)
    assert len(env.issued()) == 1
    assert (whole(env) or {}).get("access_token") == first["access_token"]

    times = []
    # The access token typed over by hand.
    env.core.patch_namespaced_secret("api-token", env.ns, {"data": {"access_token": b64("typed")}})
    times.append(
        until(
            lambda: (whole(env) or {}).get("access_token") not in (None, first["access_token"]),
            what="the access token restored",
        )
    )
    env.wait_for(lambda: status_agrees(env), what="status to describe the new token")
    second = whole(env)
    assert second is not None
    time.sleep(1.2)

    # Its timing annotations edited while the operator runs.
    env.core.patch_namespaced_secret(
        "api-token",
        env.ns,
        {"metadata": {"annotations": {ISSUED_AT: "2099-01-01T00:00:00Z"}}},
    )
    times.append(
        until(
            lambda: (whole(env) or {}).get("access_token") not in (None, second["access_token"]),
            what="the Secret rewritten",
        )
    )
    env.wait_for(lambda: status_agrees(env), what="status to describe the new token")
    secret = target(env)
    assert secret is not None
    assert not (secret.metadata.annotations or {})[ISSUED_AT].startswith("2099")
    assert secret.metadata.labels["team"] == "payments"  # the user's label stays
    report("edited target restored", times)
    assert len(env.issued()) == 3


def test_edited_times_are_not_believed_after_a_restart(env: Env, operator: OperatorProcess) -> None:
    """Edited while no operator runs: the restarted operator checks the Secret against
    status, refuses what tokensync could not have written, and fetches a new token."""
    env.client_secret()
    edits: dict[str, dict[str, Any]] = {
        # Only the issue time: a year from which the token would never be due.
        "issued": {"metadata": {"annotations": {ISSUED_AT: "2099-01-01T00:00:00Z"}}},
        # The whole Secret consistent with itself, issued and expiring in 2099.
        "future": {
            "metadata": {
                "annotations": {
                    ISSUED_AT: "2099-01-01T00:00:00Z",
                    EXPIRES_AT: "2099-01-01T01:00:00Z",
                    REFRESH_AT: "2099-01-01T00:40:00Z",
                }
            },
            "data": {"expires_at": b64("2099-01-01T01:00:00Z")},
        },
        # Issued a minute ago, valid for 30 days: thirty times the token status knows.
        "long": {},
        # The token alone, typed over.
        "typed": {"data": {"access_token": b64("typed")}},
    }
    for name in edits:
        env.credential(name, refresh=REFRESH)
    for name in edits:
        wait_for(lambda name=name: whole(env, f"{name}-token"), what=f"token {name}")
        env.wait_for(lambda name=name: status_agrees(env, name), what=f"status {name}")
    before = {name: (whole(env, f"{name}-token") or {})["access_token"] for name in edits}
    operator.stop()

    now = datetime.datetime.now(datetime.UTC)
    issued, expires = now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=30)
    stamp = model_time
    edits["long"] = {
        "metadata": {
            "annotations": {
                ISSUED_AT: stamp(issued),
                EXPIRES_AT: stamp(expires),
                REFRESH_AT: stamp(expires - datetime.timedelta(days=10)),
            }
        },
        "data": {"expires_at": b64(stamp(expires))},
    }
    for name, patch in edits.items():
        env.core.patch_namespaced_secret(f"{name}-token", env.ns, patch)
    operator.start()

    for name in edits:
        env.wait_for(
            lambda name=name: (
                (whole(env, f"{name}-token") or {}).get("access_token") not in (None, before[name])
            ),
            what=f"a new token for {name}",
            timeout=60,
        )
        env.wait_for(lambda name=name: status_agrees(env, name), what=f"status of {name}")
        status = env.status(name)
        assert not status["expiresAt"].startswith("2099")
        assert status["lastRefreshAt"] <= stamp(datetime.datetime.now(datetime.UTC))
        assert status["expiresAt"] < stamp(now + datetime.timedelta(hours=2))
    log = operator.log()
    for token in (*before.values(), CLIENT_SECRET):
        assert token not in log


def model_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
