"""``kubectl tokensync`` (the ``kubectl-tokensync`` console script) against a real API server.

No operator runs here: each test writes ClientCredentials, their status (through the
status subresource, as the operator does) and target Secrets itself, then runs the
installed plugin as a user would, directly and through kubectl's plugin discovery.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Any

import jwt
import pytest
from kubernetes import client

from localcluster import LocalCluster
from support import testenv
from tokensync import model

pytestmark = pytest.mark.e2e

PLUGIN = pathlib.Path(sys.executable).parent / "kubectl-tokensync"
SIGNING_KEY = "plugin-test-signing-key-0123456789abcdef"
OPAQUE_TOKEN = "opaque-Zq8!token-visible-if-leaked"
API = (model.GROUP, model.VERSION)


class Env(testenv.Env):
    """One test's namespace, and the plugin run against it as a user would."""

    def __init__(self, cluster: LocalCluster, api: client.ApiClient, namespace: str) -> None:
        super().__init__(api, namespace)
        self.cluster = cluster
        self.now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    def run(
        self, *args: str, kubeconfig: pathlib.Path | None = None, via_kubectl: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.cluster.kubeconfig)}
        if via_kubectl:
            assert self.cluster.bins.kubectl is not None
            env["PATH"] = f"{PLUGIN.parent}{os.pathsep}{env.get('PATH', '')}"
            argv = [str(self.cluster.bins.kubectl), "tokensync", *args]
        else:
            argv = [str(PLUGIN), *args]
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    def ok(self, *args: str, **kwargs: Any) -> str:
        result = self.run(*args, **kwargs)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def credential(
        self, name: str, status: dict[str, Any] | None = None, **spec: Any
    ) -> dict[str, Any]:
        created = self.create_credential(
            name,
            {
                "tokenURL": "https://login.example.com/oauth2/token",
                "clientSecretRef": {"name": "oauth-client"},
                **spec,
            },
        )
        if status is not None:
            self.custom.patch_namespaced_custom_object_status(
                *API, self.ns, model.PLURAL, name, {"status": status}
            )
        return created

    def target(self, name: str, token: str, *, expires_at: datetime.datetime) -> None:
        self.core.create_namespaced_secret(
            self.ns,
            {
                "metadata": {"name": name, "labels": {model.MANAGED_BY_LABEL: "tokensync"}},
                "stringData": {
                    "access_token": token,
                    "token_type": "Bearer",
                    "authorization": f"Bearer {token}",
                    "expires_at": stamp(expires_at),
                    "scope": "payments.read",
                },
            },
        )


def stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ready(status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": "2026-11-22T23:12:36Z",
    }


def issued_status(now: datetime.datetime, target: str) -> dict[str, Any]:
    return {
        "observedGeneration": 1,
        "conditions": [ready("True", "TokenIssued", "token valid")],
        "expiresAt": stamp(now + datetime.timedelta(hours=1)),
        "nextRefreshAt": stamp(now + datetime.timedelta(minutes=40)),
        "target": target,
    }


@pytest.fixture
def env(cluster: LocalCluster, api_client: client.ApiClient, crds: None, namespace: str) -> Env:
    return Env(cluster, api_client, namespace)


@pytest.fixture
def jwt_credential(env: Env) -> str:
    """A Ready credential whose target Secret holds a signed JWT; yields the token."""
    claims = {
        "iss": "https://login.example.com/",
        "sub": "billing-service",
        "aud": "https://api.example.com",
        "scope": "payments.read",
        "iat": int(env.now.timestamp()),
        "exp": int((env.now + datetime.timedelta(hours=1)).timestamp()),
    }
    token = jwt.encode(claims, SIGNING_KEY, algorithm="HS256", headers={"kid": "key-1"})
    env.credential("billing-api", issued_status(env.now, "billing-api-token"))
    env.target("billing-api-token", token, expires_at=env.now + datetime.timedelta(hours=1))
    return token


