"""The alerts and the dashboard in deploy/ refer only to metrics the operator exports.

Every PromQL expression is parsed (a real PromQL parser, so a syntax error fails here too),
every metric selector is collected, and each name must be one that
:class:`tokensync.metrics.Metrics` registers, with the suffixes Prometheus adds to
counters and histograms, or ``up`` (Prometheus's own, for the operator-absent alert).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml

from tokensync import metrics

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
RULE_FILE = DEPLOY / "components" / "prometheusrule" / "prometheusrule.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "tokensync-dashboard.json"
SERVICE_MONITOR_FILE = DEPLOY / "components" / "servicemonitor" / "servicemonitor.yaml"
SERVICE_FILE = DEPLOY / "base" / "service.yaml"
#: Grafana's own variables, replaced before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
LABEL_VALUES = re.compile(r"label_values\(\s*(?P<expr>.+?)\s*,\s*(?P<label>\w+)\s*\)")


def exported_names() -> set[str]:
    """Series names as Prometheus stores them, from the operator's own registry."""
    names = {"up"}
    for collector in metrics.Metrics().registry.collect():
        if collector.type == "counter":
            names |= {f"{collector.name}_total", f"{collector.name}_created"}
        elif collector.type == "histogram":
            names |= {
                f"{collector.name}{suffix}" for suffix in ("_bucket", "_sum", "_count", "_created")
            }
        else:
            names.add(collector.name)
    return names


def selector_names(expr: str) -> list[str]:
    """Every metric name a PromQL expression selects."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), None
            )
            assert name, f"a selector without a metric name in {expr!r}"
            found.append(name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULE_FILE.read_text())
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def grafana_expressions(node: object) -> Iterator[str]:
    """Every PromQL expression of a dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key in {"query", "definition"} and isinstance(value, str):
                match = LABEL_VALUES.fullmatch(value.strip())
                if match:
                    yield match["expr"]
            else:
                yield from grafana_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from grafana_expressions(item)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    out = []
    for found in grafana_expressions(dashboard):
        expr = found.replace("$namespace", ".*")
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        out.append(expr)
    return out


def test_exported_names_come_from_the_registry() -> None:
    names = exported_names()
    assert "tokensync_token_requests_total" in names
    assert "tokensync_token_request_duration_seconds_bucket" in names
    assert "tokensync_token_expiration_timestamp_seconds" in names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_uses_exported_metrics(rule: dict[str, Any]) -> None:
    used = selector_names(rule["expr"])
    assert used, "an alert that selects no metric"
    unknown = set(used) - exported_names()
    assert not unknown, f"{rule['alert']} refers to metrics tokensync does not export: {unknown}"


def test_the_alerts_the_issue_asks_for() -> None:
    by_name = {rule["alert"]: rule for rule in alert_rules()}
    assert set(by_name) == {
        "TokensyncTokenExpiringSoon",
        "TokensyncCredentialNotReady",
        "TokensyncTokenEndpointErrors",
        "TokensyncOperatorAbsent",
        "TokensyncShardsUnserved",
        "TokensyncLeadershipFlapping",
    }
    assert by_name["TokensyncCredentialNotReady"]["for"] == "10m"
    for rule in by_name.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_operator_absent_alert_names_the_servicemonitor_job() -> None:
    """prometheus-operator takes job from the Service label named by jobLabel."""
    service = yaml.safe_load(SERVICE_FILE.read_text())
    monitor = yaml.safe_load(SERVICE_MONITOR_FILE.read_text())
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    expr = next(r["expr"] for r in alert_rules() if r["alert"] == "TokensyncOperatorAbsent")
    assert f'up{{job="{job}"}}' in expr


def test_dashboard_uses_exported_metrics() -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 10
    used = {name for expr in expressions for name in selector_names(expr)}
    assert not used - exported_names(), f"unknown metrics: {used - exported_names()}"
    # expiry, refresh rate, latency and errors by reason, as the issue asks
    assert {
        "tokensync_token_expiration_timestamp_seconds",
        "tokensync_token_requests_total",
        "tokensync_token_request_duration_seconds_bucket",
    } <= used
    assert any("by (error)" in expr for expr in expressions)


def test_dashboard_panels_have_unique_ids_and_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"


def test_servicemonitor_selects_the_metrics_service() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR_FILE.read_text())
    service = yaml.safe_load(SERVICE_FILE.read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        # per-credential series carry their own namespace label; keep it
        assert endpoint["honorLabels"] is True
