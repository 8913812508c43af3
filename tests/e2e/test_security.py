"""Security properties, proven with real identities: no confused deputy, no cross-namespace
read, token hosts restricted to an allowlist, no ServiceAccount token minted without the
workload identity opt-in.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from test_operator import Env

from localcluster import LocalCluster
from support import testenv
from support.faultserver import FaultServer
from support.operatorproc import (
    OperatorProcess,
    install_operator_identity,
    may_mint_tokens,
    operator_may,
)
from support.polling import wait_for
from support.testenv import ALLOWED_DESTINATIONS, GROUP, LOOPBACK, PLURAL
from support.tokenserver import TokenServer

STOLEN = "db-password-that-must-never-leave"


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator with a token host allowlist: only 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("operator-allowlist")
    kubeconfig = install_operator_identity(cluster, api_client, workdir / "sa.kubeconfig")
    with OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=workdir / "operator.log",
        extra_args=["--allowed-token-host=127.0.0.1"],
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def attacker() -> Iterator[FaultServer]:
    """A token endpoint 'controlled by an attacker': it records whatever it receives."""
    with FaultServer() as server:
        yield server


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    with TokenServer() as server:
        yield server


@pytest.fixture
def author(
    cluster: LocalCluster, api_client: client.ApiClient, namespace: str, tmp_path: pathlib.Path
) -> Iterator[client.ApiClient]:
    """A user who may manage ClientCredentials in the namespace but not read its Secrets."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "ccred-author"},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [PLURAL],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "ccred-author"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "ccred-author",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "author"}
            ],
        },
    )
    kubeconfig = cluster.write_kubeconfig(tmp_path / "author.kubeconfig", user="author")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


def test_confused_deputy_cannot_exfiltrate_a_secret(
    api_client: client.ApiClient,
    author: client.ApiClient,
    namespace: str,
    attacker: FaultServer,
    operator: OperatorProcess,
    token_server: TokenServer,
) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "database"},
            "stringData": {"client_id": "db", "client_secret": STOLEN},
        },
    )
    # The author really lacks Secret access...
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(author).read_namespaced_secret("database", namespace)
    assert denied.value.status == 403
    # ...but may point a ClientCredential at that Secret and at their own server.
    testenv.Env(author, namespace).create_credential(
        "exfiltrate", {"tokenURL": attacker.url, "clientSecretRef": {"name": "database"}}
    )
    env = Env(api_client, namespace, token_server)
    ready = env.wait_ready("exfiltrate", reason="ClientSecretNotOptedIn")
    assert ready["status"] == "False"
    assert not attacker.requests, "the operator sent something to the attacker's endpoint"
    assert STOLEN not in operator.log()


def test_client_secret_is_never_read_from_another_namespace(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    token_server: TokenServer,
) -> None:
    core = client.CoreV1Api(api_client)
    other = f"{namespace}-other"
    core.create_namespace({"metadata": {"name": other}})
    try:
        env_other = Env(api_client, other, token_server)
        env_other.client_secret()  # labelled and valid, but in the other namespace
        env = Env(api_client, namespace, token_server)
        # There is no namespace field: the schema prunes one if a user tries.
        created = env.credential(clientSecretRef={"name": "oauth-client", "namespace": other})
        assert "namespace" not in created["spec"]["clientSecretRef"]
        ready = env.wait_ready(reason="ClientSecretNotFound")
        assert ready["status"] == "False"
        assert not token_server.issued
    finally:
        core.delete_namespace(other)


def test_token_host_outside_the_allowlist_is_refused(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    token_server: TokenServer,
) -> None:
    env = Env(api_client, namespace, token_server)
    env.client_secret()
    allowed = env.credential("allowed")
    assert allowed["spec"]["tokenURL"].startswith("http://127.0.0.1:")
    wait_for(lambda: env.token("allowed-token"), what="a token from the allowed host")
    refused_url = token_server.url.replace("127.0.0.1", "localhost")
    env.credential("refused", tokenURL=refused_url)
    ready = env.wait_ready("refused", reason="TokenURLRefused")
    assert "localhost" in ready["message"]
    assert len(token_server.issued) == 1  # only the allowed credential's token


