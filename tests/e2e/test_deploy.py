"""deploy/ installs cleanly on a real API server, meets Pod Security "restricted", and
gives the operator exactly the rights it needs: enough for a full credential cycle, and
nothing more.

Every install here is rendered with ``kubectl kustomize`` and applied with ``kubectl apply
--server-side``, the commands docs/install.md gives. No kubelet or scheduler runs here, so
the Deployment is never started; the operator runs as a process under the Deployment's
ServiceAccount, with the Deployment's own arguments.
"""

from __future__ import annotations

import copy
import itertools
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import promql_parser
import pytest
from kubernetes import client, config

from localcluster import LocalCluster
from support import manifests
from support.manifests import (
    COMPONENTS,
    OPERATOR_NAMESPACE,
    OVERLAYS,
    ROLLOUT_RESTART,
    WORKLOAD_IDENTITY,
    Kubectl,
)
from support.operatorproc import (
    OperatorProcess,
    service_account_kubeconfig,
    workload_identity_granted,
)
from support.polling import wait_for
from support.tokenserver import TokenServer
from tokensync import cli, model

pytestmark = pytest.mark.e2e

MONITORING_CRDS = pathlib.Path(__file__).parent / "data" / "monitoring-crds.yaml"
RESTRICTED = "pod-security.kubernetes.io/enforce"
#: The Role (and RoleBinding) for leader election's Leases, in the operator's namespace.
LEASE_ROLE = "tokensync-leader-election"
#: The verbs leader election needs on Leases (deploy/base/rbac.yaml says why): no watch, no patch.
LEASE_VERBS = ("get", "list", "create", "update", "delete")
#: How long this module waits for the API server or the operator (longer than the default).
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster) -> Kubectl:
    return Kubectl(cluster)


@pytest.fixture(scope="module")
def monitoring_crds(kubectl: Kubectl) -> None:
    """ServiceMonitor and PrometheusRule kinds, so that those components can be applied."""
    kubectl.apply(MONITORING_CRDS.read_text(), field_manager="tokensync-tests")
    kubectl.run(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    )


def render(
    workdir: pathlib.Path,
    kubectl: Kubectl,
    overlay: str,
    components: tuple[str, ...] = (),
    watch_namespace: str | None = None,
) -> str:
    directory = manifests.kustomization(
        workdir, overlay=overlay, components=components, watch_namespace=watch_namespace
    )
    return kubectl.kustomize(directory)


def new_namespace(core: client.CoreV1Api, *, labels: dict[str, str] | None = None) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    return name


# -- install ------------------------------------------------------------------------------


