"""A client Secret event that arrives while its credential is being refreshed.

On a cold start the operator lists credentials and client Secrets on two streams; the
Secrets' events land while the first refreshes run. The refresh in flight has read the
Secret itself, so the event must cause a second token request only when the version it
carries differs from the one that refresh read (found with bench/scale.py: about 20 % of
1,000 credentials were fetched twice before this).
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tokensync import metrics, model, progress, reconcile, scheduler, seen

KEY = ("ns", "cc")


def reconciler() -> tuple[reconcile.Reconciler, scheduler.RefreshQueue[reconcile.Key]]:
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- never reached: the attempt is replaced
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=queue,
        pacer=scheduler.HostPacer(rate=1, burst=1),
    )
    rec.observe(
        {
            "metadata": {"namespace": "ns", "name": "cc", "uid": "u1", "generation": 1},
            "spec": {"clientSecretRef": {"name": "client"}},
        }
    )
    return rec, queue


@pytest.mark.parametrize(
    ("read", "event", "runs"),
    [
        ("7", "7", 1),  # the attempt read the version the event carries: done
        ("7", "8", 2),  # rotated after the attempt read it: fetch again
    ],
)
async def test_event_during_a_refresh(read: str, event: str, runs: int) -> None:
    rec, queue = reconciler()
    calls: list[str] = []
    release = asyncio.Event()

    async def attempt(key: reconcile.Key, due: float) -> None:
        calls.append(event)
        record = rec._tracker.get(key)
        assert record is not None
        if len(calls) == 1:
            await release.wait()  # the Secret's event arrives now
        version = read if len(calls) == 1 else event
        record.state = dataclasses.replace(record.state, source_version=version)

    rec._refresh = attempt  # type: ignore[method-assign]
    task = asyncio.create_task(queue.run(rec.refresh))
    try:
        for _ in range(100):
            if queue.is_running(KEY):
                break
            await asyncio.sleep(0.001)
        assert queue.is_running(KEY)
        rec.client_secret_changed("ns", "client", event)
        release.set()
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(calls) == runs


async def test_event_while_idle_triggers_at_once() -> None:
    rec, queue = reconciler()
    record = rec._tracker.get(KEY)
    assert record is not None
    record.state = dataclasses.replace(record.state, source_version="7")
    queue.cancel(KEY)
    rec.client_secret_changed("ns", "client", "8")
    assert queue.due_at(KEY) is not None


async def test_the_watchs_events_keep_rotate_and_drop_a_client_secret() -> None:
    """The client Secrets' own watch (decision 0059) hands over summaries: one listed or
    modified is kept and, at a version its reader did not read, refreshes it; one deleted,
    or no longer opted in, is dropped, so the next attempt reads it from the API."""
    rec, queue = reconciler()
    record = rec._tracker.get(KEY)
    assert record is not None
    record.state = dataclasses.replace(record.state, source_version="7")
    queue.cancel(KEY)
    secret = {
        "metadata": {
            "namespace": "ns",
            "name": "client",
            "resourceVersion": "7",
            "labels": {model.CLIENT_SECRET_LABEL: "true"},
        },
        "data": {"client_secret": "c2VjcmV0"},
    }
    rec.client_secret_event(seen.summarize("LISTED", secret))
    assert queue.due_at(KEY) is None  # the version its last attempt read
    assert rec._seen.get("ns", "client") is not None
    secret["metadata"]["resourceVersion"] = "8"  # type: ignore[index]
    rec.client_secret_event(seen.summarize("MODIFIED", secret))
    assert queue.due_at(KEY) is not None  # rotated: fetched again
    rec.client_secret_event(seen.summarize("DELETED", secret))
    assert rec._seen.get("ns", "client") is None


async def test_a_credential_only_a_change_can_mend_is_not_rerun_by_its_own_events() -> None:
    """A failure that only a change can mend (no due time: InvalidSpec, PrivateNetworkRefused,
    TemplateFailed) writes status; the watch event of that status patch must not start
    another attempt (each would fetch again when the failure comes after the token: found
    in test_target_shape, four token requests in 150 ms). A new generation still does."""
    rec, queue = reconciler()
    record = rec._tracker.get(KEY)
    assert record is not None
    state = dataclasses.replace(record.state, handled_generation=1)
    await rec._apply(record, progress.Decision(state=state, status={}, due=None))
    assert queue.due_at(KEY) is None
    body = {
        "metadata": {"namespace": "ns", "name": "cc", "uid": "u1", "generation": 1},
        "spec": {"clientSecretRef": {"name": "client"}},
        "status": {"observedGeneration": 1},
    }
    rec.observe(body)  # its own status patch, as the watch delivers it
    assert queue.due_at(KEY) is None
    rec.observe({**body, "metadata": {**body["metadata"], "generation": 2}})
    assert queue.due_at(KEY) is not None
