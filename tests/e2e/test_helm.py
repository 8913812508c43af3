"""The Helm chart: lints, renders the same install as kustomize, and applies cleanly.

helm is built from its Go module by hack/build-helm.sh (cached after the first build).
"Equal in substance" means: the same objects (kind, namespace, name), the same RBAC rules
and bindings, the same pod spec (image, arguments, probes, resources, security context,
replicas and strategy), Service ports, ServiceMonitor endpoints, alert rules, NetworkPolicy
rules, PodDisruptionBudget and CRD; labels may differ (the chart adds Helm's), but every
selector (a Service's, the PodDisruptionBudget's, the pods' spread constraint) must still
select its pods.
"""

from __future__ import annotations

import copy
import pathlib
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from kubernetes import client

from localcluster import LocalCluster
from support import manifests
from support.manifests import COMPONENTS, OVERLAYS, ROLLOUT_RESTART, WORKLOAD_IDENTITY, Kubectl
from support.operatorproc import may_mint_tokens
from support.polling import wait_for
from tokensync import cli

pytestmark = pytest.mark.e2e

COMPONENT_VALUES = {
    "servicemonitor": "metrics.serviceMonitor.enabled=true",
    "prometheusrule": "metrics.prometheusRule.enabled=true",
    "networkpolicy": "networkPolicy.enabled=true",
}
MONITORING_CRDS = pathlib.Path(__file__).parent / "data" / "monitoring-crds.yaml"


@pytest.fixture(scope="module")
def helm_bin() -> pathlib.Path:
    try:
        return manifests.helm_binary()
    except manifests.HelmUnavailable as exc:
        pytest.skip(f"helm cannot be built here: {exc}")


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster) -> Kubectl:
    return Kubectl(cluster)


def overlay_values(overlay: str, components: Sequence[str]) -> list[str]:
    values = ["namespace.create=true"]
    if overlay == "single-namespace":
        values += ["clusterWide=false", "watchNamespaces={apps}"]
    values += [COMPONENT_VALUES[c] for c in components]
    return values


def template(
    helm_bin: pathlib.Path,
    values: Sequence[str],
    *,
    release: str = "tokensync",
    namespace: str = manifests.OPERATOR_NAMESPACE,
) -> str:
    sets = [arg for value in values for arg in ("--set", value)]
    return manifests.helm(
        helm_bin,
        "template",
        release,
        str(manifests.HELM_CHART),
        f"--namespace={namespace}",
        "--include-crds",
        *sets,
    )


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def check_selectors(docs: list[dict[str, Any]]) -> None:
    """Within one rendering, every selector selects what it is meant to."""
    deployment = manifests.find(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    services = [d for d in docs if d["kind"] == "Service"]
    for service in services:
        assert selects(service["spec"]["selector"], pod_labels)
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert any(
            selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
            for s in services
        )
        service = next(
            s
            for s in services
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        )
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "tokensync"
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert selector == {} or selects(selector["matchLabels"], pod_labels)
    for budget in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    pod = deployment["spec"]["template"]["spec"]
    for spread in pod.get("topologySpreadConstraints", []):
        assert selects(spread["labelSelector"]["matchLabels"], pod_labels)


def substance(docs: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], Any]:
    out: dict[tuple[str, str | None, str], Any] = {}
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        key = (kind, meta.get("namespace"), meta["name"])
        assert key not in out, f"{key} rendered twice"
        spec = copy.deepcopy(doc.get("spec"))
        if kind == "Namespace":
            labels = meta.get("labels") or {}
            out[key] = {k: v for k, v in labels.items() if k.startswith("pod-security.")}
        elif kind in {"ClusterRole", "Role"}:
            out[key] = doc["rules"]
        elif kind in {"ClusterRoleBinding", "RoleBinding"}:
            out[key] = {"roleRef": doc["roleRef"], "subjects": doc["subjects"]}
        elif kind == "Deployment":
            del spec["selector"]
            del spec["template"]["metadata"]
            for spread in spec["template"]["spec"].get("topologySpreadConstraints", []):
                del spread["labelSelector"]
            out[key] = spec
        elif kind in {"Service", "ServiceMonitor", "PodDisruptionBudget"}:
            del spec["selector"]
            out[key] = spec
        elif kind == "NetworkPolicy":
            spec["podSelector"] = bool(spec["podSelector"])
            out[key] = spec
        elif kind in {"ServiceAccount", "CustomResourceDefinition", "PrometheusRule"}:
            out[key] = spec
        else:
            pytest.fail(f"no comparison defined for {kind}")
    return out


