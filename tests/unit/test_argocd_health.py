"""deploy/argocd/health.lua, run by a real Lua 5.1 interpreter (Argo CD's gopher-lua is 5.1).

Argo CD calls the script with the live object in the global ``obj`` and reads the table
it returns; these tests do the same with sample statuses the operator writes.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from lupa import lua51

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "argocd"
HEALTH_LUA = (DEPLOY / "health.lua").read_text()
CM_KEY = "resource.customizations.health.tokensync.dev_ClientCredential"


def to_lua(runtime: Any, value: object) -> object:
    """Python data -> Lua tables; lists become 1-based sequences, as Argo CD passes them."""
    if isinstance(value, Mapping):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def health(obj: Mapping[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(HEALTH_LUA)
    return str(result["status"]), str(result["message"])


def credential(*, generation: int = 2, status: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "ClientCredential",
        "metadata": {"name": "billing-api", "namespace": "payments", "generation": generation},
        "spec": {"tokenURL": "https://login.example.com/token", "clientSecretRef": {"name": "c"}},
    }
    if status is not None:
        body["status"] = dict(status)
    return body


def ready(
    state: str, reason: str, message: str = "", *, observed: int | None = 2
) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": "Ready",
        "status": state,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-22T23:12:36Z",
    }
    if observed is not None:
        condition["observedGeneration"] = observed
    return condition


ISSUED = ready("True", "TokenIssued", "token valid until 2026-11-22T23:13:06Z")


@pytest.mark.parametrize(
    ("obj", "expected_status", "message_part"),
    [
        pytest.param(credential(), "Progressing", "Waiting for tokensync", id="no-status"),
        pytest.param(
            credential(status={"observedGeneration": 2}),
            "Progressing",
            "Waiting for tokensync",
            id="status-without-conditions",
        ),
        pytest.param(
            credential(status={"observedGeneration": 2, "conditions": [ISSUED]}),
            "Healthy",
            "TokenIssued: token valid until",
            id="ready",
        ),
        pytest.param(
            credential(
                status={
                    "observedGeneration": 2,
                    "conditions": [
                        {"type": "Other", "status": "False", "observedGeneration": 2},
                        ISSUED,
                    ],
                }
            ),
            "Healthy",
            "TokenIssued",
            id="ready-among-other-conditions",
        ),
        pytest.param(
            credential(
                status={
                    "observedGeneration": 2,
                    "conditions": [ready("True", "RefreshFailing", "ServerError: 503")],
                }
            ),
            "Healthy",
            "RefreshFailing: ServerError: 503",
            id="refresh-failing-token-still-valid",
        ),
        pytest.param(
            credential(
                status={
                    "observedGeneration": 2,
                    "conditions": [ready("False", "InvalidClient", "the server refused")],
                }
            ),
            "Degraded",
            "InvalidClient: the server refused",
            id="not-ready",
        ),
        pytest.param(
            credential(status={"observedGeneration": 2, "conditions": [ready("False", "Expired")]}),
            "Degraded",
            "Expired",
            id="not-ready-without-message",
        ),
        pytest.param(
            credential(
                generation=3,
                status={"observedGeneration": 2, "conditions": [ready("True", "TokenIssued")]},
            ),
            "Progressing",
            "generation 3",
            id="status-generation-behind",
        ),
        pytest.param(
            credential(
                generation=3,
                status={
                    "observedGeneration": 3,
                    "conditions": [ready("False", "InvalidScope", observed=2)],
                },
            ),
            "Progressing",
            "generation 3",
            id="condition-generation-behind",
        ),
        pytest.param(
            credential(
                status={"conditions": [ready("False", "InvalidClient", "refused", observed=2)]}
            ),
            "Degraded",
            "InvalidClient",
            id="generation-only-on-the-condition",
        ),
        pytest.param(
            credential(status={"conditions": [ready("True", "TokenIssued", observed=None)]}),
            "Progressing",
            "generation 2",
            id="no-observed-generation-anywhere",
        ),
        pytest.param(
            credential(
                status={"observedGeneration": 2, "conditions": [ready("Unknown", "Pending")]}
            ),
            "Progressing",
            "Pending",
            id="unknown",
        ),
        pytest.param(
            credential(
                status={"observedGeneration": 2, "conditions": [ready("False", "Pending", "")]}
            ),
            "Progressing",
            "Pending",
            id="pending",
        ),
    ],
)
def test_health(obj: dict[str, Any], expected_status: str, message_part: str) -> None:
    status, message = health(obj)
    assert status == expected_status
    assert message_part in message


def test_object_without_generation_is_judged_by_its_condition() -> None:
    obj = credential(status={"conditions": [ISSUED]})
    del obj["metadata"]["generation"]
    assert health(obj)[0] == "Healthy"


def test_argocd_cm_snippet_carries_the_same_script() -> None:
    """The argocd-cm snippet users paste must be exactly deploy/argocd/health.lua."""
    snippet = yaml.safe_load((DEPLOY / "argocd-cm.yaml").read_text())
    assert snippet["kind"] == "ConfigMap"
    assert snippet["metadata"]["name"] == "argocd-cm"
    assert snippet["data"][CM_KEY] == HEALTH_LUA