@pytest.mark.parametrize("components", [(), COMPONENTS], ids=["plain", "with-components"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_applies_with_server_side_apply(
    *,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    monitoring_crds: None,
    namespace: str,
    tmp_path: pathlib.Path,
    overlay: str,
    components: tuple[str, ...],
) -> None:
    watch = namespace if overlay == "single-namespace" else None
    rendered = render(tmp_path, kubectl, overlay, components, watch_namespace=watch)
    docs = manifests.documents(rendered)
    kubectl.apply(rendered)

    # Everything rendered is there, as rendered.
    listed = manifests.documents(kubectl.run("get", "-f", "-", "-o", "yaml", stdin=rendered).stdout)
    items = listed[0]["items"] if listed[0]["kind"] == "List" else listed
    assert [(d["kind"], d["metadata"]["name"]) for d in items] == [
        (d["kind"], d["metadata"]["name"]) for d in docs
    ]
    # A second apply changes nothing: the manifests are what the server stores (no
    # defaults fought over, no fields another manager owns).
    diff = kubectl.run(
        "diff",
        "--server-side",
        "--force-conflicts",
        "--field-manager=tokensync-install",
        "-f",
        "-",
        stdin=rendered,
        check=False,
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr

    kinds = {d["kind"] for d in docs}
    assert {
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    } <= kinds
    assert ({"ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds) == bool(components)
    # The Leases' Role stays in the operator's namespace, whichever namespaces are watched.
    for kind in ("Role", "RoleBinding"):
        lease_grant = manifests.find(docs, kind, LEASE_ROLE)
        assert lease_grant["metadata"]["namespace"] == OPERATOR_NAMESPACE
    if overlay == "single-namespace":
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
        assert manifests.find(docs, "Role", "tokensync")["metadata"]["namespace"] == namespace
        assert (
            manifests.find(docs, "RoleBinding", "tokensync")["metadata"]["namespace"] == namespace
        )
        assert f"--namespace={namespace}" in manifests.container(docs)["args"]
    else:
        assert {"ClusterRole", "ClusterRoleBinding"} <= kinds
        assert not any(a.startswith("--namespace") for a in manifests.container(docs)["args"])


def test_base_rbac_is_the_file_the_operator_tests_run_under(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """tests/support/operatorproc.py applies deploy/base/rbac.yaml; the install ships it."""
    docs = manifests.documents(render(tmp_path, kubectl, "cluster-wide"))
    shipped = manifests.documents((manifests.DEPLOY / "base" / "rbac.yaml").read_text())
    for doc in shipped:
        installed = manifests.find(docs, doc["kind"], doc["metadata"]["name"])
        for key in ("rules", "roleRef", "subjects"):
            assert installed.get(key) == doc.get(key)


def test_single_namespace_role_has_the_cluster_role_rules(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cluster_wide = manifests.documents(render(tmp_path / "a", kubectl, "cluster-wide"))
    single = manifests.documents(render(tmp_path / "b", kubectl, "single-namespace"))
    assert (
        manifests.find(single, "Role", "tokensync")["rules"]
        == manifests.find(cluster_wide, "ClusterRole")["rules"]
    )
    binding = manifests.find(single, "RoleBinding", "tokensync")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "tokensync",
    }
    assert binding["subjects"] == manifests.find(cluster_wide, "ClusterRoleBinding")["subjects"]


# -- the Deployment -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_arguments_are_flags_of_tokensync_run(
    kubectl: Kubectl, tmp_path: pathlib.Path, overlay: str
) -> None:
    docs = manifests.documents(render(tmp_path, kubectl, overlay))
    spec = manifests.container(docs)
    parsed = cli._parser().parse_args(["run", *spec["args"]])
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {
        "metrics": parsed.metrics_port,
        "health": parsed.health_port,
        "refresh": parsed.refresh_port,
    }
    assert parsed.metrics_port == 8080
    assert parsed.health_port == 8081
    assert parsed.refresh_port == 8082
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = manifests.find(docs, "Service", "tokensync-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    refresh = manifests.find(docs, "Service", "tokensync-refresh")
    assert refresh["spec"]["ports"][0]["targetPort"] == "refresh"
    pod_labels = manifests.find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_is_two_replicas_with_leader_election_and_a_disruption_budget(
    kubectl: Kubectl, tmp_path: pathlib.Path, overlay: str
) -> None:
    """The HA shape (issue 18): two replicas, one leader and one warm standby; a rollout
    starts a new pod before it stops an old one; a drain evicts one pod at a time."""
    docs = manifests.documents(render(tmp_path, kubectl, overlay))
    deployment = manifests.find(docs, "Deployment", "tokensync")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod["serviceAccountName"] == "tokensync"
    # Room for the graceful hand-over: the Lease is released on SIGTERM, well within it.
    assert pod["terminationGracePeriodSeconds"] >= 30

    budget = manifests.find(docs, "PodDisruptionBudget", "tokensync")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # Preferred, not required: a one-node cluster still runs both replicas.
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()

    spec = manifests.container(docs)
    assert "--leader-elect" in spec["args"]
    # The operator's defaults: Leases in its own namespace, named tokensync-*, one shard.
    assert not [a for a in spec["args"] if a.startswith(("--lease-", "--shards", "--identity"))]
    downward = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in spec["env"] if "valueFrom" in e
    }
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}

    assert spec["image"] == "ghcr.io/tokensync/tokensync:0.1.0"
    assert set(spec["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(spec["resources"]["requests"])
    assert "memory" in spec["resources"]["limits"]
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_leader_election_alerts(kubectl: Kubectl, tmp_path: pathlib.Path) -> None:
    """The alerts on leader election, as the prometheusrule component ships them (the Helm
    chart renders the same rules: test_helm.py). tests/unit/test_observability.py checks
    every alert's metrics against the operator's registry; this pins what these two mean:
    PromQL compared after parsing, so that layout does not matter."""
    docs = manifests.documents(render(tmp_path, kubectl, "cluster-wide", ("prometheusrule",)))
    rules = {
        rule["alert"]: rule
        for group in manifests.find(docs, "PrometheusRule", "tokensync")["spec"]["groups"]
        for rule in group["rules"]
    }

    def same(expr: str, expected: str) -> bool:
        return str(promql_parser.parse(expr)) == str(promql_parser.parse(expected))

    unserved = rules["TokensyncShardsUnserved"]
    # Some credentials have no replica refreshing them: fewer shards held than configured.
    assert same(
        unserved["expr"],
        "sum by (namespace) (tokensync_shards_held) < max by (namespace) (tokensync_shards)",
    )
    assert unserved["for"] == "2m"
    assert unserved["labels"]["severity"] == "critical"
    flapping = rules["TokensyncLeadershipFlapping"]
    assert same(
        flapping["expr"],
        'increase(tokensync_leadership_transitions_total{change="lost"}[15m]) > 3',
    )
    assert flapping["labels"]["severity"] == "warning"
    for rule in (unserved, flapping):
        assert rule["annotations"]["summary"]
        assert "docs/operations.md" in rule["annotations"]["description"]


def test_network_policy_allows_only_what_the_operator_needs(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    docs = manifests.documents(render(tmp_path, kubectl, "cluster-wide", ("networkpolicy",)))
    deny = manifests.find(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    allow = manifests.find(docs, "NetworkPolicy", "tokensync")["spec"]
    pod_labels = manifests.find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert allow["podSelector"]["matchLabels"].items() <= pod_labels.items()
    egress = {
        (port["protocol"], port["port"]) for rule in allow["egress"] for port in rule["ports"]
    }
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443)}
    ingress = [port for rule in allow["ingress"] for port in rule["ports"]]
    assert ingress == [
        {"port": "metrics", "protocol": "TCP"},
        {"port": "refresh", "protocol": "TCP"},  # decision 0043
    ]
    # The refresh endpoint from pods in the cluster only; metrics from anywhere, as before.
    assert [rule.get("from") for rule in allow["ingress"]] == [None, [{"namespaceSelector": {}}]]


# -- Pod Security -------------------------------------------------------------------------


def pod_from_template(docs: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    template = copy.deepcopy(manifests.find(docs, "Deployment", "tokensync")["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tokensync-pss-check", "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }


def test_pod_template_is_admitted_under_pod_security_restricted(
    kubectl: Kubectl, api_client: client.ApiClient, tmp_path: pathlib.Path
) -> None:
    core = client.CoreV1Api(api_client)
    restricted = new_namespace(core, labels={RESTRICTED: "restricted"})
    try:
        docs = manifests.documents(render(tmp_path, kubectl, "cluster-wide"))
        assert (
            manifests.find(docs, "Namespace", OPERATOR_NAMESPACE)["metadata"]["labels"][RESTRICTED]
            == "restricted"
        )
        pod = pod_from_template(docs, restricted)
        core.create_namespaced_pod(restricted, pod, dry_run="All")

        # The control: the same pod without its security settings is refused, so the
        # admission plugin really is judging these pods.
        loose = copy.deepcopy(pod)
        del loose["spec"]["securityContext"]
        del loose["spec"]["containers"][0]["securityContext"]
        with pytest.raises(client.ApiException) as refused:
            core.create_namespaced_pod(restricted, loose, dry_run="All")
        assert refused.value.status == 403
        assert "violates PodSecurity" in refused.value.body
    finally:
        core.delete_namespace(restricted)


# -- what the ServiceAccount may and may not do ---------------------------------------


@pytest.fixture(scope="module")
def installed_cluster_wide(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    kubectl: Kubectl,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> pathlib.Path:
    """The cluster-wide install, applied; returns a kubeconfig of its ServiceAccount."""
    workdir = tmp_path_factory.mktemp("cluster-wide")
    kubectl.apply(render(workdir / "tree", kubectl, "cluster-wide"))
    return service_account_kubeconfig(cluster, api_client, workdir / "sa.kubeconfig")


@pytest.fixture
def sa_client(installed_cluster_wide: pathlib.Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(installed_cluster_wide))
    yield api
    api.close()


def status_code(call: Callable[[], object]) -> int:
    try:
        call()
    except client.ApiException as exc:
        return int(exc.status)
    return 200


def test_service_account_is_denied_what_it_does_not_need(
    api_client: client.ApiClient, sa_client: client.ApiClient, namespace: str
) -> None:
    admin_core, admin_custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    admin_core.create_namespaced_secret(
        namespace, {"metadata": {"name": "some-secret"}, "stringData": {"k": "v"}}
    )
    admin_core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "some-config"}, "data": {"k": "v"}}
    )
    admin_core.create_namespaced_service_account(namespace, {"metadata": {"name": "app"}})
    body = {
        "apiVersion": f"{model.GROUP}/{model.VERSION}",
        "kind": model.KIND,
        "metadata": {"name": "api"},
        "spec": {"tokenURL": "https://login.example.com/t", "clientSecretRef": {"name": "c"}},
    }
    admin_custom.create_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, body
    )
    core, custom = client.CoreV1Api(sa_client), client.CustomObjectsApi(sa_client)
    apps = client.AppsV1Api(sa_client)
    leases = client.CoordinationV1Api(sa_client)
    crd_args = (model.GROUP, model.VERSION, namespace, model.PLURAL)

    # What it needs works: the identity is real, and the denials below are RBAC's.
    allowed = {
        "get a Secret": lambda: core.read_namespaced_secret("some-secret", namespace),
        "get a ConfigMap by name (CA bundles)": lambda: core.read_namespaced_config_map(
            "some-config", namespace
        ),
        "list ClientCredentials": lambda: custom.list_namespaced_custom_object(*crd_args),
        "patch ClientCredential status": lambda: custom.patch_namespaced_custom_object_status(
            *crd_args, "api", {"status": {"failedAttempts": 0}}
        ),
        "create an Event": lambda: core.create_namespaced_event(
            namespace,
            {
                "metadata": {"generateName": "api."},
                "involvedObject": {"kind": model.KIND, "name": "api", "namespace": namespace},
                "reason": "Test",
                "message": "allowed",
                "type": "Normal",
            },
        ),
    }
    for what, call in allowed.items():
        assert status_code(call) in {200, 201}, f"the operator must be allowed to {what}"

    denied = {
        "delete a Secret": lambda: core.delete_namespaced_secret("some-secret", namespace),
        "update (replace) a Secret": lambda: core.replace_namespaced_secret(
            "some-secret", namespace, core.read_namespaced_secret("some-secret", namespace)
        ),
        "list ConfigMaps": lambda: core.list_namespaced_config_map(namespace),
        "watch ConfigMaps in every namespace": lambda: core.list_config_map_for_all_namespaces(
            watch=True, timeout_seconds=1
        ),
        "change a ConfigMap": lambda: core.patch_namespaced_config_map(
            "some-config", namespace, {"data": {"k": "changed"}}
        ),
        "patch a ClientCredential's spec": lambda: custom.patch_namespaced_custom_object(
            *crd_args, "api", {"spec": {"tokenURL": "https://evil.example.com/t"}}
        ),
        "create a ClientCredential": lambda: custom.create_namespaced_custom_object(
            *crd_args, {**body, "metadata": {"name": "other"}}
        ),
        "delete a ClientCredential": lambda: custom.delete_namespaced_custom_object(
            *crd_args, "api"
        ),
        "list Namespaces": core.list_namespace,
        "list Pods": lambda: core.list_namespaced_pod(namespace),
        "create a Pod": lambda: core.create_namespaced_pod(
            namespace,
            {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
        ),
        # Workload identity federation is an opt-in (deploy/components/workload-identity).
        "get a ServiceAccount": lambda: core.read_namespaced_service_account("app", namespace),
        "create a ServiceAccount token": lambda: core.create_namespaced_service_account_token(
            "app", namespace, {"spec": {"audiences": ["x"], "expirationSeconds": 600}}
        ),
        "create a token for a kube-system controller": lambda: (
            core.create_namespaced_service_account_token(
                "namespace-controller", "kube-system", {"spec": {"expirationSeconds": 600}}
            )
        ),
        "list ServiceAccounts": lambda: core.list_namespaced_service_account(namespace),
        "change a ServiceAccount (e.g. its opt-in)": lambda: core.patch_namespaced_service_account(
            "app", namespace, {"metadata": {"annotations": {"a": "b"}}}
        ),
        "change its own Deployment": lambda: apps.patch_namespaced_deployment(
            "tokensync", OPERATOR_NAMESPACE, {"spec": {"replicas": 2}}
        ),
        # Restarting workloads is an opt-in (deploy/components/rollout-restart).
        "get a Deployment": lambda: apps.read_namespaced_deployment("app", namespace),
        "restart a Deployment": lambda: apps.patch_namespaced_deployment(
            "app", namespace, {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}}
        ),
        "restart a StatefulSet": lambda: apps.patch_namespaced_stateful_set(
            "app", namespace, {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}}
        ),
        "restart a DaemonSet": lambda: apps.patch_namespaced_daemon_set(
            "app", namespace, {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}}
        ),
        "read CRDs": lambda: client.ApiextensionsV1Api(sa_client).list_custom_resource_definition(),
        # Leases only in its own namespace (leader election), and never watched or patched.
        "create a Lease in a watched namespace": lambda: leases.create_namespaced_lease(
            namespace, lease_body("tokensync-shard-0")
        ),
        "list Leases in every namespace": leases.list_lease_for_all_namespaces,
        "take over a kube-system Lease": lambda: leases.replace_namespaced_lease(
            "kube-controller-manager", "kube-system", lease_body("kube-controller-manager")
        ),
        "watch Leases in its own namespace": lambda: leases.list_namespaced_lease(
            OPERATOR_NAMESPACE, watch=True, timeout_seconds=1
        ),
        "patch a Lease in its own namespace": lambda: leases.patch_namespaced_lease(
            "tokensync-shard-0", OPERATOR_NAMESPACE, {"spec": {"holderIdentity": "x"}}
        ),
    }
    codes = {what: status_code(call) for what, call in denied.items()}
    assert codes == dict.fromkeys(denied, 403)
    # and nothing was changed by the attempts
    assert admin_core.read_namespaced_secret("some-secret", namespace).data == {"k": "dg=="}
    assert admin_core.read_namespaced_config_map("some-config", namespace).data == {"k": "v"}
    spec = admin_custom.get_namespaced_custom_object(*crd_args, "api")["spec"]
    assert spec["tokenURL"] == "https://login.example.com/t"


def lease_body(name: str, holder: str = "test") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"holderIdentity": holder}}


def operator_can(kubectl: Kubectl, verb: str, resource: str, namespace: str) -> bool:
    """What the authorizer answers for the operator's ServiceAccount, as ``kubectl auth
    can-i --as`` asks it (``namespace`` "": in every namespace). Unlike
    support.operatorproc.operator_may, it names the resource with its API group, which
    Leases need (``leases.coordination.k8s.io``)."""
    where = [f"--namespace={namespace}"] if namespace else ["--all-namespaces"]
    account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:tokensync"
    result = kubectl.run("auth", "can-i", verb, resource, f"--as={account}", *where, check=False)
    return result.stdout.strip() == "yes"


def test_service_account_may_use_leases_in_its_own_namespace_only(
    kubectl: Kubectl, sa_client: client.ApiClient, namespace: str
) -> None:
    """Leader election's rights (deploy/base/rbac.yaml, Role tokensync-leader-election):
    get, list, create, update and delete Leases in tokensync-system, as the authorizer
    answers and as the calls go; no other verb there, and nothing on Leases anywhere else."""
    leases_resource = "leases.coordination.k8s.io"
    for verb in LEASE_VERBS:
        assert operator_can(kubectl, verb, leases_resource, OPERATOR_NAMESPACE), verb
    for verb in ("watch", "patch", "deletecollection"):
        assert not operator_can(kubectl, verb, leases_resource, OPERATOR_NAMESPACE), verb
    for elsewhere in (namespace, "kube-system", "kube-node-lease", ""):
        for verb in (*LEASE_VERBS, "watch"):
            assert not operator_can(kubectl, verb, leases_resource, elsewhere), (verb, elsewhere)
    # The control: the same question about a right it has elsewhere answers yes.
    assert operator_can(kubectl, "list", "secrets", namespace)

    # The calls themselves, as the operator makes them.
    leases = client.CoordinationV1Api(sa_client)
    name = f"tokensync-test-{uuid.uuid4().hex[:8]}"
    created = leases.create_namespaced_lease(OPERATOR_NAMESPACE, lease_body(name, "a"))
    try:
        assert leases.read_namespaced_lease(name, OPERATOR_NAMESPACE).spec.holder_identity == "a"
        listed = leases.list_namespaced_lease(OPERATOR_NAMESPACE).items
        assert name in {lease.metadata.name for lease in listed}
        created.spec.holder_identity = "b"
        replaced = leases.replace_namespaced_lease(name, OPERATOR_NAMESPACE, created)
        assert replaced.spec.holder_identity == "b"
        # An update against an old resourceVersion is refused: two replicas cannot both
        # take a Lease they read at the same version.
        created.spec.holder_identity = "c"
        assert (
            status_code(lambda: leases.replace_namespaced_lease(name, OPERATOR_NAMESPACE, created))
            == 409
        )
    finally:
        leases.delete_namespaced_lease(name, OPERATOR_NAMESPACE)
    assert status_code(lambda: leases.read_namespaced_lease(name, OPERATOR_NAMESPACE)) == 404
    assert status_code(lambda: leases.create_namespaced_lease(namespace, lease_body(name))) == 403


def test_workload_identity_component_adds_exactly_service_account_tokens(
    api_client: client.ApiClient,
    sa_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    """deploy/components/workload-identity, applied over the cluster-wide install: the
    ServiceAccount may read a ServiceAccount by name and mint its token, and nothing more on
    ServiceAccounts; removing the component takes both away again."""
    admin_core = client.CoreV1Api(api_client)
    admin_core.create_namespaced_service_account(namespace, {"metadata": {"name": "app"}})
    rendered = manifests.documents(
        render(tmp_path, kubectl, "cluster-wide", (WORKLOAD_IDENTITY["cluster-wide"],))
    )
    grant = [d for d in rendered if d["metadata"]["name"] == "tokensync-workload-identity"]
    assert sorted(d["kind"] for d in grant) == ["ClusterRole", "ClusterRoleBinding"]
    core = client.CoreV1Api(sa_client)

    def mint() -> object:
        return core.create_namespaced_service_account_token(
            "app", namespace, {"spec": {"audiences": ["x"], "expirationSeconds": 600}}
        )

    with workload_identity_granted(api_client, grant, namespace=namespace):
        assert status_code(lambda: core.read_namespaced_service_account("app", namespace)) == 200
        assert status_code(mint) == 200
        still_denied = {
            "list ServiceAccounts": lambda: core.list_namespaced_service_account(namespace),
            "change a ServiceAccount": lambda: core.patch_namespaced_service_account(
                "app", namespace, {"metadata": {"annotations": {"a": "b"}}}
            ),
            "delete a ServiceAccount": lambda: core.delete_namespaced_service_account(
                "app", namespace
            ),
        }
        codes = {what: status_code(call) for what, call in still_denied.items()}
        assert codes == dict.fromkeys(still_denied, 403)
    assert status_code(mint) == 403


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_install_grants_nothing_on_service_accounts(
    kubectl: Kubectl, tmp_path: pathlib.Path, overlay: str
) -> None:
    """Rendered as docs/install.md says, with every optional component but the workload
    identity one: no rule names ServiceAccounts or their tokens (issue 14, section 8)."""
    docs = manifests.documents(render(tmp_path, kubectl, overlay, COMPONENTS))
    roles = [d for d in docs if d["kind"] in {"ClusterRole", "Role"}]
    assert roles
    granted = {r for role in roles for rule in role["rules"] for r in rule["resources"]}
    assert not granted & {"serviceaccounts", "serviceaccounts/token", "*"}


def test_workload_identity_components_grant_the_same_rules(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """The namespaced component repeats the cluster-wide one's rules in a Role beside the
    single-namespace overlay's, and refuses to render without that Role."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    cluster_wide = manifests.documents(
        render(tmp_path / "a", kubectl, "cluster-wide", (WORKLOAD_IDENTITY["cluster-wide"],))
    )
    single = manifests.documents(
        render(
            tmp_path / "b",
            kubectl,
            "single-namespace",
            (WORKLOAD_IDENTITY["single-namespace"],),
            watch_namespace="payments",
        )
    )
    name = "tokensync-workload-identity"
    rules = manifests.find(cluster_wide, "ClusterRole", name)["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
    ]
    role, binding = (
        manifests.find(single, "Role", name),
        manifests.find(single, "RoleBinding", name),
    )
    assert role["rules"] == rules
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "payments"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    assert (
        binding["subjects"] == manifests.find(cluster_wide, "ClusterRoleBinding", name)["subjects"]
    )
    assert not {d["kind"] for d in single} & {"ClusterRole", "ClusterRoleBinding"}
    directory = manifests.kustomization(
        tmp_path / "c", overlay="cluster-wide", components=[WORKLOAD_IDENTITY["single-namespace"]]
    )
    refused = kubectl.run("kustomize", str(directory), check=False)
    assert refused.returncode != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_install_grants_nothing_on_workloads(
    kubectl: Kubectl, tmp_path: pathlib.Path, overlay: str
) -> None:
    """Without the rollout-restart component no rule names apps workloads (decision 0042)."""
    docs = manifests.documents(render(tmp_path, kubectl, overlay, COMPONENTS))
    roles = [d for d in docs if d["kind"] in {"ClusterRole", "Role"}]
    assert roles
    for rule in (rule for role in roles for rule in role["rules"]):
        assert not {"apps", "*"} & set(rule.get("apiGroups", [])), rule


def test_rollout_restart_components_grant_get_and_patch_on_workloads_only(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """deploy/components/rollout-restart: get and patch on the three workload kinds, no
    more; the namespaced component repeats the rules in a Role beside the single-namespace
    overlay's, and nothing cluster-wide."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cluster_wide = manifests.documents(
        render(tmp_path / "a", kubectl, "cluster-wide", (ROLLOUT_RESTART["cluster-wide"],))
    )
    single = manifests.documents(
        render(
            tmp_path / "b",
            kubectl,
            "single-namespace",
            (ROLLOUT_RESTART["single-namespace"],),
            watch_namespace="payments",
        )
    )
    name = "tokensync-rollout-restart"
    rules = manifests.find(cluster_wide, "ClusterRole", name)["rules"]
    assert rules == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments", "statefulsets", "daemonsets"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = manifests.find(cluster_wide, "ClusterRoleBinding", name)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": OPERATOR_NAMESPACE}
    ]
    role, role_binding = (
        manifests.find(single, "Role", name),
        manifests.find(single, "RoleBinding", name),
    )
    assert role["rules"] == rules
    assert role["metadata"]["namespace"] == role_binding["metadata"]["namespace"] == "payments"
    assert role_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    assert role_binding["subjects"] == binding["subjects"]
    assert not {d["kind"] for d in single} & {"ClusterRole", "ClusterRoleBinding"}


# -- single-namespace install, run under its own identity ------------------------------


def test_single_namespace_install_runs_the_operator_in_its_namespace_only(
    *,
    cluster: LocalCluster,
    api_client: client.ApiClient,
    kubectl: Kubectl,
    crds: None,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    """The Role is enough for a full credential cycle, and gives nothing outside it; the
    leader election Role in the operator's namespace is enough for the Leases.

    Other tests install the cluster-wide ClusterRoleBinding for tokensync-system/tokensync,
    so this install's operator namespace is renamed: its ServiceAccount then holds only
    what the single-namespace overlay grants. The operator runs with the Deployment's
    arguments (``--leader-elect`` included) and the environment its downward API gives a
    pod (POD_NAME, POD_NAMESPACE).
    """
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    operator_ns = f"tsn-{uuid.uuid4().hex[:8]}"
    rendered = render(tmp_path / "tree", kubectl, "single-namespace", watch_namespace=namespace)
    rendered = rendered.replace(OPERATOR_NAMESPACE, operator_ns)
    kubectl.apply(rendered)
    other = new_namespace(core)
    try:
        args = [
            arg
            for arg in manifests.container(manifests.documents(rendered))["args"]
            if not arg.startswith(("--metrics-port", "--health-port", "--refresh-port"))
        ]
        assert args == ["--leader-elect", f"--namespace={namespace}"]
        pod_name = "tokensync-5d8f7c9b4-x2x7q"
        pod_env = {"POD_NAME": pod_name, "POD_NAMESPACE": operator_ns}
        kubeconfig = service_account_kubeconfig(
            cluster, api_client, tmp_path / "sa.kubeconfig", namespace=operator_ns
        )
        with TokenServer(lifetime=3600) as server:
            server.add_client("single-ns-client", "single-ns-secret")
            for ns in (namespace, other):
                core.create_namespaced_secret(
                    ns,
                    {
                        "metadata": {
                            "name": "oauth-client",
                            "labels": {model.CLIENT_SECRET_LABEL: "true"},
                            "annotations": {model.ALLOWED_DESTINATIONS_ANNOTATION: server.url},
                        },
                        "stringData": {
                            "client_id": "single-ns-client",
                            "client_secret": "single-ns-secret",
                        },
                    },
                )
                custom.create_namespaced_custom_object(
                    model.GROUP,
                    model.VERSION,
                    ns,
                    model.PLURAL,
                    {
                        "apiVersion": f"{model.GROUP}/{model.VERSION}",
                        "kind": model.KIND,
                        "metadata": {"name": "api"},
                        "spec": {
                            "tokenURL": server.url,
                            "clientSecretRef": {"name": "oauth-client"},
                        },
                    },
                )
            with OperatorProcess(
                kubeconfig=kubeconfig,
                log_path=tmp_path / "operator.log",
                extra_args=args,
                env=pod_env,
            ) as operator:

                def ready(ns: str) -> bool:
                    obj = custom.get_namespaced_custom_object(
                        model.GROUP, model.VERSION, ns, model.PLURAL, "api"
                    )
                    conditions = (obj.get("status") or {}).get("conditions") or []
                    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

                wait_for(
                    lambda: ready(namespace), timeout=TIMEOUT, what="Ready in the watched namespace"
                )
                token = core.read_namespaced_secret("api-token", namespace).data["access_token"]
                assert token
                # The other namespace is neither watched nor reachable.
                time.sleep(2)
                other_cred = custom.get_namespaced_custom_object(
                    model.GROUP, model.VERSION, other, model.PLURAL, "api"
                )
                assert "status" not in other_cred
                assert status_code(lambda: core.read_namespaced_secret("api-token", other)) == 404
                # It served the credential as the holder of the one shard's Lease, which
                # lives in the operator's namespace, not in the watched one.
                coordination = client.CoordinationV1Api(api_client)
                shard = coordination.read_namespaced_lease("tokensync-shard-0", operator_ns)
                assert shard.spec.holder_identity.startswith(pod_name)
                assert not coordination.list_namespaced_lease(namespace).items
                assert "Forbidden" not in operator.log()
            with config.new_client_from_config(config_file=str(kubeconfig)) as sa:
                sa_core = client.CoreV1Api(sa)
                assert status_code(lambda: sa_core.list_namespaced_secret(namespace)) == 200
                assert status_code(lambda: sa_core.list_namespaced_secret(other)) == 403
                assert status_code(sa_core.list_secret_for_all_namespaces) == 403
                assert (
                    status_code(
                        lambda: client.CustomObjectsApi(sa).list_cluster_custom_object(
                            model.GROUP, model.VERSION, model.PLURAL
                        )
                    )
                    == 403
                )
    finally:
        core.delete_namespace(other)
        core.delete_namespace(operator_ns)


def test_every_overlay_and_component_combination_renders(
    kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """Components are independent: any subset works with either overlay."""
    for index, (overlay, count) in enumerate(
        itertools.product(OVERLAYS, range(len(COMPONENTS) + 1))
    ):
        for subset in itertools.combinations(COMPONENTS, count):
            workdir = tmp_path / f"{index}-{'-'.join(subset) or 'none'}"
            workdir.mkdir()
            docs = manifests.documents(render(workdir, kubectl, overlay, subset))
            names = [
                (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs
            ]
            assert len(names) == len(set(names)), names


# -- kubectl experience -------------------------------------------------------------------


def test_kubectl_explain_describes_every_spec_field(kubectl: Kubectl, crds: None) -> None:
    """``kubectl explain`` reads the CRD's published schema: every field has its text."""
    schema = manifests.documents(
        (manifests.REPO_ROOT / "crds" / "clientcredentials.tokensync.dev.yaml").read_text()
    )[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # The API server publishes a new CRD's OpenAPI a moment after it is established.
    wait_for(
        lambda: kubectl.run("explain", "clientcredential.spec", check=False).returncode == 0,
        timeout=TIMEOUT,
        what="the CRD's OpenAPI schema",
    )
    for path, field in _fields(schema, "spec"):
        out = kubectl.run("explain", f"clientcredential.{path}").stdout
        first_words = " ".join(str(field["description"]).split()[:6])
        assert first_words in " ".join(out.split()), path


def _fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field below ``schema``, nested ones included (spec.target.template.data,
    spec.rolloutRestart.targets.kind: kubectl explain walks into list items)."""
    node = schema.get("items", schema)
    for name, field in (node.get("properties") or {}).items():
        yield f"{path}.{name}", field
        yield from _fields(field, f"{path}.{name}")


def test_kubectl_apply_of_the_crds_directory_succeeds(kubectl: Kubectl) -> None:
    """`kubectl apply -f crds/`, what a user types first, applies the CRD and nothing else
    (the kustomization beside it is named so that kubectl does not read it)."""
    result = kubectl.run("apply", "-f", str(manifests.REPO_ROOT / "crds"), "--dry-run=server")
    # One line, for the CRD: created, configured or unchanged, as this cluster has it.
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(
        "customresourcedefinition.apiextensions.k8s.io/clientcredentials.tokensync.dev "
    ), result.stdout
    assert "Kustomization" not in result.stderr, result.stderr