def test_chart_lints(helm_bin: pathlib.Path) -> None:
    for values in (
        [],
        ["clusterWide=false", "watchNamespaces={apps,billing}"],
        list(COMPONENT_VALUES.values()),
        ["workloadIdentity.enabled=true", "workloadIdentity.namespaces={apps}"],
        ["clusterWide=false", "watchNamespaces={apps}", "workloadIdentity.enabled=true"],
        ["rolloutRestart.enabled=true", "rolloutRestart.namespaces={apps}"],
        ["clusterWide=false", "watchNamespaces={apps}", "rolloutRestart.enabled=true"],
        ["replicaCount=3", "shards=3", "leaderElection.namespace=coordination"],
        ["leaderElection.enabled=false", "replicaCount=1", "podDisruptionBudget.enabled=false"],
    ):
        sets = [arg for value in values for arg in ("--set", value)]
        out = manifests.helm(helm_bin, "lint", "--strict", str(manifests.HELM_CHART), *sets)
        assert "0 chart(s) failed" in out


def test_chart_refuses_values_it_cannot_render(helm_bin: pathlib.Path) -> None:
    with pytest.raises(AssertionError, match="list the namespaces to watch"):
        template(helm_bin, ["clusterWide=false"])
    with pytest.raises(AssertionError, match="does not match pattern"):
        template(helm_bin, ["extraArgs={workers=4}"])
    with pytest.raises(AssertionError, match="billing is not in watchNamespaces"):
        template(
            helm_bin,
            [
                "clusterWide=false",
                "watchNamespaces={apps}",
                "workloadIdentity.enabled=true",
                "workloadIdentity.namespaces={billing}",
            ],
        )
    # Lease timings the operator could not keep: a holder must give its Lease up before
    # another replica may take it, and get more than one try before it does.
    with pytest.raises(AssertionError, match=r"renewDeadline \(15\) must be less than"):
        template(helm_bin, ["leaderElection.renewDeadline=15"])
    with pytest.raises(AssertionError, match=r"retryPeriod \(9\) must be well under"):
        template(helm_bin, ["leaderElection.retryPeriod=9"])
    with pytest.raises(AssertionError, match="additional properties 'foo' not allowed"):
        template(helm_bin, ["leaderElection.foo=1"])  # a misspelt key, not silently ignored
    with pytest.raises(AssertionError, match="podDisruptionBudget/maxUnavailable"):
        template(helm_bin, ["podDisruptionBudget.maxUnavailable=0"])  # would block drains


def test_chart_without_leader_election_is_one_replica_replaced_with_recreate(
    helm_bin: pathlib.Path,
) -> None:
    """leaderElection.enabled=false: no Leases, no Lease rights, Recreate; replicaCount
    above 1 is refused, since every replica would do all the work (decision 0036)."""
    with pytest.raises(
        AssertionError, match=r"replicaCount is 2 but leaderElection\.enabled is false"
    ):
        template(helm_bin, ["leaderElection.enabled=false"])
    with pytest.raises(AssertionError, match=r"shards is 2 but leaderElection\.enabled is false"):
        template(helm_bin, ["leaderElection.enabled=false", "replicaCount=1", "shards=2"])
    docs = manifests.documents(
        template(helm_bin, ["leaderElection.enabled=false", "replicaCount=1"])
    )
    deployment = manifests.find(docs, "Deployment", "tokensync")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = manifests.container(docs)
    assert container["args"] == ["--metrics-port=8080", "--health-port=8081", "--refresh-port=8082"]
    assert {e["name"] for e in container["env"]} == {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert not [
        rule
        for d in docs
        if d["kind"] in {"ClusterRole", "Role"}
        for rule in d["rules"]
        if "leases" in rule["resources"]
    ]


def test_chart_leader_election_values_reach_the_container(helm_bin: pathlib.Path) -> None:
    """Each value becomes its flag when it differs from the operator's default; the Lease
    Role follows leaderElection.namespace; replicas follow replicaCount."""
    docs = manifests.documents(
        template(
            helm_bin,
            [
                "replicaCount=4",
                "shards=4",
                "leaderElection.leaseDuration=30",
                "leaderElection.renewDeadline=20",
                "leaderElection.retryPeriod=5",
                "leaderElection.leaseName=payments-tokensync",
                "leaderElection.namespace=coordination",
            ],
        )
    )
    assert manifests.find(docs, "Deployment", "tokensync")["spec"]["replicas"] == 4
    container = manifests.container(docs)
    assert container["args"][3:] == [
        "--leader-elect",
        "--lease-namespace=coordination",
        "--lease-name=payments-tokensync",
        "--lease-duration=30",
        "--renew-deadline=20",
        "--retry-period=5",
        "--shards=4",
    ]
    downward = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    name = "tokensync-leader-election"
    assert [o for o in rbac_objects(docs) if o[2] == name] == [
        ("Role", "coordination", name),
        ("RoleBinding", "coordination", name),
    ]
    binding = manifests.find(docs, "RoleBinding", name)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": manifests.OPERATOR_NAMESPACE}
    ]
    # Fractional seconds from a values file (--set makes them strings; --set-json does not).
    docs = manifests.documents(
        manifests.helm(
            helm_bin,
            "template",
            "tokensync",
            str(manifests.HELM_CHART),
            f"--namespace={manifests.OPERATOR_NAMESPACE}",
            "--set-json=leaderElection.retryPeriod=1.5",
        )
    )
    assert "--retry-period=1.5" in manifests.container(docs)["args"]


