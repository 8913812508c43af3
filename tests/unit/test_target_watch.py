"""The watch of target Secrets (issue 14 section 6, decision 0035): what an event is reduced
to, which events are changes by someone else, and what the reconciler does with them. The
watch's thread is tested in test_listwatch.py."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import datetime
import time
from collections.abc import Callable
from typing import Any

import pytest

from tokensync import (
    metrics,
    model,
    ownership,
    progress,
    reconcile,
    scheduler,
    target,
    tracking,
)

T0 = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
NS, NAME, UID, TARGET = "team-a", "payments", "uid-payments", "payments-token"
KEY = (NS, NAME)


def secret(
    token: str = "tok",
    *,
    issued: datetime.datetime = T0,
    version: str = "10",
    uid: str = "uid-target",
    owner_uid: str = UID,
) -> dict[str, Any]:
    body = target.render_target(
        namespace=NS,
        credential=NAME,
        credential_uid=owner_uid,
        target=model.TargetSpec(name=TARGET),
        access_token=token,
        token_type="Bearer",
        expires_at=issued + 3600 * S,
        scope=None,
        issued_at=issued,
        refresh_at=issued + 2300 * S,
    )
    body = target.for_create(body)
    body["metadata"].update(uid=uid, resourceVersion=version)
    return body


def seen(body: dict[str, Any], kind: str = "MODIFIED") -> target.Seen:
    found = target.seen(kind, body)
    assert found is not None
    return found


# -- target: what an event is reduced to ------------------------------------------------------


def test_a_rendered_target_and_the_secret_it_became_have_one_digest() -> None:
    rendered = target.render_target(
        namespace=NS,
        credential=NAME,
        credential_uid=UID,
        target=model.TargetSpec(name=TARGET, labels=(("team", "a"),)),
        access_token="tok",
        token_type="Bearer",
        expires_at=T0 + 3600 * S,
        scope=None,  # None in the patch, absent from the Secret
        issued_at=T0,
        refresh_at=T0 + 2300 * S,
    )
    stored = secret()
    stored["metadata"]["labels"]["added-by-someone"] = "x"  # not tokensync's
    stored["data"]["extra"] = base64.b64encode(b"theirs").decode()
    assert target.digest(rendered) == target.digest(stored)
    assert target.digest(secret("other")) != target.digest(stored)
    edited = copy.deepcopy(stored)
    edited["metadata"]["annotations"][target.ISSUED_AT_ANNOTATION] = "2099-01-01T00:00:00Z"
    assert target.digest(edited) != target.digest(stored)


@pytest.mark.parametrize(
    ("edit", "whole"),
    [
        (lambda s: None, True),
        (lambda s: s["data"].update(access_token=base64.b64encode(b"typed").decode()), False),
        (lambda s: s["data"].update(authorization="bm90IGJhc2U2NA=="), False),
        (lambda s: s["data"].update(access_token="%%%"), False),  # not base64
        (lambda s: s["data"].pop("expires_at"), False),
        (
            lambda s: s["metadata"]["annotations"].update(
                {model.EXPIRES_AT_ANNOTATION: "2099-01-01T00:00:00Z"}
            ),
            False,
        ),
        (lambda s: s["metadata"]["annotations"].pop(target.REFRESH_AT_ANNOTATION), False),
    ],
)
def test_whole_times(edit: Any, whole: bool) -> None:
    body = secret()
    edit(body)
    assert (target.whole_times(body) is not None) == whole


def test_seen_keeps_no_data_and_names_the_owner() -> None:
    found = seen(secret("s3cr3t-token"), "DELETED")
    assert found.owner == (NAME, UID)
    assert found.deleted
    assert (found.name, found.uid, found.version) == (TARGET, "uid-target", "10")
    assert "s3cr3t" not in repr(found)
    assert found.times == (T0, T0 + 3600 * S, T0 + 2300 * S)
    unowned = secret()
    unowned["metadata"]["ownerReferences"] = [{"kind": "Deployment", "name": "x", "uid": "u"}]
    # Without an ownerReference, the link annotation names the credential (decision 0041).
    retained = seen(unowned, "ADDED")
    assert retained.owner == (NAME, UID)
    del unowned["metadata"]["annotations"][ownership.LINK_ANNOTATION]
    assert target.seen("ADDED", unowned) is None


# -- tracking.judge: a change by someone else? -------------------------------------------------


def record(**fields: Any) -> tracking.Record:
    defaults: dict[str, Any] = {
        "namespace": NS,
        "name": NAME,
        "uid": UID,
        "generation": 1,
        "spec_json": "{}",
        "refresh_request": None,
        "target_name": TARGET,
    }
    return tracking.Record(**{**defaults, **fields})


def written(token: str = "tok", version: str = "10", **fields: Any) -> tracking.Record:
    """A record that wrote ``secret(token)`` at ``version``."""
    rec = record(**fields)
    rec.read_target(secret(token, version=version))
    return rec


STATUS = progress.State(issued_at=T0, expires_at=T0 + 3600 * S)
V = tracking.Verdict


@pytest.mark.parametrize(
    ("rec", "event", "verdict"),
    [
        (written, seen(secret(version="10")), V.OWN),  # the version it wrote
        (written, seen(secret(version="11")), V.OWN),  # same content (a label edited)
        (written, seen(secret("edited", version="11")), V.CHANGED),
        (written, seen(secret(version="12"), "DELETED"), V.CHANGED),
        (written, seen(secret(version="9", uid="older"), "DELETED"), V.OWN),  # replaced since
        # After a start: nothing written or read yet, judged against status.
        (lambda: record(state=STATUS), seen(secret(version="3")), V.AGREES),
        (lambda: record(state=STATUS), seen(secret(issued=T0 + S)), V.CHANGED),
        (
            lambda: record(state=STATUS),
            seen({**secret(), "data": {**secret()["data"], "access_token": "ZWRpdGVk"}}),
            V.CHANGED,  # the times agree, but the Secret is not whole
        ),
        (lambda: record(state=STATUS), seen(secret(), "DELETED"), V.CHANGED),
    ],
)
def test_judge(rec: Any, event: target.Seen, verdict: tracking.Verdict) -> None:
    assert tracking.judge(rec(), event) is verdict


def test_what_a_write_superseded_is_not_a_change() -> None:
    rec = written("first")
    rec.wrote(target.digest(secret("second")))  # written before its watch event came
    assert tracking.judge(rec, seen(secret("second", version="11"))) is V.OWN
    assert tracking.judge(rec, seen(secret("first", version="10"))) is V.OWN  # late event
    assert tracking.judge(rec, seen(secret("third", version="12"))) is V.CHANGED


def test_a_watch_body_carries_version_and_deletion() -> None:
    tracker = tracking.Tracker()
    meta = {"namespace": NS, "name": NAME, "uid": UID, "generation": 1, "resourceVersion": "5"}
    rec = tracker.put(
        {"metadata": meta, "spec": {}, "status": {"lastRefreshAt": "2026-03-01T12:00:00Z"}}
    )
    assert (rec.resource_version, rec.deleting, rec.state.issued_at) == ("5", False, T0)
    tracker.put({"metadata": {**meta, "resourceVersion": "6", "deletionTimestamp": "x"}})
    assert (rec.resource_version, rec.deleting) == ("6", True)


# -- the reconciler: what it does with them ----------------------------------------------------


def reconciler() -> tuple[reconcile.Reconciler, scheduler.RefreshQueue[reconcile.Key]]:
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- no I/O is reached
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=queue,
        pacer=scheduler.HostPacer(rate=1, burst=1),
        clock=lambda: T0,
    )
    rec.observe(
        {
            "metadata": {"namespace": NS, "name": NAME, "uid": UID, "generation": 1},
            "spec": {"tokenURL": "https://idp.example/t", "clientSecretRef": {"name": "c"}},
            "status": {
                "observedGeneration": 1,
                "target": TARGET,
                "lastRefreshAt": model.format_time(T0),
                "expiresAt": model.format_time(T0 + 3600 * S),
                "nextRefreshAt": model.format_time(T0 + 2300 * S),
            },
        }
    )
    return rec, queue


async def until(condition: Callable[[], bool]) -> None:
    """Let the queue's tasks run until ``condition`` holds (at most about 0.1 s)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.001)


