"""The ClientCredentials' watch (decision 0061): what its thread keeps of an event, and
what the reconciler does with it."""

from __future__ import annotations

import copy
from typing import Any

from tokensync import metrics, model, reconcile, scheduler, tracking

NS, NAME = "team-a", "payments"
KEY = (NS, NAME)


def credential() -> dict[str, Any]:
    return {
        "apiVersion": f"{model.GROUP}/{model.VERSION}",
        "kind": model.KIND,
        "metadata": {
            "namespace": NS,
            "name": NAME,
            "uid": "uid-1",
            "generation": 3,
            "resourceVersion": "41",
            "creationTimestamp": "2026-03-01T12:00:00Z",
            "labels": {"team": "a"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"spec": "a copy"}',
                model.REFRESH_REQUESTED_ANNOTATION: "after-401",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"tokenURL": "https://idp.example/t", "clientSecretRef": {"name": "c"}},
        "status": {"observedGeneration": 3, "target": "payments-token"},
    }


def test_the_thread_keeps_what_a_record_reads_and_nothing_else() -> None:
    body = credential()
    event = tracking.summarize("ADDED", body)
    assert (event.namespace, event.name) == KEY
    assert event.body == {
        "metadata": {
            "namespace": NS,
            "name": NAME,
            "uid": "uid-1",
            "generation": 3,
            "resourceVersion": "41",
            "annotations": {model.REFRESH_REQUESTED_ANNOTATION: "after-401"},
        },
        "spec": body["spec"],
        "status": body["status"],
    }
    # The record built from the summary is the one built from the whole body.
    assert tracking.Record.from_body(event.body) == tracking.Record.from_body(body)


def test_a_new_credential_has_no_status_and_a_deleted_one_no_body() -> None:
    body = credential()
    del body["status"], body["metadata"]["annotations"]
    listed = tracking.summarize("LISTED", body)
    assert listed.body is not None
    assert "status" not in listed.body
    assert "annotations" not in listed.body["metadata"]
    assert tracking.summarize("DELETED", body) == tracking.Event(NS, NAME, None)


def test_the_reconciler_observes_and_forgets_what_the_watch_hands_over() -> None:
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- no refresh runs here
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=queue,
        pacer=scheduler.HostPacer(rate=1, burst=1),
    )
    body = credential()
    rec.credential_event(tracking.summarize("LISTED", copy.deepcopy(body)))
    assert rec.knows(KEY)
    assert queue.is_known(KEY)  # no token yet: due now
    rec.credential_event(tracking.summarize("DELETED", body))
    assert not rec.knows(KEY)
    assert not queue.is_known(KEY)