def test_status_shows_each_credential(env: Env, jwt_credential: str) -> None:
    env.credential(
        "broken",
        {
            "observedGeneration": 1,
            "failedAttempts": 3,
            "conditions": [
                ready("False", "InvalidClient", "the server refused the client id/secret (401)")
            ],
        },
    )
    env.credential(
        "flaky",
        {
            **issued_status(env.now, "flaky-token"),
            "conditions": [ready("True", "RefreshFailing", "ServerError: HTTP 503, retrying")],
        },
    )
    env.credential("fresh")

    out = env.ok("status", "-n", env.ns)
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "NAME",
        "READY",
        "REASON",
        "EXPIRES",
        "NEXT",
        "REFRESH",
        "LAST",
        "ERROR",
    ]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert set(rows) == {"billing-api", "broken", "flaky", "fresh"}
    assert rows["billing-api"].split()[:4] == [env.ns, "billing-api", "True", "TokenIssued"]
    assert "in 59m" in rows["billing-api"] or "in 1h" in rows["billing-api"]
    assert "in 39m" in rows["billing-api"] or "in 40m" in rows["billing-api"]
    assert rows["billing-api"].rstrip().endswith("-")
    assert "False" in rows["broken"]
    assert "InvalidClient" in rows["broken"]
    assert "the server refused the client id/secret (401)" in rows["broken"]
    assert "ServerError: HTTP 503, retrying" in rows["flaky"]
    assert rows["fresh"].split()[2:4] == ["Unknown", "-"]

    # The same through kubectl's plugin discovery, and as JSON for scripts.
    assert env.ok("status", "-n", env.ns, via_kubectl=True) == out
    as_json = json.loads(env.ok("status", "-n", env.ns, "-o", "json"))
    assert {r["name"]: r["ready"] for r in as_json} == {
        "billing-api": "True",
        "broken": "False",
        "flaky": "True",
        "fresh": "Unknown",
    }
    everywhere = env.ok("status", "-A")
    assert f"{env.ns}   billing-api" in everywhere


def test_status_shortens_long_errors_unless_wide(env: Env) -> None:
    message = "invalid_scope: " + "the requested scope is not allowed for this client " * 4
    env.credential(
        "scoped",
        {"observedGeneration": 1, "conditions": [ready("False", "InvalidScope", message)]},
    )
    short = env.ok("status", "-n", env.ns)
    assert "…" in short
    assert message.strip() not in short
    assert message.strip() in env.ok("status", "-n", env.ns, "--wide")


def test_status_in_an_empty_namespace(env: Env) -> None:
    assert env.ok("status", "-n", env.ns).strip() == f"No ClientCredentials in namespace {env.ns}."


def test_refresh_sets_the_annotation_to_the_current_time(env: Env) -> None:
    env.credential("billing-api")
    before = datetime.datetime.now(datetime.UTC)
    out = env.ok("refresh", "billing-api", "-n", env.ns)
    value = env.get("billing-api")["metadata"]["annotations"][model.REFRESH_REQUESTED_ANNOTATION]
    requested = datetime.datetime.fromisoformat(value)
    assert (
        before - datetime.timedelta(seconds=1) <= requested <= datetime.datetime.now(datetime.UTC)
    )
    assert value in out
    # Every request is a new value, so that tokensync acts on each.
    env.ok("refresh", "billing-api", "-n", env.ns)
    again = env.get("billing-api")["metadata"]["annotations"][model.REFRESH_REQUESTED_ANNOTATION]
    assert again != value
    # The spec is untouched: GitOps tools see no drift.
    assert env.get("billing-api")["metadata"]["generation"] == 1


