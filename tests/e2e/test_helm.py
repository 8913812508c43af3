"""The Helm chart: lints, renders the same install as kustomize, and applies cleanly.

helm is built from its Go module by hack/build-helm.sh (cached after the first build).
"Equal in substance" means: the same objects (kind, namespace, name), the same RBAC rules
and bindings, the same pod spec (image, arguments, probes, resources, security context),
Service ports, ServiceMonitor endpoints, alert rules, NetworkPolicy rules and CRD; labels
may differ (the chart adds Helm's), but every selector must still select its pods.
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
            out[key] = spec
        elif kind in {"Service", "ServiceMonitor"}:
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
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
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
        listed = manifests.helm(helm_bin, "list", "--output=json", *kube)
        assert release in listed
        apps = client.AppsV1Api(api_client)
        assert apps.read_namespaced_deployment(release, release).spec.replicas == 1
        rbac = client.RbacAuthorizationV1Api(api_client)
        assert rbac.read_cluster_role(release).rules
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
