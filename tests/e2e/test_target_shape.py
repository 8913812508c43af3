"""The target's shape on a real control plane (issue 16 section 1, decision 0040).

The recipes are applied from examples/ (only the token URL and the client Secret are this
test's), a dockerconfigjson target is checked the way the kubelet reads it, a template that
does not render leaves the Secret untouched, a restarted operator resumes a templated
target without a token request, a templated target edited by hand is repaired, and a
change of shape removes the keys of the last one. The operator runs under the deploy/
ServiceAccount against a real API server and the Authlib token server.
"""

from __future__ import annotations

import base64
import copy
import json
import pathlib
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from test_operator import CLIENT_SECRET, Env

from localcluster import LocalCluster
from support.operatorproc import OperatorProcess, install_operator_identity
from support.polling import wait_for
from support.tokenserver import TokenServer

pytestmark = pytest.mark.e2e

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO_ROOT / "examples").glob("target-template-*.yaml"))
DOCKER_EXAMPLE = REPO_ROOT / "examples" / "target-dockerconfigjson.yaml"
DATA_KEYS, DATA_DIGEST = "tokensync.dev/data-keys", "tokensync.dev/data-digest"
DEFAULT_KEYS = {"access_token", "token_type", "expires_at", "authorization"}
FILES = {"token": "{{ access_token }}", ".netrc": "machine api\npassword {{ access_token }}\n"}


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