def test_chart_leader_election_arguments_are_flags_of_tokensync_run(
    helm_bin: pathlib.Path,
) -> None:
    """Every argument the chart can pass is one `tokensync run` takes, with its value."""
    docs = manifests.documents(
        template(
            helm_bin,
            [
                "replicaCount=3",
                "shards=3",
                "leaderElection.leaseDuration=30",
                "leaderElection.renewDeadline=20",
                "leaderElection.retryPeriod=5",
                "leaderElection.leaseName=payments-tokensync",
                "leaderElection.namespace=coordination",
            ],
        )
    )
    parsed = cli._parser().parse_args(["run", *manifests.container(docs)["args"]])
    assert parsed.leader_elect is True
    assert parsed.lease_namespace == "coordination"
    assert parsed.lease_name == "payments-tokensync"
    assert (parsed.lease_duration, parsed.renew_deadline, parsed.retry_period) == (30, 20, 5)
    assert parsed.shards == 3
    # and the defaults the chart leaves to the operator are the chart's defaults
    defaults = cli._parser().parse_args(["run"])
    assert (defaults.lease_duration, defaults.renew_deadline, defaults.retry_period) == (15, 10, 2)
    assert (defaults.lease_name, defaults.shards) == ("tokensync", 1)


def test_chart_disruption_budget_and_spread_can_be_changed_or_disabled(
    helm_bin: pathlib.Path,
) -> None:
    default = manifests.documents(template(helm_bin, []))
    budget = manifests.find(default, "PodDisruptionBudget", "tokensync")
    assert budget["spec"]["maxUnavailable"] == 1
    docs = manifests.documents(
        template(
            helm_bin,
            [
                "replicaCount=4",
                "podDisruptionBudget.maxUnavailable=2",
                "topologySpread.topologyKey=topology.kubernetes.io/zone",
            ],
        )
    )
    assert manifests.find(docs, "PodDisruptionBudget", "tokensync")["spec"]["maxUnavailable"] == 2
    pod = manifests.find(docs, "Deployment", "tokensync")["spec"]["template"]["spec"]
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone"
    ]
    docs = manifests.documents(
        template(helm_bin, ["podDisruptionBudget.enabled=false", "topologySpread.enabled=false"])
    )
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    pod = manifests.find(docs, "Deployment", "tokensync")["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in pod
    check_selectors(docs)


@pytest.mark.parametrize("components", [(), COMPONENTS], ids=["plain", "with-components"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_helm_template_equals_the_kustomize_install(
    helm_bin: pathlib.Path,
    kubectl: Kubectl,
    tmp_path: pathlib.Path,
    overlay: str,
    components: tuple[str, ...],
) -> None:
    from_kustomize = manifests.documents(
        kubectl.kustomize(manifests.kustomization(tmp_path, overlay=overlay, components=components))
    )
    from_helm = manifests.documents(template(helm_bin, overlay_values(overlay, components)))
    check_selectors(from_kustomize)
    check_selectors(from_helm)
    kustomize_view, helm_view = substance(from_kustomize), substance(from_helm)
    assert sorted(helm_view, key=str) == sorted(kustomize_view, key=str)
    for key, value in kustomize_view.items():
        assert helm_view[key] == value, f"{key} differs"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_helm_workload_identity_equals_the_kustomize_component(
    helm_bin: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path, overlay: str
) -> None:
    """workloadIdentity.enabled=true renders what the overlay's component adds."""
    from_kustomize = manifests.documents(
        kubectl.kustomize(
            manifests.kustomization(
                tmp_path, overlay=overlay, components=(WORKLOAD_IDENTITY[overlay],)
            )
        )
    )
    values = [*overlay_values(overlay, ()), "workloadIdentity.enabled=true"]
    from_helm = manifests.documents(template(helm_bin, values))
    kustomize_view, helm_view = substance(from_kustomize), substance(from_helm)
    assert sorted(helm_view, key=str) == sorted(kustomize_view, key=str)
    for key, value in kustomize_view.items():
        assert helm_view[key] == value, f"{key} differs"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_helm_rollout_restart_equals_the_kustomize_component(
    helm_bin: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path, overlay: str
) -> None:
    """rolloutRestart.enabled=true renders what the overlay's component adds (decision 0042)."""
    from_kustomize = manifests.documents(
        kubectl.kustomize(
            manifests.kustomization(
                tmp_path, overlay=overlay, components=(ROLLOUT_RESTART[overlay],)
            )
        )
    )
    values = [*overlay_values(overlay, ()), "rolloutRestart.enabled=true"]
    from_helm = manifests.documents(template(helm_bin, values))
    kustomize_view, helm_view = substance(from_kustomize), substance(from_helm)
    assert sorted(helm_view, key=str) == sorted(kustomize_view, key=str)
    for key, value in kustomize_view.items():
        assert helm_view[key] == value, f"{key} differs"


def test_chart_grants_rollout_restart_only_when_asked_and_where_asked(
    helm_bin: pathlib.Path,
) -> None:
    """Default: no rule on apps workloads, in either mode. rolloutRestart.namespaces:
    RoleBindings to the ClusterRole in those namespaces only; a name outside
    watchNamespaces fails the render."""
    for values in ([], ["clusterWide=false", "watchNamespaces={apps}"]):
        docs = manifests.documents(template(helm_bin, values))
        groups = {
            group
            for d in docs
            if d["kind"] in {"ClusterRole", "Role"}
            for rule in d["rules"]
            for group in rule.get("apiGroups", [])
        }
        assert groups
        assert not groups & {"apps", "*"}
    name = "tokensync-rollout-restart"
    docs = manifests.documents(
        template(helm_bin, ["rolloutRestart.enabled=true", "rolloutRestart.namespaces={a,b}"])
    )
    assert [o for o in rbac_objects(docs) if o[2] == name] == [
        ("ClusterRole", None, name),
        ("RoleBinding", "a", name),
        ("RoleBinding", "b", name),
    ]
    with pytest.raises(AssertionError, match="billing is not in watchNamespaces"):
        template(
            helm_bin,
            [
                "clusterWide=false",
                "watchNamespaces={apps}",
                "rolloutRestart.enabled=true",
                "rolloutRestart.namespaces={billing}",
            ],
        )


def rbac_objects(docs: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    return sorted(
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        for d in docs
        if d["apiVersion"].startswith("rbac.authorization.k8s.io/")
    )


def test_chart_grants_workload_identity_only_when_asked_and_where_asked(
    helm_bin: pathlib.Path,
) -> None:
    """Default: no rule on ServiceAccounts, in either mode. workloadIdentity.namespaces:
    RoleBindings to the ClusterRole in those namespaces only, no ClusterRoleBinding."""
    for values in ([], ["clusterWide=false", "watchNamespaces={apps}"]):
        docs = manifests.documents(template(helm_bin, values))
        granted = {
            resource
            for d in docs
            if d["kind"] in {"ClusterRole", "Role"}
            for rule in d["rules"]
            for resource in rule["resources"]
        }
        assert granted
        assert not granted & {"serviceaccounts", "serviceaccounts/token", "*"}

    name = "tokensync-workload-identity"
    docs = manifests.documents(
        template(helm_bin, ["workloadIdentity.enabled=true", "workloadIdentity.namespaces={a,b}"])
    )
    assert [o for o in rbac_objects(docs) if o[2] == name] == [
        ("ClusterRole", None, name),
        ("RoleBinding", "a", name),
        ("RoleBinding", "b", name),
    ]
    for binding in (
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == name
    ):
        assert binding["roleRef"]["kind"] == "ClusterRole"
    docs = manifests.documents(
        template(
            helm_bin,
            [
                "clusterWide=false",
                "watchNamespaces={apps,billing}",
                "workloadIdentity.enabled=true",
                "workloadIdentity.namespaces={billing}",
            ],
        )
    )
    assert [o for o in rbac_objects(docs) if o[2] == name] == [
        ("Role", "billing", name),
        ("RoleBinding", "billing", name),
    ]


def test_chart_workload_identity_per_namespace_on_the_api_server(
    helm_bin: pathlib.Path,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    crds: None,
    namespace: str,
) -> None:
    """Applied, the per-namespace grant lets the release's ServiceAccount mint tokens in the
    listed namespace and nowhere else (kube-system included), as the authorizer answers."""
    release = f"tokensync-{uuid.uuid4().hex[:6]}"
    values = [
        "namespace.create=true",
        "workloadIdentity.enabled=true",
        f"workloadIdentity.namespaces={{{namespace}}}",
    ]
    rendered = template(helm_bin, values, release=release, namespace=release)
    account = (release, release)
    try:
        kubectl.apply(rendered, field_manager="helm-test")
        wait_for(lambda: may_mint_tokens(api_client, namespace, account=account), what="grant")
        assert not may_mint_tokens(api_client, "kube-system", account=account)
        assert not may_mint_tokens(api_client, "default", account=account)
    finally:
        kubectl.run(
            "delete",
            "--wait=false",
            "--ignore-not-found",
            "-f",
            "-",
            stdin=rendered.replace("kind: CustomResourceDefinition", "kind: Skip"),
            check=False,
        )


def test_chart_values_reach_the_container(helm_bin: pathlib.Path) -> None:
    docs = manifests.documents(
        template(
            helm_bin,
            [
                "allowedTokenHosts={login.example.com,*.okta.com}",
                "extraArgs={--workers=32}",
                "image.digest=sha256:" + "a" * 64,
                "metrics.enabled=false",
                "refreshEndpoint.enabled=false",
            ],
        )
    )
    container = manifests.container(docs)
    assert container["args"] == [
        "--metrics-port=0",
        "--health-port=8081",
        "--refresh-port=0",
        "--leader-elect",
        "--allowed-token-host=login.example.com",
        "--allowed-token-host=*.okta.com",
        "--workers=32",
    ]
    assert container["image"] == "ghcr.io/tokensync/tokensync@sha256:" + "a" * 64
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert not [d for d in docs if d["kind"] == "Service"]


def test_chart_refresh_endpoint_values(helm_bin: pathlib.Path) -> None:
    """The refresh endpoint's port and who may reach it (decision 0043)."""
    docs = manifests.documents(
        template(
            helm_bin,
            [
                "refreshEndpoint.port=9092",
                "networkPolicy.enabled=true",
                "refreshEndpoint.from[0].namespaceSelector.matchLabels.team=payments",
            ],
        )
    )
    container = manifests.container(docs)
    assert "--refresh-port=9092" in container["args"]
    assert {"name": "refresh", "containerPort": 9092, "protocol": "TCP"} in container["ports"]
    service = manifests.find(docs, "Service", "tokensync-refresh")
    assert service["spec"]["ports"] == [
        {"name": "refresh", "port": 9092, "targetPort": "refresh", "protocol": "TCP"}
    ]
    ingress = manifests.find(docs, "NetworkPolicy", "tokensync")["spec"]["ingress"]
    assert {
        "from": [{"namespaceSelector": {"matchLabels": {"team": "payments"}}}],
        "ports": [{"port": "refresh", "protocol": "TCP"}],
    } in ingress


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_chart_applies_with_server_side_apply(
    helm_bin: pathlib.Path,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    namespace: str,
    overlay: str,
) -> None:
    """A release of its own (name and namespace), next to the kustomize install."""
    kubectl.apply(MONITORING_CRDS.read_text(), field_manager="tokensync-tests")
    kubectl.run(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    )
    release = f"tokensync-{uuid.uuid4().hex[:6]}"
    values = overlay_values(overlay, COMPONENTS)
    if overlay == "single-namespace":
        values = [v for v in values if not v.startswith("watchNamespaces")]
        values.append(f"watchNamespaces={{{namespace}}}")
    rendered = template(helm_bin, values, release=release, namespace=release)
    try:
        kubectl.apply(rendered, field_manager="helm-test")
        diff = kubectl.run(
            "diff",
            "--server-side",
            "--force-conflicts",
            "--field-manager=helm-test",
            "-f",
            "-",
            stdin=rendered,
            check=False,
        )
        assert diff.returncode == 0, diff.stdout + diff.stderr
        apps = client.AppsV1Api(api_client)
        deployment = apps.read_namespaced_deployment(release, release)
        assert deployment.spec.template.spec.service_account_name == release
    finally:
        kubectl.run(
            "delete",
            "--wait=false",
            "--ignore-not-found",
            "-f",
            "-",
            stdin=rendered.replace("kind: CustomResourceDefinition", "kind: Skip"),
            check=False,
        )


def test_helm_install_and_uninstall(
    helm_bin: pathlib.Path,
    cluster: LocalCluster,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    crds: None,
) -> None:
    """``helm install`` itself (its own apply path and release record), as docs/install.md says."""
    core = client.CoreV1Api(api_client)
    release = f"tokensync-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        {
            "metadata": {
                "name": release,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            }
        }
    )
    kube = [f"--kubeconfig={cluster.kubeconfig}", f"--namespace={release}"]
    try:
        out = manifests.helm(helm_bin, "install", release, str(manifests.HELM_CHART), *kube)
        assert "STATUS: deployed" in out
        assert "watching every namespace" in out
        assert "Workload identity federation (spec.serviceAccountRef) is off" in out
        assert f"2 replicas with leader election on the Leases tokensync-* in {release}" in out
        listed = manifests.helm(helm_bin, "list", "--output=json", *kube)
        assert release in listed
        apps = client.AppsV1Api(api_client)
        deployment = apps.read_namespaced_deployment(release, release)
        assert deployment.spec.replicas == 2
        assert deployment.spec.strategy.type == "RollingUpdate"
        policy = client.PolicyV1Api(api_client)
        assert policy.read_namespaced_pod_disruption_budget(release, release).spec.max_unavailable
        rbac = client.RbacAuthorizationV1Api(api_client)
        assert rbac.read_cluster_role(release).rules

        # The Leases' rights, in the release namespace only, as the authorizer answers.
        def may_update_leases(namespace: str) -> bool:
            answer = kubectl.run(
                "auth",
                "can-i",
                "update",
                "leases.coordination.k8s.io",
                f"--as=system:serviceaccount:{release}:{release}",
                f"--namespace={namespace}",
                check=False,
            )
            return answer.stdout.strip() == "yes"

        wait_for(lambda: may_update_leases(release), what="the Lease grant")
        assert not may_update_leases("kube-system")
        manifests.helm(helm_bin, "uninstall", release, *kube)
        with pytest.raises(client.ApiException) as gone:
            rbac.read_cluster_role(release)
        assert gone.value.status == 404
        # The CRD stays: helm never deletes what it installed from crds/.
        ext = client.ApiextensionsV1Api(api_client)
        assert ext.read_custom_resource_definition("clientcredentials.tokensync.dev")
    finally:
        core.delete_namespace(release)


def test_packaged_chart_renders_like_the_source(
    helm_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """``helm package`` resolves the chart's links (CRD, RBAC rules, workload identity
    rules, alerts) into the archive."""
    manifests.helm(helm_bin, "package", str(manifests.HELM_CHART), f"--destination={tmp_path}")
    (archive,) = tmp_path.glob("tokensync-*.tgz")
    values = [*overlay_values("cluster-wide", COMPONENTS), "workloadIdentity.enabled=true"]
    sets = [arg for value in values for arg in ("--set", value)]
    from_archive = manifests.helm(
        helm_bin,
        "template",
        "tokensync",
        str(archive),
        f"--namespace={manifests.OPERATOR_NAMESPACE}",
        "--include-crds",
        *sets,
    )
    assert from_archive == template(helm_bin, values)
