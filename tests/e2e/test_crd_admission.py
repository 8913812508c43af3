"""What a real kube-apiserver admits under crds/clientcredentials.tokensync.dev.yaml.

The CRD's schema and CEL rules are the first line of defence: a bad spec is refused by
``kubectl apply`` with a message that names the field, before the operator sees it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from tokensync import bounds, model, parsing

pytestmark = pytest.mark.e2e

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
CRD_NAME = f"{model.PLURAL}.{model.GROUP}"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"

#: A minimal valid spec; every invalid case below changes one thing in it.
BASE_SPEC: dict[str, Any] = {
    "tokenURL": "https://login.example.com/oauth2/token",
    "clientSecretRef": {"name": "oauth-client"},
}
DROP = object()  # marks a key to remove from BASE_SPEC


@pytest.fixture
def custom(api_client: client.ApiClient, crds: None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def credential(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{model.GROUP}/{model.VERSION}",
        "kind": model.KIND,
        "metadata": {"name": name},
        "spec": dict(spec),
    }


def create(
    custom: client.CustomObjectsApi, namespace: str, body: Mapping[str, Any]
) -> dict[str, Any]:
    created = custom.create_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, dict(body)
    )
    return cast("dict[str, Any]", created)


def error_status(exc: client.ApiException) -> dict[str, Any]:
    """The Status object the API server sent with a refusal."""
    assert exc.status == 422, exc.body
    return cast("dict[str, Any]", json.loads(exc.body or "{}"))


def with_changes(**changes: Any) -> dict[str, Any]:
    """BASE_SPEC with top-level keys replaced (or removed, with DROP)."""
    spec = copy.deepcopy(BASE_SPEC)
    for key, value in changes.items():
        if value is DROP:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def is_subset(wanted: object, actual: object) -> bool:
    """Whether everything in ``wanted`` survived in ``actual`` (nothing was pruned)."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and is_subset(value, actual[key]) for key, value in wanted.items()
        )
    return bool(wanted == actual)


# -- (a) the examples apply ---------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_admitted(
    path: pathlib.Path,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert any(doc["kind"] == model.KIND for doc in docs), f"{path.name} has no {model.KIND}"
    for doc in docs:
        if doc["kind"] == "Secret":
            core.create_namespaced_secret(namespace, doc)
            continue
        if doc["kind"] == "ConfigMap":
            core.create_namespaced_config_map(namespace, doc)
            continue
        if doc["kind"] == "ServiceAccount":
            core.create_namespaced_service_account(namespace, doc)
            continue
        if doc["kind"] == "Deployment":  # a consumer that spec.rolloutRestart restarts
            client.AppsV1Api(core.api_client).create_namespaced_deployment(namespace, doc)
            continue
        if doc["kind"] == "NetworkPolicy":  # a tenant's egress to the refresh endpoint
            networking = client.NetworkingV1Api(core.api_client)
            networking.create_namespaced_network_policy(namespace, doc)
            continue
        assert doc["kind"] == model.KIND, f"unexpected kind {doc['kind']} in {path.name}"
        created = create(custom, namespace, doc)
        # Structural schemas prune unknown fields silently: a misspelt field in an example
        # would vanish instead of failing, so check that everything written came back.
        assert is_subset(doc["spec"], created["spec"]), (doc["spec"], created["spec"])


# -- (b) invalid specs are refused, naming the field --------------------------------------

LONG_NAME = "a" * 248  # 248 + len("-token") > 253
PATTERN = "should match"
OWNED_HEADER = "must not set a header tokensync owns"
CEL_URL = "must be an absolute https:// URL"
METADATA = "must not point at a cloud metadata service or a link-local address"
DECIMAL = "as four decimal numbers"
IN_IPV6 = "must not write an IPv4 address inside an IPv6 address"
UNSPECIFIED = "unspecified, multicast or reserved"
ASCII = "must write the host in ASCII"


@dataclasses.dataclass(frozen=True)
class Refused:
    """A spec the API server must refuse, the field the error names, a piece of its message."""

    spec: dict[str, Any]
    field: str
    expect: str
    name: str = "ok"


def case(id_: str, spec: dict[str, Any], field: str, expect: str, *, name: str = "ok") -> Any:
    return pytest.param(Refused(spec, field, expect, name), id=id_)