def test_refresh_wait_reports_when_tokensync_handled_it(env: Env) -> None:
    env.credential("billing-api", issued_status(env.now, "billing-api-token"))
    stop = threading.Event()

    def fake_operator() -> None:
        """Acts like tokensync: marks the request handled with a new expiry."""
        while not stop.is_set():
            obj = env.get("billing-api")
            value = (obj["metadata"].get("annotations") or {}).get(
                model.REFRESH_REQUESTED_ANNOTATION
            )
            if value:
                env.custom.patch_namespaced_custom_object_status(
                    *API,
                    env.ns,
                    model.PLURAL,
                    "billing-api",
                    {
                        "status": {
                            "handledRefreshRequest": value,
                            "expiresAt": "2030-01-01T00:00:00Z",
                        }
                    },
                )
                return
            time.sleep(0.1)

    thread = threading.Thread(target=fake_operator, daemon=True)
    thread.start()
    try:
        out = env.ok("refresh", "billing-api", "-n", env.ns, "--wait", "20")
    finally:
        stop.set()
        thread.join(5)
    assert "handled: Ready=True (TokenIssued), token valid until 2030-01-01T00:00:00Z" in out

    # Nobody handles it: the wait ends with an error.
    timed_out = env.run("refresh", "billing-api", "-n", env.ns, "--wait", "1")
    assert timed_out.returncode == 1
    assert "had not handled it after 1s" in timed_out.stderr


def test_refresh_of_a_missing_credential(env: Env) -> None:
    result = env.run("refresh", "nope", "-n", env.ns)
    assert result.returncode == 1
    assert f"clientcredential {env.ns}/nope not found" in result.stderr


def test_inspect_decodes_jwt_claims_without_showing_the_token(
    env: Env, jwt_credential: str
) -> None:
    out = env.ok("inspect", "billing-api", "-n", env.ns)
    assert "Token:            JWT" in out
    assert '"sub": "billing-service"' in out
    assert '"aud": "https://api.example.com"' in out
    assert '"kid": "key-1"' in out
    assert "signature NOT verified" in out
    expiry = stamp(env.now + datetime.timedelta(hours=1))
    assert f"Expires:          {expiry}" in out
    assert f"exp: {expiry}" in out
    # Neither the token nor any of its segments (the signature especially) is printed.
    for part in [jwt_credential, *jwt_credential.split(".")]:
        assert part not in out
    as_json = env.ok("inspect", "billing-api", "-n", env.ns, "-o", "json")
    report = json.loads(as_json)
    assert report["format"] == "jwt"
    assert report["claims"]["scope"] == "payments.read"
    assert report["secret"] == "billing-api-token"
    assert report["fingerprint"].startswith("sha256:")
    for part in jwt_credential.split("."):
        assert part not in as_json


def test_inspect_says_when_the_token_is_opaque(env: Env) -> None:
    env.credential(
        "opaque", issued_status(env.now, "opaque-secret"), target={"name": "opaque-secret"}
    )
    env.target("opaque-secret", OPAQUE_TOKEN, expires_at=env.now + datetime.timedelta(hours=1))
    out = env.ok("inspect", "opaque", "-n", env.ns)
    assert "opaque (not a JWT): there are no claims to decode" in out
    assert "Secret:           opaque-secret" in out
    assert OPAQUE_TOKEN not in out
    assert "Claims" not in out


def test_inspect_before_the_first_token(env: Env) -> None:
    env.credential("fresh")
    result = env.run("inspect", "fresh", "-n", env.ns)
    assert result.returncode == 1
    assert f"secret {env.ns}/fresh-token not found" in result.stderr


def test_namespace_defaults_to_the_kubeconfig_context(env: Env, tmp_path: pathlib.Path) -> None:
    env.credential("billing-api")
    kubeconfig = tmp_path / "kubeconfig"
    text = env.cluster.kubeconfig.read_text().replace(
        "cluster: local\n", f"cluster: local\n    namespace: {env.ns}\n"
    )
    kubeconfig.write_text(text)
    assert "billing-api" in env.ok("status", kubeconfig=kubeconfig)


def test_a_user_without_rights_gets_a_clear_error(env: Env, tmp_path: pathlib.Path) -> None:
    kubeconfig = env.cluster.write_kubeconfig(tmp_path / "nobody.kubeconfig", user="nobody")
    result = env.run("status", "-n", env.ns, kubeconfig=kubeconfig)
    assert result.returncode == 1
    assert "not allowed to read or change clientcredentials (403 Forbidden)" in result.stderr
    assert "Traceback" not in result.stderr
