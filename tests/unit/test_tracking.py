"""The watch bookkeeping: which credentials a full listing no longer has (issue 14 §7)."""

from __future__ import annotations

from typing import Any

from tokensync import metrics, reconcile, scheduler, tracking


def body(name: str, uid: str = "u") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"{uid}-{name}", "generation": 1},
        "spec": {"clientSecretRef": {"name": f"{name}-client"}},
    }


def test_absent_from_a_listing_taken_after_the_mark() -> None:
    tracker = tracking.Tracker()
    for name in ("kept", "gone"):
        tracker.put(body(name))
    since = tracker.mark()
    # While the listing runs, a credential is created (and observed) that the listing
    # predates, and another one is modified.
    tracker.put(body("new"))
    tracker.put(body("kept"))
    assert tracker.absent({("ns", "kept")}, since=since) == [("ns", "gone")]


def test_nothing_is_absent_from_a_complete_listing() -> None:
    tracker = tracking.Tracker()
    tracker.put(body("a"))
    since = tracker.mark()
    assert tracker.absent({("ns", "a")}, since=since) == []


def test_retain_forgets_the_absent_and_stops_refreshing_them() -> None:
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- never reached: nothing is refreshed
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=queue,
        pacer=scheduler.HostPacer(rate=1, burst=1),
    )
    rec.observe(body("kept"))
    rec.observe(body("gone"))
    assert queue.due_at(("ns", "gone")) is not None
    since = rec.mark()
    assert rec.retain({("ns", "kept")}, since=since) == [("ns", "gone")]
    assert len(rec) == 1
    assert queue.due_at(("ns", "gone")) is None
    assert queue.due_at(("ns", "kept")) is not None
    # A client Secret event no longer reaches the forgotten credential.
    rec.client_secret_changed("ns", "gone-client", "9")
    assert queue.due_at(("ns", "gone")) is None