def test_a_labelled_secret_goes_only_where_its_owner_allowed(
    api_client: client.ApiClient,
    author: client.ApiClient,
    namespace: str,
    attacker: FaultServer,
    operator: OperatorProcess,
    token_server: TokenServer,
) -> None:
    """Issue 14 section 1: the opt-in label says a Secret may be used, its annotation says
    where. A user who may create ClientCredentials but not read Secrets points one at a
    labelled Secret and at their own endpoint: refused, and not one byte reaches it."""
    env = Env(api_client, namespace, token_server)
    env.secret(
        "oauth-client",
        {"client_id": env.client_id, "client_secret": STOLEN},
        destinations=token_server.url,  # exactly the provider's token URL
    )
    token_server.set_secret(env.client_id, STOLEN)
    spec = {"tokenURL": attacker.url, "clientSecretRef": {"name": "oauth-client"}}
    for name, method in (("post", "client_secret_post"), ("basic", "client_secret_basic")):
        testenv.Env(author, namespace).create_credential(name, {**spec, "authMethod": method})
        ready = env.wait_ready(name, reason="DestinationNotAllowed")
        assert ready["status"] == "False"
        assert "nothing was sent" in ready["message"]
    # The owner's destination works with the same Secret.
    env.credential("allowed", clientSecretRef={"name": "oauth-client"})
    wait_for(lambda: env.token("allowed-token"), what="a token from the allowed endpoint")
    assert not attacker.requests, "the operator sent something to the attacker's endpoint"
    assert STOLEN not in operator.log()


def test_a_secret_without_destinations_is_not_used(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    token_server: TokenServer,
) -> None:
    """A labelled Secret from before the annotation existed: refused, with the fix named."""
    env = Env(api_client, namespace, token_server)
    env.secret(
        "oauth-client",
        {"client_id": env.client_id, "client_secret": "s3cret"},
        destinations=None,
    )
    env.credential(clientSecretRef={"name": "oauth-client"})
    ready = env.wait_ready(reason="DestinationNotAllowed")
    assert "tokensync.dev/allowed-destinations" in ready["message"]
    assert not token_server.issued


# -- least privilege: no ServiceAccount tokens by default (issue 14, section 8) ----------


def test_default_install_cannot_mint_service_account_tokens(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    """The identity every e2e operator runs under (deploy/base/rbac.yaml) may neither read
    ServiceAccounts nor mint their tokens, anywhere: a compromised operator pod cannot act
    as a kube-system controller. The grant is the workload identity opt-in."""
    for where in (namespace, "kube-system", ""):
        assert not operator_may(api_client, "get", "serviceaccounts", namespace=where)
        assert not operator_may(
            api_client, "create", "serviceaccounts", subresource="token", namespace=where
        )
        assert not may_mint_tokens(api_client, where)
    # The control: the same review says yes to what the default role does grant.
    assert operator_may(api_client, "watch", "secrets", namespace="kube-system")
    # and the operator's real credentials are refused by the API server.
    own = config.new_client_from_config(config_file=str(operator.kubeconfig))
    try:
        with pytest.raises(client.ApiException) as refused:
            client.CoreV1Api(own).create_namespaced_service_account_token(
                "namespace-controller", "kube-system", {"spec": {"expirationSeconds": 600}}
            )
        assert refused.value.status == 403
    finally:
        own.close()


def test_a_tenant_cannot_have_the_default_operator_mint_a_token(
    api_client: client.ApiClient,
    author: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    token_server: TokenServer,
) -> None:
    """Even a ServiceAccount that opted in gets no token minted without the opt-in grant:
    Ready=False ServiceAccountTokenForbidden, with the way to grant it, and nothing sent."""
    audience = "api://tokensync-test-exchange"
    client.CoreV1Api(api_client).create_namespaced_service_account(
        namespace,
        {
            "metadata": {
                "name": "billing",
                "annotations": {
                    "tokensync.dev/token-audiences": audience,
                    ALLOWED_DESTINATIONS: LOOPBACK,
                },
            }
        },
    )
    testenv.Env(author, namespace).create_credential(
        "federated",
        {
            "tokenURL": token_server.url,
            "clientID": "federated",
            "serviceAccountRef": {"name": "billing", "audience": audience},
        },
    )
    env = Env(api_client, namespace, token_server)
    ready = env.wait_ready("federated", reason="ServiceAccountTokenForbidden")
    assert ready["status"] == "False"
    assert "workload identity" in ready["message"].lower()
    assert token_server.requests == 0