async def test_a_target_as_status_describes_it_is_remembered_not_rechecked() -> None:
    rec, queue = reconciler()
    rec.target_seen(seen(secret(version="7"), "LISTED"))
    record = rec._tracker.get(KEY)
    assert record is not None
    assert (record.target_uid, record.target_version) == ("uid-target", "7")
    assert queue.due_at(KEY) == (T0 + 2300 * S).timestamp()  # left as it was


@pytest.mark.parametrize("kind", ["DELETED", "MODIFIED"])
async def test_a_change_by_someone_else_is_rechecked_at_once(kind: str) -> None:
    rec, queue = reconciler()
    rec.target_seen(seen(secret(version="7"), "LISTED"))
    rec.target_seen(seen(secret("edited" if kind == "MODIFIED" else "tok", version="8"), kind))
    record = rec._tracker.get(KEY)
    assert record is not None
    assert record.target_uid is None  # the attempt reads the target first
    due = queue.due_at(KEY)
    if kind == "DELETED":  # a second later: a namespace being deleted is gone by then
        assert due == (T0 + reconcile.TARGET_DELETED_GRACE * S).timestamp()
    else:
        assert due is not None
        assert due <= time.time()


async def test_events_for_other_secrets_are_ignored() -> None:
    rec, queue = reconciler()
    other_owner = seen(secret("x", owner_uid="uid-of-a-recreated-credential"))
    renamed = dataclasses.replace(seen(secret("x")), name="old-target")
    for event in (other_owner, renamed):
        rec.target_seen(event)
    assert queue.due_at(KEY) == (T0 + 2300 * S).timestamp()