INVALID_SPECS = [
    # spec and tokenURL
    case("spec-missing", {}, "spec", "Required value"),
    case("tokenURL-missing", with_changes(tokenURL=DROP), "spec.tokenURL", "Required value"),
    case("tokenURL-not-a-string", with_changes(tokenURL=42), "spec.tokenURL", "of type string"),
    case(
        "tokenURL-no-scheme", with_changes(tokenURL="login.example.com"), "spec.tokenURL", CEL_URL
    ),
    case("tokenURL-relative", with_changes(tokenURL="/oauth2/token"), "spec.tokenURL", CEL_URL),
    case(
        "tokenURL-ftp-scheme",
        with_changes(tokenURL="ftp://login.example.com/token"),
        "spec.tokenURL",
        "--allow-insecure-http",
    ),
    case(
        "tokenURL-no-host",
        with_changes(tokenURL="https:///oauth2/token"),
        "spec.tokenURL",
        "must name a host",
    ),
    case(
        "tokenURL-userinfo",
        with_changes(tokenURL="https://user:pass@login.example.com/token"),
        "spec.tokenURL",
        "must not contain credentials",
    ),
    case(
        "tokenURL-fragment",
        with_changes(tokenURL="https://login.example.com/token#frag"),
        "spec.tokenURL",
        "must not contain a fragment",
    ),
    case(
        "tokenURL-cloud-metadata",
        with_changes(tokenURL="http://169.254.169.254/latest/meta-data"),
        "spec.tokenURL",
        "cloud metadata",
    ),
    case(
        "tokenURL-link-local-ipv6",
        with_changes(tokenURL="https://[fe80::1]:8443/token"),
        "spec.tokenURL",
        "link-local",
    ),
    case(
        "tokenURL-too-long",
        with_changes(tokenURL="https://login.example.com/" + "a" * 2048),
        "spec.tokenURL",
        "Too long",
    ),
    # the spellings of issue 14 section 4: always wrong, so refused before the operator
    # (which judges the address it connects to) ever sees them
    *(
        case(f"tokenURL-{id_}", with_changes(tokenURL=url), "spec.tokenURL", expect)
        for id_, url, expect in (
            ("metadata-trailing-dot", "http://169.254.169.254./latest", METADATA),
            ("metadata-name-trailing-dot", "http://metadata./computeMetadata", METADATA),
            ("metadata-ipv4-mapped", "http://[::ffff:169.254.169.254]/", IN_IPV6),
            ("metadata-ipv4-mapped-hex", "http://[::ffff:a9fe:a9fe]/", IN_IPV6),
            ("metadata-ipv4-mapped-long", "http://[0:0:0:0:0:ffff:a9fe:a9fe]/", IN_IPV6),
            ("metadata-nat64", "http://[64:ff9b::a9fe:a9fe]/", METADATA),
            ("metadata-ipv6-long", "http://[fd00:ec2:0:0:0:0:0:254]/", METADATA),
            ("metadata-decimal", "http://2852039166/latest", DECIMAL),
            ("metadata-hex", "http://0xa9.0xfe.0xa9.0xfe/latest", DECIMAL),
            ("metadata-octal", "http://0251.0376.0251.0376/latest", DECIMAL),
            ("metadata-three-parts", "http://169.254.43518/latest", DECIMAL),
            ("loopback-leading-zero", "http://127.000.000.001:8080/token", DECIMAL),
            ("unspecified", "http://0.0.0.0:8080/token", UNSPECIFIED),
            ("unspecified-ipv6", "http://[::]:8080/token", UNSPECIFIED),
            ("multicast", "https://224.0.0.251/token", UNSPECIFIED),
            ("fullwidth", "https://\uff11\uff16\uff19.254.169.254/token", ASCII),
            ("ideographic-dots", "https://169\u3002254\u3002169\u3002254/token", ASCII),
        )
    ),
    case(
        "issuerURL-metadata-decimal",
        with_changes(tokenURL=DROP, issuerURL="http://2852039166/"),
        "spec.issuerURL",
        DECIMAL,
    ),
    case(
        "issuerURL-metadata-ipv4-mapped",
        with_changes(tokenURL=DROP, issuerURL="http://[::ffff:169.254.169.254]/"),
        "spec.issuerURL",
        IN_IPV6,
    ),
    # clientSecretRef
    case(
        "secretRef-missing",
        with_changes(clientSecretRef=DROP),
        "spec.clientSecretRef",
        "Required value",
    ),
    case(
        "secretRef-name-missing",
        with_changes(clientSecretRef={"clientIDKey": "id"}),
        "spec.clientSecretRef.name",
        "Required value",
    ),
    case(
        "secretRef-name-not-dns",
        with_changes(clientSecretRef={"name": "OAuth_Client"}),
        "spec.clientSecretRef.name",
        PATTERN,
    ),
    case(
        "secretRef-name-too-long",
        with_changes(clientSecretRef={"name": "a" * 254}),
        "spec.clientSecretRef.name",
        "Too long",
    ),
    case(
        "secretRef-clientIDKey-slash",
        with_changes(clientSecretRef={"name": "oauth-client", "clientIDKey": "client/id"}),
        "spec.clientSecretRef.clientIDKey",
        PATTERN,
    ),
    case(
        "secretRef-clientSecretKey-empty",
        with_changes(clientSecretRef={"name": "oauth-client", "clientSecretKey": ""}),
        "spec.clientSecretRef.clientSecretKey",
        "at least 1 chars long",
    ),
    # clientID, authMethod
    case("clientID-empty", with_changes(clientID=""), "spec.clientID", "at least 1 chars long"),
    case(
        "authMethod-unknown",
        with_changes(authMethod="client_secret_magic"),
        "spec.authMethod",
        "Unsupported value",
    ),
    case(
        "authMethod-wrong-case",
        with_changes(authMethod="Auto"),
        "spec.authMethod",
        "Unsupported value",
    ),
    # scopes, audience, resources
    case("scopes-item-whitespace", with_changes(scopes=["read write"]), "spec.scopes[0]", PATTERN),
    case(
        "scopes-item-empty",
        with_changes(scopes=[""]),
        "spec.scopes[0]",
        "at least 1 chars long",
    ),
    case(
        "scopes-duplicate",
        with_changes(scopes=["read", "read"]),
        "spec.scopes[1]",
        "Duplicate value",
    ),
    case(
        "scopes-too-many",
        with_changes(scopes=[f"s{i}" for i in range(65)]),
        "spec.scopes",
        "Too many",
    ),
    case("scopes-not-a-list", with_changes(scopes="read write"), "spec.scopes", "of type array"),
    case("audience-empty", with_changes(audience=""), "spec.audience", "at least 1 chars long"),
    case(
        "resources-relative",
        with_changes(resources=["/api"]),
        "spec.resources[0]",
        "must be an absolute URI",
    ),
    case(
        "resources-fragment",
        with_changes(resources=["https://api.example.com/#x"]),
        "spec.resources[0]",
        "without a fragment",
    ),
    # extraParams: each reserved parameter has its own field or is set by tokensync
    *(
        case(
            f"extraParams-{param}",
            with_changes(extraParams={param: "x"}),
            "spec.extraParams",
            f"must not set {param}:",
        )
        for param in (
            "grant_type",
            "client_id",
            "client_secret",
            "client_assertion",
            "client_assertion_type",
            "scope",
            "audience",
            "resource",
        )
    ),
    case(
        "extraParams-name-with-space",
        with_changes(extraParams={"tenant id": "acme"}),
        "spec.extraParams",
        "parameter names",
    ),
    case(
        "extraParams-value-not-a-string",
        with_changes(extraParams={"tenant": 7}),
        "spec.extraParams.tenant",
        "of type string",
    ),
    # refresh
    case(
        "renewBefore-words",
        with_changes(refresh={"renewBefore": "5 minutes"}),
        "spec.refresh.renewBefore",
        PATTERN,
    ),
    case(
        "renewBefore-negative",
        with_changes(refresh={"renewBefore": "-5m"}),
        "spec.refresh.renewBefore",
        PATTERN,
    ),
    case(
        "renewBefore-days",
        with_changes(refresh={"renewBefore": "1d"}),
        "spec.refresh.renewBefore",
        PATTERN,
    ),
    case(
        "refresh-both-renew-fields",
        with_changes(refresh={"renewBefore": "5m", "renewBeforePercentage": 20}),
        "spec.refresh",
        "not both",
    ),
    case(
        "renewBeforePercentage-zero",
        with_changes(refresh={"renewBeforePercentage": 0}),
        "spec.refresh.renewBeforePercentage",
        "greater than or equal to 1",
    ),
    case(
        "renewBeforePercentage-100",
        with_changes(refresh={"renewBeforePercentage": 100}),
        "spec.refresh.renewBeforePercentage",
        "less than or equal to 99",
    ),
    case(
        "renewBeforePercentage-fraction",
        with_changes(refresh={"renewBeforePercentage": 33.3}),
        "spec.refresh.renewBeforePercentage",
        "of type integer",
    ),
    case(
        "minInterval-no-unit",
        with_changes(refresh={"minInterval": "30"}),
        "spec.refresh.minInterval",
        PATTERN,
    ),
    case(
        "defaultLifetime-zero",
        with_changes(refresh={"defaultLifetime": "0s"}),
        "spec.refresh.defaultLifetime",
        "must be between 10s and 87600h",
    ),
    case(
        "defaultLifetime-zero-compound",
        with_changes(refresh={"defaultLifetime": "0h0m0.0s"}),
        "spec.refresh.defaultLifetime",
        "must be between 10s and 87600h",
    ),
    # the bounds of decision 0031, the parser's (durations.DURATION_BOUNDS)
    case(
        "defaultLifetime-1ms",
        with_changes(refresh={"defaultLifetime": "1ms"}),
        "spec.refresh.defaultLifetime",
        "must be between 10s and 87600h",
    ),
    case(
        "defaultLifetime-a-nanosecond-short",
        with_changes(refresh={"defaultLifetime": "9.999999999s"}),
        "spec.refresh.defaultLifetime",
        "must be between 10s and 87600h",
    ),
    case(
        "defaultLifetime-100000h",
        with_changes(refresh={"defaultLifetime": "100000h"}),
        "spec.refresh.defaultLifetime",
        "must be between 10s and 87600h",
    ),
    case(
        "renewBefore-100000h",
        with_changes(refresh={"renewBefore": "100000h"}),
        "spec.refresh.renewBefore",
        "must be at most 87600h",
    ),
    case(
        "renewBefore-a-millisecond-too-long",
        with_changes(refresh={"renewBefore": "87600h1ms"}),
        "spec.refresh.renewBefore",
        "must be at most 87600h",
    ),
    case(
        "minInterval-zero",
        with_changes(refresh={"minInterval": "0s"}),
        "spec.refresh.minInterval",
        "must be between 1s and 87600h",
    ),
    case(
        "minInterval-100000h",
        with_changes(refresh={"minInterval": "100000h"}),
        "spec.refresh.minInterval",
        "must be between 1s and 87600h",
    ),
    # target
    case(
        "target-name-not-dns",
        with_changes(target={"name": "Token_Secret"}),
        "spec.target.name",
        PATTERN,
    ),
    case(
        "target-name-too-long",
        with_changes(target={"name": "a" * 254}),
        "spec.target.name",
        "Too long",
    ),
    case(
        "target-name-is-client-secret",
        with_changes(target={"name": "oauth-client"}),
        "spec.target.name",
        "must not be the client Secret",
    ),
    case(
        "default-target-name-is-client-secret",
        with_changes(clientSecretRef={"name": "ok-token"}),
        "spec.target.name",
        "must not be the client Secret",
    ),
    case(
        "default-target-name-too-long",
        copy.deepcopy(BASE_SPEC),
        "spec.target.name",
        "longer than 247 characters",
        name=LONG_NAME,
    ),
    case(
        "target-label-key-invalid",
        with_changes(target={"labels": {"-bad-": "x"}}),
        "spec.target.labels",
        "label keys",
    ),
    case(
        "target-label-value-invalid",
        with_changes(target={"labels": {"team": "a b"}}),
        "spec.target.labels.team",
        PATTERN,
    ),
    case(
        "target-label-managed-by",
        with_changes(target={"labels": {"app.kubernetes.io/managed-by": "me"}}),
        "spec.target.labels",
        "must not set app.kubernetes.io/managed-by",
    ),
    case(
        "target-label-reserved-prefix",
        with_changes(target={"labels": {"tokensync.dev/credential": "other"}}),
        "spec.target.labels",
        "labels under tokensync.dev/",
    ),
    case(
        "target-annotation-reserved-prefix",
        with_changes(target={"annotations": {"tokensync.dev/expires-at": "never"}}),
        "spec.target.annotations",
        "annotations under tokensync.dev/",
    ),
    case(
        "target-annotation-key-invalid",
        with_changes(target={"annotations": {"bad key": "x"}}),
        "spec.target.annotations",
        "annotation keys",
    ),
    # creation and deletion policies (issue 16 section 2, decision 0041)
    case(
        "target-creation-policy-unknown",
        with_changes(target={"creationPolicy": "Take"}),
        "spec.target.creationPolicy",
        "Unsupported value",
    ),
    case(
        "target-deletion-policy-unknown",
        with_changes(target={"deletionPolicy": "Orphan"}),
        "spec.target.deletionPolicy",
        "Unsupported value",
    ),
    case(
        "target-merge-with-delete",
        with_changes(target={"creationPolicy": "Merge", "deletionPolicy": "Delete"}),
        "spec.target.deletionPolicy",
        "must not be Delete with creationPolicy Merge",
    ),
    # sizes (issue 14 section 3): what one credential can make the operator hold
    case(
        "target-labels-too-many",
        with_changes(target={"labels": {f"l{i}": "x" for i in range(33)}}),
        "spec.target.labels",
        "Too many",
    ),
    case(
        "target-annotations-too-many",
        with_changes(target={"annotations": {f"a{i}": "x" for i in range(33)}}),
        "spec.target.annotations",
        "Too many",
    ),
    case(
        "target-annotation-value-too-long",
        with_changes(target={"annotations": {"a": "x" * 4097}}),
        "spec.target.annotations.a",
        "Too long",
    ),
    case(
        "target-labels-and-annotations-over-16384",
        with_changes(
            target={
                "labels": {f"l{i}": "x" * 63 for i in range(32)},
                "annotations": {f"a{i}": "x" * 4000 for i in range(4)},
            }
        ),
        "spec.target.annotations",
        "together must be at most 16384 characters",
    ),
    case(
        "extraParams-too-many",
        with_changes(extraParams={f"p{i}": "x" for i in range(33)}),
        "spec.extraParams",
        "Too many",
    ),
    case(
        "extraParams-value-too-long",
        with_changes(extraParams={"tenant": "x" * 4097}),
        "spec.extraParams.tenant",
        "Too long",
    ),
    case(
        "extraParams-over-16384",
        with_changes(extraParams={f"p{i}": "x" * 4096 for i in range(5)}),
        "spec.extraParams",
        "together must be at most 16384 characters",
    ),
    case(
        "scope-too-long",
        with_changes(scopes=["s" * 257]),
        "spec.scopes[0]",
        "Too long",
    ),
    case(
        "resources-too-many",
        with_changes(resources=[f"https://api.example.com/{i}" for i in range(17)]),
        "spec.resources",
        "Too many",
    ),
    case(
        "audience-too-long",
        with_changes(audience="a" * 2049),
        "spec.audience",
        "Too long",
    ),
    case(
        "clientID-too-long",
        with_changes(clientID="c" * 1025),
        "spec.clientID",
        "Too long",
    ),
    # client authentication without shared secrets, and discovery
    case(
        "tokenURL-and-issuerURL",
        with_changes(issuerURL="https://login.example.com/realms/a"),
        "spec.tokenURL",
        "exactly one of tokenURL and issuerURL",
    ),
    case(
        "issuerURL-userinfo",
        with_changes(tokenURL=DROP, issuerURL="https://u:p@login.example.com/realms/a"),
        "spec.issuerURL",
        "must not contain credentials",
    ),
    case(
        "no-client-authentication-material",
        with_changes(clientSecretRef=DROP, clientID="svc"),
        "spec.clientSecretRef",
        "spec.serviceAccountRef",
    ),
    case(
        "clientID-needed-without-clientSecretRef",
        with_changes(clientSecretRef=DROP, privateKeyRef={"name": "key"}),
        "spec.clientID",
        "is required when spec.clientSecretRef is not set",
    ),
    case(
        "private_key_jwt-without-key",
        with_changes(authMethod="private_key_jwt"),
        "spec.privateKeyRef",
        "is required with authMethod private_key_jwt",
    ),
    case(
        "client_secret_jwt-without-secret",
        with_changes(
            authMethod="client_secret_jwt",
            clientSecretRef=DROP,
            clientID="svc",
            privateKeyRef={"name": "key"},
        ),
        "spec.clientSecretRef",
        "client_secret_* authentication methods",
    ),
    case(
        "tls_client_auth-without-certificate",
        with_changes(authMethod="tls_client_auth"),
        "spec.clientCertificateRef",
        "is required with authMethod tls_client_auth",
    ),
    case(
        "workload_identity-without-service-account",
        with_changes(authMethod="workload_identity"),
        "spec.serviceAccountRef",
        "is required with authMethod workload_identity",
    ),
    case(
        "serviceAccountRef-without-audience",
        with_changes(serviceAccountRef={"name": "billing"}),
        "spec.serviceAccountRef.audience",
        "Required value",
    ),
    case(
        "clientAssertion-algorithm-unknown",
        with_changes(clientAssertion={"algorithm": "none"}),
        "spec.clientAssertion.algorithm",
        "Unsupported value",
    ),
    case(
        "clientAssertion-lifetime-not-a-duration",
        with_changes(clientAssertion={"lifetime": "2 minutes"}),
        "spec.clientAssertion.lifetime",
        PATTERN,
    ),
    case(
        "clientAssertion-lifetime-2h",
        with_changes(clientAssertion={"lifetime": "2h"}),
        "spec.clientAssertion.lifetime",
        "must be between 10s and 1h",
    ),
    case(
        "clientAssertion-lifetime-9s",
        with_changes(clientAssertion={"lifetime": "9s"}),
        "spec.clientAssertion.lifetime",
        "must be between 10s and 1h",
    ),
    case(
        "target-is-the-private-key",
        with_changes(privateKeyRef={"name": "ok-token"}),
        "spec.target.name",
        "private key Secret",
    ),
    case(
        "target-is-the-client-certificate",
        with_changes(target={"name": "client-tls"}, clientCertificateRef={"name": "client-tls"}),
        "spec.target.name",
        "client certificate Secret",
    ),
    # the target's shape (decision 0040)
    case(
        "target-type-unknown",
        with_changes(target={"type": "kubernetes.io/tls"}),
        "spec.target.type",
        "Unsupported value",
    ),
    case(
        "dockerconfigjson-without-dockerConfig",
        with_changes(target={"type": "kubernetes.io/dockerconfigjson"}),
        "spec.target.dockerConfig",
        "is required when type is kubernetes.io/dockerconfigjson",
    ),
    case(
        "dockerConfig-without-its-type",
        with_changes(target={"dockerConfig": {"registry": "r.example"}}),
        "spec.target.dockerConfig",
        "may be set only when type is kubernetes.io/dockerconfigjson",
    ),
    case(
        "dockerconfigjson-with-a-template",
        with_changes(
            target={
                "type": "kubernetes.io/dockerconfigjson",
                "dockerConfig": {"registry": "r.example"},
                "template": {"data": {"token": "{{ access_token }}"}},
            }
        ),
        "spec.target.template",
        "cannot be combined with type kubernetes.io/dockerconfigjson",
    ),
    case(
        "dockerConfig-registry-a-url",
        with_changes(
            target={
                "type": "kubernetes.io/dockerconfigjson",
                "dockerConfig": {"registry": "https://r.example/v2"},
            }
        ),
        "spec.target.dockerConfig.registry",
        PATTERN,
    ),
    case(
        "dockerConfig-username-with-a-colon",
        with_changes(
            target={
                "type": "kubernetes.io/dockerconfigjson",
                "dockerConfig": {"registry": "r.example", "username": "a:b"},
            }
        ),
        "spec.target.dockerConfig.username",
        PATTERN,
    ),
    case(
        "template-without-data",
        with_changes(target={"template": {}}),
        "spec.target.template.data",
        "Required value",
    ),
    case(
        "template-with-no-key",
        with_changes(target={"template": {"data": {}}}),
        "spec.target.template.data",
        "should have at least 1 properties",
    ),
    case(
        "template-key-not-a-secret-key",
        with_changes(target={"template": {"data": {"a/b": "{{ access_token }}"}}}),
        "spec.target.template.data",
        "keys must be valid Secret keys",
    ),
    case(
        "template-key-dot-dot",
        with_changes(target={"template": {"data": {"..data": "{{ access_token }}"}}}),
        "spec.target.template.data",
        "keys must be valid Secret keys",
    ),
    case(
        "template-too-many-keys",
        with_changes(target={"template": {"data": {f"k{i}": "x" for i in range(17)}}}),
        "spec.target.template.data",
        "must have at most 16 items",
    ),
    case(
        "template-too-large",
        with_changes(target={"template": {"data": {f"k{i}": "x" * 4096 for i in range(4)}}}),
        "spec.target.template.data",
        "keys and templates together must be at most 16384 characters",
    ),
    # rolloutRestart (decision 0042)
    case(
        "rolloutRestart-without-targets",
        with_changes(rolloutRestart={"minInterval": "5m"}),
        "spec.rolloutRestart.targets",
        "Required value",
    ),
    case(
        "rolloutRestart-no-target",
        with_changes(rolloutRestart={"targets": []}),
        "spec.rolloutRestart.targets",
        "at least 1",
    ),
    case(
        "rolloutRestart-17-targets",
        with_changes(
            rolloutRestart={"targets": [{"kind": "Deployment", "name": f"d{i}"} for i in range(17)]}
        ),
        "spec.rolloutRestart.targets",
        "must have at most 16 items",
    ),
    case(
        "rolloutRestart-kind-pod",
        with_changes(rolloutRestart={"targets": [{"kind": "Pod", "name": "a"}]}),
        "spec.rolloutRestart.targets[0].kind",
        "Unsupported value",
    ),
    case(
        "rolloutRestart-name-not-dns",
        with_changes(rolloutRestart={"targets": [{"kind": "Deployment", "name": "Web_1"}]}),
        "spec.rolloutRestart.targets[0].name",
        PATTERN,
    ),
    case(
        "rolloutRestart-target-twice",
        with_changes(rolloutRestart={"targets": [{"kind": "DaemonSet", "name": "a"}] * 2}),
        "spec.rolloutRestart.targets[1]",
        "Duplicate value",
    ),
    case(
        "rolloutRestart-minInterval-29s",
        with_changes(
            rolloutRestart={"targets": [{"kind": "Deployment", "name": "a"}], "minInterval": "29s"}
        ),
        "spec.rolloutRestart.minInterval",
        "must be between 30s and 87600h",
    ),
    # responseMapping (decision 0046)
    case(
        "responseMapping-empty",
        with_changes(responseMapping={}),
        "spec.responseMapping",
        "should have at least 1 properties",
    ),
    case(
        "responseMapping-expiresIn-and-expiresAt",
        with_changes(responseMapping={"expiresIn": "data.ttl", "expiresAt": "data.exp"}),
        "spec.responseMapping.expiresAt",
        "set expiresIn or expiresAt, not both",
    ),
    case(
        "responseMapping-projection",
        with_changes(responseMapping={"accessToken": "data[*].token"}),
        "spec.responseMapping.accessToken",
        'must be a path of names, "quoted names" and [indexes] joined by dots',
    ),
    case(
        "responseMapping-function",
        with_changes(responseMapping={"scope": "join(' ', data.scopes)"}),
        "spec.responseMapping.scope",
        "must be a path of names",
    ),
    case(
        "responseMapping-jsonpath",
        with_changes(responseMapping={"tokenType": "$.data.type"}),
        "spec.responseMapping.tokenType",
        "must be a path of names",
    ),
    case(
        "responseMapping-too-long",
        with_changes(responseMapping={"expiresIn": ".".join(["a"] * 129)}),
        "spec.responseMapping.expiresIn",
        "Too long",
    ),
    # requestHeaders (decision 0044): tokensync's own headers, whatever their case
    *(
        case(
            f"requestHeaders-{name.lower()}",
            with_changes(requestHeaders=[{"name": name, "value": "x"}]),
            "spec.requestHeaders[0].name",
            OWNED_HEADER,
        )
        for name in ("Authorization", "content-type", "Content-Length", "HOST", "Connection")
    ),
    case(
        "requestHeaders-transfer-encoding-second",
        with_changes(
            requestHeaders=[
                {"name": "X-A", "value": "1"},
                {"name": "Transfer-Encoding", "value": "x"},
            ]
        ),
        "spec.requestHeaders[1].name",
        OWNED_HEADER,
    ),
    case(
        "requestHeaders-name-not-a-token",
        with_changes(requestHeaders=[{"name": "X Api Key", "value": "x"}]),
        "spec.requestHeaders[0].name",
        PATTERN,
    ),
    case(
        "requestHeaders-value-two-lines",
        with_changes(requestHeaders=[{"name": "X-A", "value": "a\r\nX-Injected: 1"}]),
        "spec.requestHeaders[0].value",
        PATTERN,
    ),
    case(
        "requestHeaders-value-and-valueFrom",
        with_changes(
            requestHeaders=[
                {
                    "name": "X-A",
                    "value": "a",
                    "valueFrom": {"secretKeyRef": {"name": "k", "key": "v"}},
                }
            ]
        ),
        "spec.requestHeaders[0]",
        "set exactly one of value and valueFrom",
    ),
    case(
        "requestHeaders-no-value",
        with_changes(requestHeaders=[{"name": "X-A"}]),
        "spec.requestHeaders[0]",
        "set exactly one of value and valueFrom",
    ),
    case(
        "requestHeaders-name-twice",
        with_changes(requestHeaders=[{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]),
        "spec.requestHeaders",
        "must list each header name once",
    ),
    case(
        "requestHeaders-17",
        with_changes(requestHeaders=[{"name": f"X-{i}", "value": "v"} for i in range(17)]),
        "spec.requestHeaders",
        "must have at most 16 items",
    ),
    case(
        "requestHeaders-secret-is-the-target",
        with_changes(
            requestHeaders=[
                {"name": "X-A", "valueFrom": {"secretKeyRef": {"name": "ok-token", "key": "k"}}}
            ]
        ),
        "spec.target.name",
        "spec.requestHeaders[].valueFrom.secretKeyRef.name",
    ),
    # fallbackClientSecretKeys (decision 0045)
    case(
        "fallbackClientSecretKeys-three",
        with_changes(
            clientSecretRef={"name": "oauth-client", "fallbackClientSecretKeys": ["a", "b", "c"]}
        ),
        "spec.clientSecretRef.fallbackClientSecretKeys",
        "must have at most 2 items",
    ),
    case(
        "fallbackClientSecretKeys-twice",
        with_changes(
            clientSecretRef={"name": "oauth-client", "fallbackClientSecretKeys": ["a", "a"]}
        ),
        "spec.clientSecretRef.fallbackClientSecretKeys",
        "must list each key once",
    ),
    # spec.grant (decision 0047)
    case(
        "grant-type-unknown",
        with_changes(grant={"type": "password"}),
        "spec.grant.type",
        "Unsupported value",
    ),
    case(
        "grant-custom-without-uri",
        with_changes(grant={"type": "custom"}),
        "spec.grant.grantTypeURI",
        "is required with type custom",
    ),
    case(
        "grant-uri-without-custom",
        with_changes(grant={"grantTypeURI": "urn:example:grant"}),
        "spec.grant.grantTypeURI",
        "is required with type custom, and only then",
    ),
    case(
        "grant-uri-standard",
        with_changes(grant={"type": "custom", "grantTypeURI": "refresh_token"}),
        "spec.grant.grantTypeURI",
        "is a standard grant type",
    ),
    case(
        "grant-uri-not-a-uri",
        with_changes(grant={"type": "custom", "grantTypeURI": "no scheme here"}),
        "spec.grant.grantTypeURI",
        "must be an absolute URI",
    ),
    case(
        "grant-token-exchange-without-block",
        with_changes(grant={"type": "token_exchange"}),
        "spec.grant.tokenExchange",
        "is required with type token_exchange",
    ),
    case(
        "grant-token-exchange-without-subject",
        with_changes(grant={"type": "token_exchange", "tokenExchange": {}}),
        "spec.grant.tokenExchange.subjectServiceAccountRef",
        "set exactly one of subjectServiceAccountRef and subjectTokenSecretRef",
    ),
    case(
        "grant-token-exchange-bad-token-type",
        with_changes(
            grant={
                "type": "token_exchange",
                "tokenExchange": {
                    "subjectServiceAccountRef": {"name": "sa", "audience": "sts"},
                    "requestedTokenType": "access_token",
                },
            }
        ),
        "spec.grant.tokenExchange.requestedTokenType",
        "must be an absolute URI",
    ),
    case(
        "grant-token-exchange-sets-subject-token",
        with_changes(
            grant={
                "type": "token_exchange",
                "tokenExchange": {"subjectServiceAccountRef": {"name": "sa", "audience": "sts"}},
            },
            extraParams={"subject_token": "x"},
        ),
        "spec.extraParams",
        "grant type token_exchange sets them",
    ),
    case(
        "grant-token-exchange-two-subjects",
        with_changes(
            grant={
                "type": "token_exchange",
                "tokenExchange": {
                    "subjectServiceAccountRef": {"name": "sa", "audience": "sts"},
                    "subjectTokenSecretRef": {"name": "source-token"},
                },
            }
        ),
        "spec.grant.tokenExchange.subjectServiceAccountRef",
        "set exactly one of subjectServiceAccountRef and subjectTokenSecretRef",
    ),
    case(
        "grant-jwt-bearer-without-key",
        with_changes(grant={"type": "jwt_bearer"}),
        "spec.privateKeyRef",
        "signs the assertion",
    ),
    case(
        "grant-refreshURL-userinfo",
        with_changes(grant={"refreshURL": "https://user:pass@login.example.com/refresh"}),
        "spec.grant.refreshURL",
        "must not contain credentials",
    ),
    case(
        "grant-refreshURL-metadata",
        with_changes(grant={"refreshURL": "http://169.254.169.254/latest"}),
        "spec.grant.refreshURL",
        "cloud metadata",
    ),
    case(
        "authMethod-none-with-client-credentials",
        with_changes(authMethod="none"),
        "spec.authMethod",
        "none is only for a grant other than client_credentials",
    ),
]


@pytest.mark.parametrize("refused", INVALID_SPECS)
def test_invalid_spec_is_refused_naming_the_field(
    refused: Refused, custom: client.CustomObjectsApi, namespace: str
) -> None:
    field, expect = refused.field, refused.expect
    body = credential(refused.name, refused.spec)
    if not refused.spec:
        del body["spec"]
    with pytest.raises(client.ApiException) as caught:
        create(custom, namespace, body)
    status = error_status(caught.value)
    # Each cause names the field it is about; the message is what kubectl prints.
    messages = [
        cause.get("message", "")
        for cause in status["details"]["causes"]
        if cause.get("field") == field
    ]
    assert messages, status["message"]
    assert any(expect in message for message in messages), status["message"]
    assert f"{field}: " in status["message"]


def test_invalid_table_is_broad() -> None:
    ids = [case.id for case in INVALID_SPECS]
    assert len(set(ids)) == len(ids) >= 30


@pytest.mark.parametrize(
    ("refresh", "assertion"),
    [
        ({"minInterval": "1s", "renewBefore": "0s", "defaultLifetime": "10s"}, "10s"),
        ({"minInterval": "87600h", "renewBefore": "87600h", "defaultLifetime": "87600h"}, "1h"),
        ({"minInterval": "0.5s500ms", "defaultLifetime": "9s1000ms"}, "1.5m"),
    ],
    ids=["lowest", "highest", "compound"],
)
def test_durations_at_their_bounds_are_admitted(
    refresh: dict[str, str], assertion: str, custom: client.CustomObjectsApi, namespace: str
) -> None:
    """The bounds are inclusive, at admission as in parsing.parse_spec."""
    spec = with_changes(refresh=refresh, clientAssertion={"lifetime": assertion})
    created = create(custom, namespace, credential("bounds", spec))
    parsing.parse_spec(created["spec"], name="bounds")  # what is admitted can be acted on


def test_sizes_at_their_bounds_are_admitted(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    """The bounds are inclusive, at admission as in parsing.parse_spec: labels and
    annotations of 16384 characters together, extra parameters likewise."""
    labels = {f"l{i:02d}": "x" * 63 for i in range(32)}
    used = sum(len(k) + len(v) for k, v in labels.items())
    annotations = {f"a{i}": "x" * 4096 for i in range(3)}
    used += sum(len(k) + len(v) for k, v in annotations.items())
    annotations["rest"] = "x" * (bounds.TARGET_METADATA_BOUND - used - len("rest"))
    params = {f"p{i}": "x" * 4096 for i in range(3)}
    params["last"] = "x" * (bounds.EXTRA_PARAMS_BOUND - 3 * (2 + 4096) - len("last"))
    spec = with_changes(
        target={"labels": labels, "annotations": annotations},
        extraParams=params,
        scopes=[f"{i:03d}" + "s" * 253 for i in range(64)],
        resources=[f"https://api.example.com/{i:02d}/" + "r" * 2021 for i in range(16)],
    )
    created = create(custom, namespace, credential("sizes", spec))
    assert is_subset(spec, created["spec"])  # nothing pruned or cut
    parsing.parse_spec(created["spec"], name="sizes")  # what is admitted can be acted on


def test_request_headers_at_their_bounds_are_admitted(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    """16 headers, names of 256 characters, values of 4096: within the CEL cost budget."""
    headers = [{"name": f"X-{i:02d}-" + "n" * 251, "value": "v" * 4096} for i in range(15)]
    secret_ref = {"name": "k" * 253, "key": "v" * 253}
    headers.append({"name": "X-Api-Key", "valueFrom": {"secretKeyRef": secret_ref}})
    spec = with_changes(
        requestHeaders=headers,
        clientSecretRef={"name": "oauth-client", "fallbackClientSecretKeys": ["old", "older"]},
    )
    created = create(custom, namespace, credential("headers", spec))
    assert is_subset(spec, created["spec"])
    parsed = parsing.parse_spec(created["spec"], name="headers")
    assert len(parsed.request_headers) == 16


def test_rollout_restart_at_its_bounds_is_admitted_and_defaulted(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    """16 targets of the three kinds, names of 253 characters, minInterval 30s; and the
    default minInterval (5m) filled in by the API server when unset."""
    kinds = ("Deployment", "StatefulSet", "DaemonSet")
    targets = [{"kind": kinds[i % 3], "name": f"{i:02d}" + "w" * 251} for i in range(16)]
    spec = with_changes(rolloutRestart={"targets": targets, "minInterval": "30s"})
    created = create(custom, namespace, credential("restarts", spec))
    assert is_subset(spec, created["spec"])
    parsed = parsing.parse_spec(created["spec"], name="restarts").rollout_restart
    assert parsed is not None
    assert len(parsed.targets) == 16
    spec = with_changes(rolloutRestart={"targets": [{"kind": "Deployment", "name": "a"}]})
    created = create(custom, namespace, credential("defaulted", spec))
    assert created["spec"]["rolloutRestart"]["minInterval"] == "5m"


def test_http_token_url_is_admitted(custom: client.CustomObjectsApi, namespace: str) -> None:
    """Plain http passes admission (for demos); the operator refuses it unless opted in."""
    spec = with_changes(tokenURL="http://localhost:8080/token")
    assert create(custom, namespace, credential("plain-http", spec))["spec"]["tokenURL"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/token",
        "http://[::1]:8080/token",
        "https://10.0.0.1/token",
        "https://192.168.1.10:8443/oauth2/token",
        "https://keycloak.auth.svc.cluster.local/realms/a/protocol/openid-connect/token",
        "https://kubernetes.default.svc/token",
        "https://[2606:4700::1]/token",
        "https://1e100.example/token",
        "https://0xcafe.example/token",
    ],
)
def test_what_only_the_admin_can_allow_is_admitted(
    url: str, custom: client.CustomObjectsApi, namespace: str
) -> None:
    """Loopback, private and cluster-internal destinations are the operator's to judge:
    its admin may allow them (--allow-private-network), and the tests do, for loopback.
    Admission refuses only what no admin can allow, and spellings that hide an address."""
    created = create(custom, namespace, credential("internal", with_changes(tokenURL=url)))
    assert created["spec"]["tokenURL"] == url


# -- (c) defaults -------------------------------------------------------------------------


def test_minimal_credential_gets_defaults(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = create(custom, namespace, credential("minimal", BASE_SPEC))
    spec = created["spec"]
    assert spec["authMethod"] == model.AuthMethod.AUTO.value
    model_defaults = model.SecretRef(name="oauth-client")
    assert spec["clientSecretRef"] == {
        "name": "oauth-client",
        "clientIDKey": model_defaults.client_id_key,
        "clientSecretKey": model_defaults.client_secret_key,
    }
    # The target name default (<metadata.name>-token) is documented, not written.
    assert "target" not in spec
    assert "refresh" not in spec
    parsed = parsing.parse_spec(spec, name="minimal")
    assert parsed.target.name == "minimal-token"


@pytest.mark.parametrize(
    "policies",
    [
        {"creationPolicy": creation, **({"deletionPolicy": deletion} if deletion else {})}
        for creation in ("Owner", "Adopt", "Merge")
        for deletion in (None, "Delete", "Retain")
        if (creation, deletion) != ("Merge", "Delete")
    ],
    ids=lambda p: "-".join(p.values()),
)
def test_target_policies_are_admitted_without_defaults(
    policies: dict[str, str], custom: client.CustomObjectsApi, namespace: str
) -> None:
    """Every combination but Merge with Delete set; no default is written, so that the CEL
    rule can tell Delete set from Delete by default (decision 0041)."""
    name = "-".join(policies.values()).lower()
    created = create(custom, namespace, credential(name, with_changes(target=policies)))
    stored = created["spec"]["target"]
    assert {k: v for k, v in stored.items() if k.endswith("Policy")} == policies
    parsed = parsing.parse_spec(created["spec"], name=name).target
    assert parsed.creation_policy.value == policies["creationPolicy"]
    assert parsed.deletion_policy.value == policies.get("deletionPolicy", "Delete")


# -- (d) names and printer columns --------------------------------------------------------

EXPECTED_COLUMNS = [
    ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', 0),
    ("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', 1),
    ("Target", "string", ".status.target", 0),
    ("Expires", "string", ".status.expiresAt", 0),
    ("Next Refresh", "string", ".status.nextRefreshAt", 0),
    ("Age", "date", ".metadata.creationTimestamp", 0),
]


def test_names_and_printer_columns(api_client: client.ApiClient, crds: None) -> None:
    crd = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    names = crd.spec.names
    assert (names.kind, names.plural, names.singular) == (
        model.KIND,
        model.PLURAL,
        "clientcredential",
    )
    assert names.short_names == ["ccred"]
    assert names.categories == ["tokensync"]
    assert crd.spec.scope == "Namespaced"
    (version,) = crd.spec.versions
    assert (version.name, version.served, version.storage) == (model.VERSION, True, True)
    assert version.subresources is not None
    assert version.subresources.status is not None
    columns = [
        (c.name, c.type, c.json_path, c.priority or 0)
        for c in version.additional_printer_columns or []
    ]
    assert columns == EXPECTED_COLUMNS


FULL_STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "TokenIssued",
            "message": "token valid until 2026-11-22T23:15:00Z",
            "lastTransitionTime": "2026-11-22T22:15:00Z",
            "observedGeneration": 1,
        }
    ],
    "expiresAt": "2026-11-22T23:15:00Z",
    "nextRefreshAt": "2026-11-22T23:10:00Z",
    "lastRefreshAt": "2026-11-22T22:15:00Z",
    "authMethod": "client_secret_basic",
    "failedAttempts": 0,
    "target": "status-demo-token",
    "handledRefreshRequest": "2026-11-22T22:14:59Z",
    "clientSecretVersion": "4711",
    "tokenType": "Bearer",
    "scope": "payments.read payments.write",
}


def patch_status(
    custom: client.CustomObjectsApi, namespace: str, name: str, status: Mapping[str, Any]
) -> dict[str, Any]:
    patched = custom.patch_namespaced_custom_object_status(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        name,
        {"status": dict(status)},
        _content_type="application/merge-patch+json",
    )
    return cast("dict[str, Any]", patched)


def test_status_round_trips_and_feeds_the_columns(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    create(custom, namespace, credential("status-demo", BASE_SPEC))
    patched = patch_status(custom, namespace, "status-demo", FULL_STATUS)
    assert patched["status"] == FULL_STATUS  # nothing the operator writes is pruned

    # The server-side table is what `kubectl get ccred -o wide` prints.
    table = cast(
        "dict[str, Any]",
        custom.list_namespaced_custom_object(
            model.GROUP, model.VERSION, namespace, model.PLURAL, _headers={"Accept": TABLE_ACCEPT}
        ),
    )
    assert table["kind"] == "Table", table.get("kind")
    headers = [c["name"] for c in table["columnDefinitions"]]
    assert headers == ["Name"] + [name for name, *_ in EXPECTED_COLUMNS]
    (row,) = table["rows"]
    cells = dict(zip(headers, row["cells"], strict=True))
    assert cells["Name"] == "status-demo"
    assert cells["Ready"] == "True"
    assert cells["Reason"] == "TokenIssued"
    assert cells["Target"] == "status-demo-token"
    # Readable times, not ages: kubectl renders a date column in the future as <invalid>,
    # and a token's expiry and next refresh always lie in the future.
    assert cells["Expires"] == "2026-11-22T23:15:00Z"
    assert cells["Next Refresh"] == "2026-11-22T23:10:00Z"
    assert cells["Age"]  # a date column: an age


def test_future_times_print_readably(custom: client.CustomObjectsApi, namespace: str) -> None:
    """What a new user saw: EXPIRES and NEXT REFRESH in the future printed as <invalid>."""
    create(custom, namespace, credential("future-demo", BASE_SPEC))
    future = {
        **FULL_STATUS,
        "expiresAt": "2099-01-01T00:00:00Z",
        "nextRefreshAt": "2098-12-31T23:55:00Z",
    }
    future["target"] = "future-demo-token"
    patch_status(custom, namespace, "future-demo", future)
    table = cast(
        "dict[str, Any]",
        custom.list_namespaced_custom_object(
            model.GROUP, model.VERSION, namespace, model.PLURAL, _headers={"Accept": TABLE_ACCEPT}
        ),
    )
    headers = [c["name"] for c in table["columnDefinitions"]]
    (row,) = [r for r in table["rows"] if r["cells"][0] == "future-demo"]
    cells = dict(zip(headers, row["cells"], strict=True))
    assert (cells["Expires"], cells["Next Refresh"]) == (
        "2099-01-01T00:00:00Z",
        "2098-12-31T23:55:00Z",
    )
    assert "<invalid>" not in row["cells"]


@pytest.mark.parametrize(
    ("status", "field"),
    [
        pytest.param(
            {"conditions": [{"type": "Ready", "status": "Maybe"}]},
            "status.conditions[0].status",
            id="condition-status-not-enum",
        ),
        pytest.param(
            {"conditions": [{"status": "True"}]},
            "status.conditions[0].type",
            id="condition-without-type",
        ),
        pytest.param({"expiresAt": "tomorrow"}, "status.expiresAt", id="expiresAt-not-a-time"),
    ],
)
def test_invalid_status_is_refused(
    status: dict[str, Any], field: str, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create(custom, namespace, credential("bad-status", BASE_SPEC))
    with pytest.raises(client.ApiException) as caught:
        patch_status(custom, namespace, "bad-status", status)
    assert field in error_status(caught.value)["message"]