def read(env: Env, name: str) -> client.V1Secret | None:
    try:
        return env.core.read_namespaced_secret(name, env.ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def example_credential(path: pathlib.Path, env: Env) -> dict[str, Any]:
    """The example's ClientCredential, pointed at this test's token server and client."""
    (doc,) = [
        d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "ClientCredential"
    ]
    spec = copy.deepcopy(doc["spec"])
    spec["tokenURL"] = env.server.url
    spec["clientSecretRef"] = {"name": "oauth-client"}
    return {"name": doc["metadata"]["name"], "spec": spec}


def token_in(key: str, value: str) -> str:
    """The access token inside one recipe's rendered value, read as its consumer would."""
    if key == "token":
        return value
    if key == "header":
        name, _, header = value.partition(": ")
        assert name == "Authorization"
        scheme, _, token = header.partition(" ")
        assert scheme == "Bearer"
        return token
    if key == ".netrc":
        words = value.split()
        assert words[:4] == ["machine", "archive.example.com", "login", "oauth2"]
        return words[words.index("password") + 1]
    if key == "token.json":
        parsed = json.loads(value)
        assert 3500 <= parsed["expires_in"] <= 3600
        assert parsed["expires_at"] > time.time()
        return str(parsed["access_token"])
    if key == "client.properties":
        props = dict(line.split("=", 1) for line in value.splitlines())
        assert props["oauth.token.expires.at"].endswith("Z")
        return props["oauth.access.token"]
    if key == "query":
        (token,) = urllib.parse.parse_qs(value, strict_parsing=True)["access_token"]
        return token
    raise AssertionError(f"no reader for the recipe key {key!r}")


def kubelet_read(config_json: str) -> dict[str, tuple[str, str]]:
    """k8s.io/kubernetes pkg/credentialprovider's reading: DockerConfigJSON.Auths, each
    entry's auth (base64 username:password, split at the first colon) winning."""
    found = {}
    for registry, entry in json.loads(config_json)["auths"].items():
        username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        assert (entry["username"], entry["password"]) == (username, password)
        found[registry] = (username, password)
    return found


def test_each_recipe_applied_from_examples(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    applied = [example_credential(path, env) for path in [*RECIPES, DOCKER_EXAMPLE]]
    assert len(applied) == 7
    for credential in applied:
        env.create_credential(credential["name"], credential["spec"])
    for credential in applied:
        name, spec = credential["name"], credential["spec"]
        env.wait_ready(name)
        secret = read(env, f"{name}-token")
        assert secret is not None
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        annotations = secret.metadata.annotations or {}
        if "template" in spec["target"]:
            keys = set(spec["target"]["template"]["data"])
            assert secret.type == "Opaque"
        else:
            keys = {".dockerconfigjson"}
            assert secret.type == "kubernetes.io/dockerconfigjson"
            ((registry, (user, token)),) = kubelet_read(data[".dockerconfigjson"]).items()
            assert (registry, user) == ("europe-docker.pkg.dev", "oauth2accesstoken")
            assert env.server.verify(token)
        assert set(data) == keys  # exactly the recipe's keys, none of the default five
        assert annotations[DATA_KEYS] == ",".join(sorted(keys))
        assert annotations[DATA_DIGEST].startswith("sha256:")
        for key, value in data.items():
            if key != ".dockerconfigjson":
                assert env.server.verify(token_in(key, value)), key
    assert len(env.issued()) == 7
    assert CLIENT_SECRET not in operator.log()


def test_a_template_that_does_not_render_leaves_the_secret_untouched(
    env: Env, operator: OperatorProcess
) -> None:
    env.client_secret()
    env.credential(target={"template": {"data": dict(FILES)}})
    env.wait_ready()
    before = read(env, "api-token")
    assert before is not None
    first = before.data["token"]

    # Caught before any token is fetched: an undefined variable.
    broken = {**FILES, "token": "{{ acces_token }}"}
    env.patch("api", {"spec": {"target": {"template": {"data": broken}}}})
    ready = env.wait_ready(reason="TemplateFailed")
    assert ready["status"] == "False"
    assert "spec.target.template.data[token]" in ready["message"]
    assert "'acces_token' is undefined" in ready["message"]
    assert len(env.issued()) == 1
    # Renders with the placeholder token (a JWT whose header says alg none), not with the
    # issued one: fetched, then refused without the error, which would quote the token.
    lookup = "{{ {'eyJhbGciOiJub25lIn0': 'x'}[access_token[:19]] }}"
    env.patch("api", {"spec": {"target": {"template": {"data": {**FILES, "token": lookup}}}}})
    env.wait_for(lambda: len(env.issued()) == 2 or None, what="the second token request")
    env.wait_for(
        lambda: "not shown" in (env.ready() or {}).get("message", "") or None,
        what="TemplateFailed after the token was fetched",
    )
    ready = env.wait_ready(reason="TemplateFailed")
    # Its own status patches (events of the credential) fetch no token for it again.
    time.sleep(3)
    assert len(env.issued()) == 2
    after = read(env, "api-token")
    assert after is not None
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.data["token"] == first
    second = env.issued()[-1].access_token
    texts = [ready["message"], operator.log()]
    texts += [e.message or "" for e in env.events()]
    for text in texts:
        assert second not in text
        assert second[:19] not in text
        assert CLIENT_SECRET not in text

    # Fixed: Ready again, with a new token in the same Secret.
    env.patch("api", {"spec": {"target": {"template": {"data": dict(FILES)}}}})
    env.wait_ready()
    fixed = read(env, "api-token")
    assert fixed is not None
    assert fixed.metadata.uid == before.metadata.uid
    assert env.server.verify(base64.b64decode(fixed.data["token"]).decode())


def test_a_restarted_operator_fetches_nothing_for_a_templated_target(
    env: Env, operator: OperatorProcess
) -> None:
    env.client_secret()
    env.credential(target={"template": {"data": dict(FILES)}})
    env.credential(
        "pull",
        target={
            "type": "kubernetes.io/dockerconfigjson",
            "dockerConfig": {"registry": "r.example"},
        },
    )
    env.wait_ready()
    env.wait_ready("pull")
    versions = {n: read(env, n).metadata.resource_version for n in ("api-token", "pull-token")}
    assert len(env.issued()) == 2
    operator.stop()
    operator.start()
    # The restarted operator has taken both up when it exports their gauges.
    for name in ("api", "pull"):
        wait_for(
            lambda name=name: f'name="{name}"' in operator.metrics() or None,
            what=f"the restarted operator to resume {name}",
            timeout=30,
        )
    time.sleep(3)  # room for a token request or a write, if one were coming
    assert len(env.issued()) == 2
    for name, version in versions.items():
        secret = read(env, name)
        assert secret is not None
        assert secret.metadata.resource_version == version
    assert (env.ready() or {}).get("reason") == "TokenIssued"


def test_a_templated_target_edited_by_hand_is_repaired(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.credential(target={"template": {"data": dict(FILES)}})
    env.wait_ready()
    first = env.secret_data("api-token")
    assert first is not None
    time.sleep(1.2)  # past minInterval (1 s here), so the repair is not held back

    # A key of someone else's is theirs: no new token, and it stays.
    env.core.patch_namespaced_secret("api-token", env.ns, {"data": {"theirs": b64("x")}})
    time.sleep(2)
    assert len(env.issued()) == 1

    env.core.patch_namespaced_secret("api-token", env.ns, {"data": {"token": b64("typed")}})

    def repaired() -> dict[str, str] | None:
        data = env.secret_data("api-token") or {}
        token = data.get("token", "typed")
        if token in ("typed", first["token"]) or not env.server.verify(token):
            return None
        return data

    data = env.wait_for(repaired, what="the templated target repaired", timeout=60)
    assert data[".netrc"] == f"machine api\npassword {data['token']}\n"
    assert data["theirs"] == "x"
    assert len(env.issued()) == 2
    env.wait_ready()


def test_a_new_shape_removes_the_keys_of_the_last(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.credential(target={"template": {"data": dict(FILES)}})
    env.wait_ready()
    env.core.patch_namespaced_secret("api-token", env.ns, {"data": {"theirs": b64("x")}})

    def keys_become(wanted: set[str]) -> set[str] | None:
        keys = set(env.secret_data("api-token") or {})
        return keys if keys == wanted else None

    env.patch("api", {"spec": {"target": {"template": None}}})
    env.wait_for(lambda: keys_become({*DEFAULT_KEYS, "theirs"}), what="the default keys")
    secret = read(env, "api-token")
    assert secret is not None
    assert not {DATA_KEYS, DATA_DIGEST} & set(secret.metadata.annotations or {})
    env.wait_ready()

    env.patch(
        "api", {"spec": {"target": {"template": {"data": {"header": "{{ authorization }}"}}}}}
    )
    env.wait_for(lambda: keys_become({"header", "theirs"}), what="the header key alone")
    data = env.secret_data("api-token") or {}
    assert env.server.verify(data["header"].removeprefix("Bearer "))
    env.wait_ready()
