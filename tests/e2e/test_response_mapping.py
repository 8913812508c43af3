"""spec.responseMapping end to end (issue 17 section 3, decision 0046).

The Authlib token server authenticates each client as usual and answers in a non-standard
shape (``tokenserver.nested_answer``: nested, camelCase, an RFC 3339 expiry, scopes as a
list, no token_type); the operator, under deploy/'s RBAC, reads it through the example's
mapping and writes the target Secret. A path that finds nothing is Ready=False BadResponse
naming the field and its path, with no token anywhere. The real API server's CEL (RE2)
admits exactly the paths the parser accepts.
"""

from __future__ import annotations

import copy
import datetime
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from test_operator import Env

from support.fixtures import operator
from support.operatorproc import OperatorProcess
from support.tokenserver import TokenServer, nested_answer
from tokensync import mapping, model, parsing

pytestmark = pytest.mark.e2e
__all__ = ["operator"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "response-mapping.yaml"
GROUP, VERSION = model.GROUP, model.VERSION


@pytest.fixture(scope="module")
def nested_server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=3600) as server:
        server.reshape = nested_answer
        yield server


@pytest.fixture
def env(
    api_client: client.ApiClient,
    namespace: str,
    nested_server: TokenServer,
    operator: OperatorProcess,
) -> Env:
    return Env(api_client, namespace, nested_server)


def example_spec(env: Env) -> dict[str, Any]:
    """The example's ClientCredential, pointed at this test's token server and client."""
    (doc,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == model.KIND]
    spec: dict[str, Any] = copy.deepcopy(doc["spec"])
    spec["tokenURL"] = env.server.url
    spec["clientSecretRef"] = {"name": "oauth-client"}
    return spec


def test_the_example_s_mapping_reads_a_nested_answer(env: Env, operator: OperatorProcess) -> None:
    env.client_secret()
    env.create_credential("api", example_spec(env))
    ready = env.wait_ready()
    assert ready["status"] == "True"
    data = env.target()
    assert data is not None
    token = data["access_token"]
    assert env.server.verify(token)
    (issued,) = env.issued()
    assert issued.access_token == token
    assert data["token_type"] == "Bearer"  # the answer has none: the default
    assert data["authorization"] == f"Bearer {token}"
    assert data["scope"] == "billing.read billing.write"
    expires_at = datetime.datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
    # The answer's expiresAt, in whole seconds, or the JWT's exp if that is earlier.
    assert abs((expires_at - issued.expires_at).total_seconds()) <= 1
    status = env.status()
    assert status["expiresAt"] == data["expires_at"]
    assert status["scope"] == "billing.read billing.write"


def test_a_path_that_finds_nothing_is_bad_response_naming_it(
    env: Env, operator: OperatorProcess
) -> None:
    env.client_secret()
    spec = example_spec(env)
    spec["responseMapping"]["accessToken"] = "data.token"
    env.create_credential("api", spec)
    ready = env.wait_ready(reason="BadResponse")
    assert ready["status"] == "False"
    assert "responseMapping.accessToken (data.token) found nothing" in ready["message"]
    assert env.target() is None
    # The server did issue a token; it reached no status, Event or log.
    issued = [i.access_token for i in env.issued()]
    assert issued
    texts = [ready["message"], *(e.message or "" for e in env.events())]
    texts.append(operator.log_path.read_text())
    assert not any(token in text for token in issued for text in texts)
    assert any(
        e.reason == "BadResponse" and "data.token" in (e.message or "") for e in env.events()
    )


ADMITTED = [
    "access_token",
    "data.tokens[0].value",
    "tokens[-1]",
    'data."access-token"',
    '"urn:ietf:token".value',
    '"\\u0041\\"x"',
]
REFUSED = ["data[*].token", "data.*", "[a, b]", "a | b", "@", "data..token", '"ü"', "a [0]"]


@pytest.mark.parametrize("path", ADMITTED + REFUSED)
def test_admission_and_the_parser_agree_on_paths(
    path: str, api_client: client.ApiClient, crds: None, namespace: str
) -> None:
    """The CRD's rule runs in the API server's CEL (RE2); the parser in Python's re and
    JMESPath: the same paths pass both."""
    spec = {
        "tokenURL": "https://login.example.com/oauth2/token",
        "clientSecretRef": {"name": "c"},
        "responseMapping": {"accessToken": path},
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": model.KIND,
        "metadata": {"name": "paths"},
        "spec": spec,
    }
    custom = client.CustomObjectsApi(api_client)
    if path in ADMITTED:
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, model.PLURAL, body
        )
        assert created["spec"]["responseMapping"]["accessToken"] == path
        parsing.parse_spec(created["spec"], name="paths")
        return
    with pytest.raises(client.ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, model.PLURAL, body)
    assert caught.value.status == 422
    assert "must be a path of names" in (caught.value.body or "")
    with pytest.raises(model.SpecError, match="must be a path of names"):
        parsing.parse_spec(spec, name="paths")
    assert mapping.PATH_MESSAGE.startswith("must be a path of names")