async def test_a_change_while_the_attempt_runs_is_judged_when_it_ends() -> None:
    rec, queue = reconciler()
    release = asyncio.Event()
    runs: list[int] = []

    async def attempt(key: reconcile.Key, due: float) -> None:
        runs.append(1)
        record = rec._tracker.get(key)
        assert record is not None
        if len(runs) < 3:
            await release.wait()
            record.read_target(secret("new", version="20"))  # the attempt's write

    rec._refresh = attempt  # type: ignore[method-assign]
    queue.trigger(KEY)
    task = asyncio.create_task(queue.run(rec.refresh))
    try:
        await until(lambda: queue.is_running(KEY))
        # Deleted before the attempt's write (an older uid): the write recreated it.
        rec.target_seen(seen(secret(version="9", uid="uid-before"), "DELETED"))
        release.set()
        await asyncio.sleep(0.05)
        assert len(runs) == 1
        # Deleted after it: the next attempt runs at once.
        release.clear()
        queue.trigger(KEY)
        await asyncio.sleep(0.01)
        assert queue.is_running(KEY)
        rec.target_seen(seen(secret("new", version="21", uid="uid-target"), "DELETED"))
        release.set()
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(runs) == 3


@pytest.mark.parametrize("edited", [False, True])
async def test_a_target_listed_while_its_credential_waits_for_a_worker_is_judged_at_once(
    edited: bool,
) -> None:
    """A start with every credential due at once: the credentials wait for a worker when
    their targets are listed. Nothing is in flight for them, so the listing is believed at
    once and their attempts read no target; a target changed by someone else is read by
    the attempt that is coming anyway, not by a second one."""
    rec, queue = reconciler()
    release = asyncio.Event()
    runs: list[reconcile.Key] = []
    other = (NS, "holds-the-only-worker")

    async def attempt(key: reconcile.Key, due: float) -> None:
        runs.append(key)
        if key == other:
            await release.wait()

    rec._refresh = attempt  # type: ignore[method-assign]
    queue.cancel(KEY)  # due (its nextRefreshAt is T0) only once the worker is taken
    queue.trigger(other)
    task = asyncio.create_task(queue.run(rec.refresh))
    try:
        await until(lambda: queue.is_active(other))
        queue.trigger(KEY)
        await until(lambda: queue.is_running(KEY))
        assert queue.is_running(KEY)
        assert not queue.is_active(KEY)
        # Edited: another token than the one status describes.
        rec.target_seen(seen(secret(issued=T0 + S if edited else T0, version="7"), "LISTED"))
        record = rec._tracker.get(KEY)
        assert record is not None
        if edited:
            assert record.target_uid is None  # its attempt reads the target first
        else:
            assert (record.target_uid, record.target_version) == ("uid-target", "7")
        release.set()
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert runs == [other, KEY]  # one attempt: none again after it


async def test_a_target_listed_before_its_credential_is_judged_when_it_comes() -> None:
    """On a start the watch of targets may list before the credentials' watch lists them."""
    rec, queue = reconciler()
    rec.forget(NS, NAME)
    rec.target_seen(seen(secret("typed-over", version="7"), "LISTED"))
    rec.observe(
        {
            "metadata": {"namespace": NS, "name": NAME, "uid": UID, "generation": 1},
            "spec": {"tokenURL": "https://idp.example/t", "clientSecretRef": {"name": "c"}},
            "status": {
                "observedGeneration": 1,
                "target": TARGET,
                "lastRefreshAt": model.format_time(T0 - 60 * S),  # not what the Secret says
                "expiresAt": model.format_time(T0 + 3540 * S),
                "nextRefreshAt": model.format_time(T0 + 2300 * S),
            },
        }
    )
    due = queue.due_at(KEY)
    assert due is not None
    assert due != (T0 + 2300 * S).timestamp()  # not at its next refresh: re-checked now
    assert due <= time.time()
    record = rec._tracker.get(KEY)
    assert record is not None
    assert record.target_uid is None


def test_unclaimed_target_events_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "UNCLAIMED_MAX", 3)
    tracker = tracking.Tracker()
    for i in range(5):
        found = dataclasses.replace(seen(secret()), owner=(f"c{i}", "u"))
        tracker.park_target(found, now=float(i))
    assert tracker.claim_target((NS, "c0")) is None  # beyond the bound: the oldest went
    assert tracker.claim_target((NS, "c4")) is not None
    tracker.park_target(dataclasses.replace(seen(secret()), owner=("late", "u")), now=100.0)
    assert tracker.claim_target((NS, "c3")) is None  # older than a minute
    assert tracker.claim_target((NS, "late")) is not None
