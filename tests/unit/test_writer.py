"""The target Secret's write: which refusals of the API server are permanent.

A 422 on the uid-conditional patch means the Secret was replaced (decision 0007) and the
writer starts over; a 422 from a create, or from a patch with the uid just read, means the
Secret itself is invalid (TargetInvalid, permanent), not a reason to fetch a new token at
every backoff (issue 14, section 5). The Kubernetes API is a scripted fake.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensync import (
    failures,
    model,
    outcome,
    ownership,
    progress,
    provenance,
    target,
    timing,
    tracking,
    writer,
)

NAMESPACE, NAME, UID, TARGET = "team-a", "payments", "uid-payments", "payments-token"
OWNER_POLICY = model.TargetSpec(name=TARGET)
BODY: dict[str, Any] = {
    "metadata": {"name": TARGET, "namespace": NAMESPACE, "annotations": {"a": "x" * 300_000}},
    "data": {"access_token": "dG9r"},
}
OWNED = {
    "metadata": {
        "name": TARGET,
        "uid": "uid-target",
        "labels": {model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE},
        "ownerReferences": [{"uid": UID}],
    }
}


class ScriptedKube:
    """Answers create and patch from a script of HTTP statuses (200: success)."""

    def __init__(self, *, creates: list[int], patches: list[int], existing: Any = None) -> None:
        self.creates, self.patches, self.existing = creates, patches, existing
        self.calls: list[str] = []

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        status = self.creates.pop(0)
        if status != 200:
            raise failures.ApiError(status, "Invalid" if status == 422 else "Refused")
        return {"metadata": {"uid": "uid-created"}}

    async def patch_secret(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append(f"patch {body['metadata']['uid']}")
        status = self.patches.pop(0)
        if status != 200:
            raise failures.ApiError(status, "Invalid" if status == 422 else "Refused")

    async def read_secret(self, namespace: str, name: str) -> Any:
        self.calls.append("read")
        return self.existing


def record(*, target_uid: str | None) -> tracking.Record:
    return tracking.Record(
        namespace=NAMESPACE,
        name=NAME,
        uid=UID,
        generation=1,
        spec_json="{}",
        refresh_request=None,
        target_name=TARGET if target_uid else None,
        target_uid=target_uid,
    )


async def write(kube: ScriptedKube, *, target_uid: str | None) -> failures.Failure | None:
    try:
        await writer.TargetWriter(kube_api=kube).write(  # type: ignore[arg-type]
            record(target_uid=target_uid), BODY, policy=OWNER_POLICY
        )
    except failures.Failure as failure:
        return failure
    return None


@pytest.mark.parametrize(
    ("script", "target_uid", "calls"),
    [
        pytest.param({"creates": [422], "patches": []}, None, ["create"], id="create"),
        pytest.param(
            {"creates": [409], "patches": [422], "existing": OWNED},
            None,
            ["create", "read", "patch uid-target"],
            id="patch-with-the-uid-just-read",
        ),
        pytest.param(
            # The remembered uid's 422 could be a replaced Secret: start over; the create
            # says it is the Secret itself (the API server validates before it conflicts).
            {"creates": [422], "patches": [422]},
            "uid-target",
            ["patch uid-target", "create"],
            id="remembered-uid-then-create",
        ),
        pytest.param(
            {"creates": [409], "patches": [422, 422], "existing": OWNED},
            "uid-target",
            ["patch uid-target", "create", "read", "patch uid-target"],
            id="remembered-uid-then-read",
        ),
    ],
)
async def test_an_invalid_target_is_a_permanent_failure(
    script: dict[str, Any], target_uid: str | None, calls: list[str]
) -> None:
    kube = ScriptedKube(**script)
    failure = await write(kube, target_uid=target_uid)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_INVALID,
        failures.Kind.PERMANENT,
    )
    assert failure.message.startswith(f"the API server refused the target Secret {TARGET!r}")
    assert "422" in failure.message
    assert "xxx" not in failure.message
    assert kube.calls == calls


async def test_a_replaced_target_is_still_a_conflict() -> None:
    foreign = {"metadata": {"name": TARGET, "uid": "uid-other", "labels": {}}}
    kube = ScriptedKube(creates=[409], patches=[422], existing=foreign)
    failure = await write(kube, target_uid="uid-target")
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_CONFLICT


@pytest.mark.parametrize("status", [0, 403, 500, 503])
async def test_other_refusals_stay_transient(status: int) -> None:
    failure = await write(ScriptedKube(creates=[status], patches=[]), target_uid=None)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_WRITE_FAILED,
        failures.Kind.TRANSIENT,
    )


def test_an_invalid_target_is_retried_slowly_not_at_every_backoff() -> None:
    now = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
    invalid = failures.Failure(failures.Reason.TARGET_INVALID, "422", kind=failures.Kind.PERMANENT)
    state = progress.State(expires_at=now - datetime.timedelta(seconds=1), failed_attempts=3)
    attempt = progress.Attempt(generation=1, request=None)
    decision = outcome.decide(state, attempt, invalid, now=now, draw=0.5)
    assert decision.due == now + datetime.timedelta(minutes=5)
    assert decision.ready is False
    assert decision.status["conditions"][0]["reason"] == "TargetInvalid"


# -- two writers (issue 14 section 9, decision 0036) -------------------------------------------

T0 = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
POLICY = model.RefreshPolicy()


class SecretStore:
    """One namespace's Secrets with the API server's preconditions: a uid that differs is
    422, a resourceVersion that differs 409, a missing Secret 404, an existing one 409 on
    create. ``before_write`` runs once before the next write lands (another writer)."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.version = 100
        self.before_write: list[Any] = []
        self.calls: list[str] = []

    def _bump(self, secret: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        secret["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(secret)

    async def _interlope(self) -> None:
        pending, self.before_write = self.before_write, []
        for write in pending:
            await write()

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("read")
        found = self.secrets.get(name)
        return copy.deepcopy(found) if found else None

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        await self._interlope()
        name = body["metadata"]["name"]
        if name in self.secrets:
            raise failures.ApiError(409, "AlreadyExists")
        created = copy.deepcopy(body)
        self.version += 1
        created["metadata"]["uid"] = f"uid-{self.version}"
        self.secrets[name] = created
        return self._bump(created)

    async def patch_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("patch")
        await self._interlope()
        current = self.secrets.get(name)
        if current is None:
            raise failures.ApiError(404, "NotFound")
        meta = body["metadata"]
        if meta.get("uid") not in (None, current["metadata"]["uid"]):
            raise failures.ApiError(422, "Invalid")
        version = meta.get("resourceVersion")
        if version is not None and version != current["metadata"]["resourceVersion"]:
            raise failures.ApiError(409, "Conflict")
        if body.get("type", current.get("type")) != current.get("type"):
            raise failures.ApiError(422, "Invalid")  # a Secret's type is immutable
        current.setdefault("data", {})
        for key, value in body["data"].items():
            if value is None:
                current["data"].pop(key, None)
            else:
                current["data"][key] = value
        for field in ("labels", "annotations"):
            current["metadata"].setdefault(field, {}).update(meta.get(field) or {})
        if "ownerReferences" in meta:  # a strategic merge: by uid, "$patch: delete" removes
            refs = {r["uid"]: r for r in current["metadata"].get("ownerReferences") or []}
            for ref in meta["ownerReferences"]:
                if ref.get("$patch") == "delete":
                    refs.pop(ref["uid"], None)
                else:
                    refs[ref["uid"]] = ref
            current["metadata"]["ownerReferences"] = list(refs.values())
        return self._bump(current)

    def put(self, secret: dict[str, Any]) -> dict[str, Any]:
        """A Secret someone else created."""
        self.version += 1
        secret["metadata"].update(uid=f"uid-{self.version}", resourceVersion=str(self.version))
        self.secrets[secret["metadata"]["name"]] = secret
        return secret

    def issued(self) -> datetime.datetime | None:
        found = self.secrets.get(TARGET)
        times = target.whole_times(found) if found else None
        return times[0] if times else None


def rendered(
    issued: datetime.datetime,
    token: str,
    policy: model.TargetSpec = OWNER_POLICY,
    uid: str = UID,
) -> dict[str, Any]:
    expires = issued + datetime.timedelta(hours=1)
    return target.render_target(
        namespace=NAMESPACE,
        credential=NAME,
        credential_uid=uid,
        target=policy,
        access_token=token,
        token_type="Bearer",
        expires_at=expires,
        scope=None,
        issued_at=issued,
        refresh_at=timing.refresh_at(
            issued_at=issued, expires_at=expires, policy=POLICY, jitter=0.5
        ),
    )


async def write_token(
    store: SecretStore,
    rec: tracking.Record,
    issued: datetime.datetime,
    token: str,
    *,
    now: datetime.datetime | None = None,
) -> target.TokenTimes | None:
    """Write a token issued at ``issued``; ``now`` (the writer's clock, by default the
    issue time) may be later: a token fetched a while ago, written now."""
    body = rendered(issued, token)
    return await writer.TargetWriter(kube_api=store).write(  # type: ignore[arg-type]
        rec,
        body,
        policy=OWNER_POLICY,
        wins=lambda times: provenance.supersedes(
            times,
            issued_at=issued,
            expires_at=issued + datetime.timedelta(hours=1),
            policy=POLICY,
            now=now or issued,
        ),
    )


def fresh() -> tracking.Record:
    return record(target_uid=None)


async def test_a_later_token_from_another_writer_is_kept() -> None:
    store, a, b = SecretStore(), fresh(), fresh()
    assert await write_token(store, a, T0, "a1") is None
    assert await write_token(store, b, T0 + 10 * S, "b1") is None  # create: 409, read, patch
    # a's next write is conditional on the version a wrote: refused, read, b's is later.
    kept = await write_token(store, a, T0 + 5 * S, "a2")
    assert kept is not None
    assert kept[0] == T0 + 10 * S
    assert target.whole_times(store.secrets[TARGET]) == kept
    # a now knows that version: its next, later token is written without a conflict.
    store.calls.clear()
    assert await write_token(store, a, T0 + 20 * S, "a3") is None
    assert store.calls == ["patch"]
    assert store.issued() == T0 + 20 * S


async def test_a_token_of_the_same_second_is_not_replaced() -> None:
    store, a, b = SecretStore(), fresh(), fresh()
    await write_token(store, a, T0 + 0.9 * S, "a1")
    kept = await write_token(store, b, T0 + 0.1 * S, "b1")
    assert kept is not None
    assert store.issued() == T0  # whole seconds, as the annotation holds it
    assert "YTE=" in str(store.secrets[TARGET]["data"]["access_token"])  # "a1"


async def test_an_edited_target_is_written_over() -> None:
    store, a = SecretStore(), fresh()
    await write_token(store, a, T0, "a1")
    store.secrets[TARGET]["data"]["access_token"] = "ZWRpdGVk"  # "edited": no longer whole
    store.version += 1
    store.secrets[TARGET]["metadata"]["resourceVersion"] = str(store.version)
    edited = target.digest(store.secrets[TARGET])
    assert await write_token(store, a, T0 + 60 * S, "a2") is None
    assert store.issued() == T0 + 60 * S
    # The watch event of the edit may still come: it is known, not a change to repair.
    assert (a.target_digest, a.target_previous) == (target.digest(store.secrets[TARGET]), edited)
    assert a.target_version == store.secrets[TARGET]["metadata"]["resourceVersion"]


async def test_a_write_racing_another_is_read_again_each_time() -> None:
    store, a, b = SecretStore(), fresh(), fresh()
    await write_token(store, a, T0, "a1")
    await write_token(store, b, T0 + 1 * S, "b1")

    async def b_writes_later() -> None:
        await write_token(store, b, T0 + 30 * S, "b2")

    # a's patch is refused (b wrote), a reads b1 (older than a's): a writes again, but b
    # writes b2 just before: refused again, read again, b2 is later: kept.
    store.before_write.append(b_writes_later)
    kept = await write_token(store, a, T0 + 20 * S, "a2")
    assert kept is not None
    assert kept[0] == T0 + 30 * S
    assert store.issued() == T0 + 30 * S


async def test_a_target_that_changes_at_every_write_fails_transiently() -> None:
    store, a = SecretStore(), fresh()
    await write_token(store, a, T0, "a1")

    async def edit() -> None:
        store.secrets[TARGET]["data"]["access_token"] = "ZWRpdGVk"
        store.version += 1
        store.secrets[TARGET]["metadata"]["resourceVersion"] = str(store.version)
        store.before_write.append(edit)

    store.before_write.append(edit)
    with pytest.raises(failures.Failure) as failed:
        await write_token(store, a, T0 + 60 * S, "a2")
    assert failed.value.reason is failures.Reason.TARGET_WRITE_FAILED
    assert failed.value.kind is failures.Kind.TRANSIENT
    assert "a2" not in failed.value.message


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2), st.integers(min_value=0, max_value=50)),
        min_size=1,
        max_size=30,
    )
)
async def test_the_issue_time_never_goes_backwards(writes: list[tuple[int, int]]) -> None:
    """Three writers, each writing tokens of its own increasing issue times (a writer may
    write a token fetched long before), interleaved in any order: the Secret's issue time
    never decreases."""
    store = SecretStore()
    records = [fresh() for _ in range(3)]
    clocks = [0, 0, 0]
    last: datetime.datetime | None = None
    for who, step in writes:
        clocks[who] += step
        issued, now = T0 + clocks[who] * S, T0 + max(clocks) * S
        rec = records[who]
        kept = await write_token(store, rec, issued, f"t{who}-{clocks[who]}", now=now)
        # As outcome.decide leaves it: the token written, or the one adopted.
        rec.state = dataclasses.replace(rec.state, issued_at=kept[0] if kept else issued)
        now = store.issued()
        assert now is not None
        if kept is None:
            assert now == issued.replace(microsecond=0)
        else:
            assert kept[0] >= issued.replace(microsecond=0)
        assert last is None or now >= last
        last = now


# -- creation and deletion policies (issue 16 section 2, decision 0041) -----------------------

ADOPT = model.TargetSpec(name=TARGET, creation_policy=model.CreationPolicy.ADOPT)
MERGE = model.TargetSpec(name=TARGET, creation_policy=model.CreationPolicy.MERGE)
RETAIN = model.TargetSpec(name=TARGET, deletion_policy=model.DeletionPolicy.RETAIN)
DOCKER = "kubernetes.io/dockerconfigjson"
CONFIGMAP_OWNER = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "name": "settings",
    "uid": "uid-configmap",
    "controller": True,
}


def cronjob_secret(*, hand_over: str | None = NAME, **meta: Any) -> dict[str, Any]:
    """A Secret a CronJob wrote, with data of its own; handed over to ``hand_over``."""
    annotations = {"example.com/note": "kept"}
    if hand_over is not None:
        annotations[ownership.HAND_OVER_ANNOTATION] = hand_over
    return {
        "type": meta.pop("type", "Opaque"),
        "metadata": {
            "name": TARGET,
            "labels": {"app": "legacy"},
            "annotations": annotations,
            **meta,
        },
        "data": {"token": "b2xk", "ca.crt": "Y2E="},
    }


def handled(rec: tracking.Record) -> None:
    """As outcome leaves a record after a success: this generation of the spec handled."""
    rec.state = dataclasses.replace(rec.state, handled_generation=rec.generation)


async def run_attempt(
    store: SecretStore,
    rec: tracking.Record,
    policy: model.TargetSpec,
    *,
    issued: datetime.datetime = T0,
    secret_type: str | None = None,
    listings: writer.TargetListings | None = None,
) -> failures.Failure | None:
    """What attempt.py does around the token request: check, then write."""
    targets = writer.TargetWriter(kube_api=store, listings=listings)  # type: ignore[arg-type]
    try:
        await targets.check(rec, policy)
        body = rendered(issued, f"tok-{issued.second}", policy, uid=rec.uid)
        if secret_type is not None:
            body["type"] = secret_type
        await targets.write(rec, body, policy=policy)
    except failures.Failure as failure:
        return failure
    return None


async def test_adopt_takes_a_handed_over_secret_keeping_its_uid_and_keys() -> None:
    store, rec = SecretStore(), fresh()
    uid = store.put(cronjob_secret())["metadata"]["uid"]
    assert await run_attempt(store, rec, ADOPT) is None
    assert store.calls == ["read", "patch"]
    secret = store.secrets[TARGET]
    meta = secret["metadata"]
    assert meta["uid"] == uid
    assert (secret["data"]["token"], secret["data"]["ca.crt"]) == ("b2xk", "Y2E=")
    assert target.whole_times(secret) is not None
    assert meta["labels"] == {
        "app": "legacy",
        model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE,
        target.CREDENTIAL_LABEL: NAME,
    }
    assert meta["ownerReferences"] == [ownership.owner_reference(name=NAME, uid=UID)]
    assert meta["annotations"]["example.com/note"] == "kept"
    assert meta["annotations"][ownership.LINK_ANNOTATION] == f"{NAME}/{UID}"
    # Managed like an owned one from now on: the next write needs no read.
    handled(rec)
    store.calls.clear()
    assert await run_attempt(store, rec, ADOPT, issued=T0 + 60 * S) is None
    assert store.calls == ["patch"]


@pytest.mark.parametrize("policy", [ADOPT, MERGE], ids=["Adopt", "Merge"])
@pytest.mark.parametrize("hand_over", [None, "someone-else", ""], ids=["none", "other", "empty"])
async def test_a_secret_not_handed_over_is_refused_before_any_token(
    policy: model.TargetSpec, hand_over: str | None
) -> None:
    store, rec = SecretStore(), fresh()
    before = copy.deepcopy(store.put(cronjob_secret(hand_over=hand_over)))
    failure = await run_attempt(store, rec, policy)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_NOT_HANDED_OVER,
        failures.Kind.PERMANENT,
    )
    assert f"{ownership.HAND_OVER_ANNOTATION}={NAME}" in failure.message
    assert store.calls == ["read"]  # check refused it: no token was asked for
    assert store.secrets[TARGET] == before


async def test_owner_refuses_even_a_handed_over_secret() -> None:
    store = SecretStore()
    store.put(cronjob_secret())
    failure = await run_attempt(store, fresh(), OWNER_POLICY)
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_CONFLICT
    assert store.calls == ["read"]


async def test_adopt_refuses_a_secret_another_controller_owns() -> None:
    store = SecretStore()
    store.put(cronjob_secret(ownerReferences=[CONFIGMAP_OWNER]))
    failure = await run_attempt(store, fresh(), ADOPT)
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_CONFLICT
    assert "'ConfigMap' 'settings'" in failure.message
    assert "creationPolicy Merge" in failure.message


async def test_merge_writes_only_tokensyncs_keys() -> None:
    store, rec = SecretStore(), fresh()
    put = store.put(
        cronjob_secret(
            ownerReferences=[CONFIGMAP_OWNER],
            labels={model.MANAGED_BY_LABEL: "Helm", "app": "legacy"},
        )
    )
    before = copy.deepcopy(put)
    assert await run_attempt(store, rec, MERGE) is None
    secret = store.secrets[TARGET]
    meta = secret["metadata"]
    assert meta["uid"] == before["metadata"]["uid"]
    assert secret["type"] == "Opaque"
    assert meta["ownerReferences"] == [CONFIGMAP_OWNER]  # never one of ours
    assert meta["labels"] == {
        model.MANAGED_BY_LABEL: "Helm",  # the owner's: Helm checks it on upgrade
        "app": "legacy",
        ownership.MERGE_LABEL: "true",
        target.CREDENTIAL_LABEL: NAME,
    }
    for key, value in before["data"].items():
        assert secret["data"][key] == value
    assert set(secret["data"]) - set(before["data"]) == set(target.DATA_KEYS) - {"scope"}
    for key, value in before["metadata"]["annotations"].items():
        assert meta["annotations"][key] == value
    assert ownership.linked_to(secret, uid=UID)


async def test_merge_never_creates_the_secret() -> None:
    store, rec = SecretStore(), fresh()
    failure = await run_attempt(store, rec, MERGE)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_NOT_FOUND,
        failures.Kind.PERMANENT,
    )
    assert store.calls == ["read"]
    # Deleted after it was written: the remembered uid's patch fails, and it is not created.
    store.put(cronjob_secret())
    assert await run_attempt(store, rec, MERGE) is None
    del store.secrets[TARGET]
    store.calls.clear()
    rec.state = dataclasses.replace(rec.state, handled_generation=rec.generation)
    failure = await run_attempt(store, rec, MERGE, issued=T0 + 60 * S)
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_NOT_FOUND
    assert "create" not in store.calls


async def test_a_changed_deletion_policy_applies_at_the_next_write() -> None:
    store, rec = SecretStore(), fresh()
    assert await run_attempt(store, rec, OWNER_POLICY) is None
    ours = [ownership.owner_reference(name=NAME, uid=UID)]
    assert store.secrets[TARGET]["metadata"]["ownerReferences"] == ours
    uid = store.secrets[TARGET]["metadata"]["uid"]
    assert await run_attempt(store, rec, RETAIN, issued=T0 + 60 * S) is None
    meta = store.secrets[TARGET]["metadata"]
    assert (meta["ownerReferences"], meta["uid"]) == ([], uid)
    assert ownership.linked_to(store.secrets[TARGET], uid=UID)  # the annotation links it
    assert await run_attempt(store, rec, OWNER_POLICY, issued=T0 + 120 * S) is None
    assert store.secrets[TARGET]["metadata"]["ownerReferences"] == ours


async def test_a_retained_secret_is_created_without_an_owner_reference() -> None:
    store = SecretStore()
    assert await run_attempt(store, fresh(), RETAIN) is None
    assert store.secrets[TARGET]["metadata"]["ownerReferences"] == []


def docker(policy: model.TargetSpec) -> model.TargetSpec:
    """``policy`` with spec.target.type changed to dockerconfigjson."""
    return dataclasses.replace(
        policy,
        type=model.SecretType.DOCKER_CONFIG_JSON,
        docker_config=model.DockerConfig(registry="registry.example.com"),
    )


@pytest.mark.parametrize(
    "policy", [OWNER_POLICY, ADOPT, RETAIN], ids=["Owner", "Adopt", "Owner-Retain"]
)
async def test_a_type_change_is_refused_before_any_token_and_nothing_deleted(
    policy: model.TargetSpec,
) -> None:
    """spec.target.type changed for a Secret tokensync wrote: a type is immutable and the
    operator deletes nothing (decision 0041), so check refuses it (TargetTypeMismatch)
    before the token request and leaves it as it is. Once the user deletes it, the next
    attempt creates it with the new type."""
    store, rec = SecretStore(), fresh()
    assert await run_attempt(store, rec, policy) is None
    handled(rec)
    before = copy.deepcopy(store.secrets[TARGET])
    rec.generation += 1  # the spec changed
    store.calls.clear()
    failure = await run_attempt(store, rec, docker(policy), issued=T0 + 60 * S)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_TYPE_MISMATCH,
        failures.Kind.PERMANENT,
    )
    assert "delete the Secret; tokensync creates it anew with the new type" in failure.message
    assert store.calls == ["read"]  # refused at check: no token asked for, nothing written
    assert store.secrets[TARGET] == before
    del store.secrets[TARGET]  # the user deletes it, as the message says
    assert await run_attempt(store, rec, docker(policy), issued=T0 + 120 * S) is None
    assert store.secrets[TARGET]["type"] == DOCKER
    assert rec.target_uid == store.secrets[TARGET]["metadata"]["uid"]


async def test_a_type_mismatch_met_at_the_write_is_refused_too() -> None:
    """A Secret of another type met at the write (the patch's 422, the create's 409, the
    read): refused there as well, the Secret left as it is."""
    store, rec = SecretStore(), fresh()
    assert await run_attempt(store, rec, OWNER_POLICY) is None
    before = copy.deepcopy(store.secrets[TARGET])
    failure = await run_attempt(store, rec, OWNER_POLICY, issued=T0 + 60 * S, secret_type=DOCKER)
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_TYPE_MISMATCH
    assert store.secrets[TARGET] == before


async def test_a_foreign_secret_of_another_type_is_never_deleted() -> None:
    store = SecretStore()
    before = copy.deepcopy(store.put(cronjob_secret(hand_over=None)))
    failure = await run_attempt(store, fresh(), docker(OWNER_POLICY))
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_CONFLICT
    assert store.calls == ["read"]
    assert store.secrets[TARGET] == before


@pytest.mark.parametrize("policy", [ADOPT, MERGE], ids=["Adopt", "Merge"])
async def test_a_handed_over_secret_of_another_type_is_refused_before_any_token(
    policy: model.TargetSpec,
) -> None:
    store = SecretStore()
    store.put(cronjob_secret(type=DOCKER))
    failure = await run_attempt(store, fresh(), policy)
    assert failure is not None
    assert (failure.reason, failure.kind) == (
        failures.Reason.TARGET_TYPE_MISMATCH,
        failures.Kind.PERMANENT,
    )
    assert f"{DOCKER!r}" in failure.message
    assert "'Opaque'" in failure.message
    assert store.calls == ["read"]


async def test_a_merge_target_of_another_type_is_refused_not_replaced() -> None:
    store, rec = SecretStore(), fresh()
    store.put(cronjob_secret())
    assert await run_attempt(store, rec, MERGE) is None
    store.calls.clear()
    before = copy.deepcopy(store.secrets[TARGET])
    handled(rec)
    rec.generation += 1  # the spec changed
    failure = await run_attempt(store, rec, docker(MERGE), issued=T0 + 60 * S)
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_TYPE_MISMATCH
    assert "recreate it with that type" in failure.message
    assert store.calls == ["read"]
    assert store.secrets[TARGET] == before


async def test_a_retained_secret_of_a_deleted_credential_needs_a_new_hand_over() -> None:
    """A credential of the same name (a new uid) does not take the Secret its predecessor
    retained, hand-over annotation or not, until someone who may write the Secret removes
    the old link."""
    store = SecretStore()
    old = tracking.Record(
        namespace=NAMESPACE,
        name=NAME,
        uid="uid-old",
        generation=1,
        spec_json="{}",
        refresh_request=None,
    )
    store.put(cronjob_secret())
    assert (
        await run_attempt(
            store, old, dataclasses.replace(ADOPT, deletion_policy=RETAIN.deletion_policy)
        )
        is None
    )
    failure = await run_attempt(store, fresh(), ADOPT)
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_CONFLICT
    assert "uid-old" in failure.message
    assert ownership.LINK_ANNOTATION in failure.message
    del store.secrets[TARGET]["metadata"]["annotations"][ownership.LINK_ANNOTATION]
    assert await run_attempt(store, fresh(), ADOPT) is None
    assert ownership.linked_to(store.secrets[TARGET], uid=UID)


async def test_the_spec_s_type_is_checked_before_any_token() -> None:
    """spec.target.type asks for another type than the Merge target has: refused at check."""
    store = SecretStore()
    store.put(cronjob_secret())
    docker = dataclasses.replace(MERGE, type=model.SecretType.DOCKER_CONFIG_JSON)
    with pytest.raises(failures.Failure) as refused:
        await writer.TargetWriter(kube_api=store).check(fresh(), docker)  # type: ignore[arg-type]
    assert refused.value.reason is failures.Reason.TARGET_TYPE_MISMATCH
    assert store.calls == ["read"]


async def test_a_handed_over_secret_s_keys_are_not_taken_for_tokensyncs() -> None:
    """A CronJob's Secret that happens to hold access_token: taken with a template, its key
    stays (tokensync removes only keys it wrote itself)."""
    store, rec = SecretStore(), fresh()
    secret = cronjob_secret()
    secret["data"]["access_token"] = "Y3Jvbg=="
    store.put(secret)
    await writer.TargetWriter(kube_api=store).check(rec, MERGE)  # type: ignore[arg-type]
    assert rec.target_written is None  # the render's ``previous``: nothing to remove


# -- a new credential's target, created unread once the target watches listed (0052) ------


def listed(*scopes: str | None) -> writer.TargetListings:
    """Target watches of ``scopes`` (None: all namespaces), each done listing."""
    listings = writer.TargetListings()
    for scope in scopes:
        listings.expect(scope)
        listings.listed(scope)
    return listings


def test_a_namespace_is_listed_once_every_watch_covering_it_has() -> None:
    listings = writer.TargetListings()
    assert not listings.complete(NAMESPACE)  # no watch: nothing is known
    listings.expect(NAMESPACE)
    listings.expect(NAMESPACE)  # managed and Merge targets: two watches
    listings.listed(NAMESPACE)
    assert not listings.complete(NAMESPACE)
    listings.listed(NAMESPACE)
    assert listings.complete(NAMESPACE)
    assert not listings.complete("team-b")  # another namespace's watch says nothing here
    everywhere = listed(None)
    assert everywhere.complete(NAMESPACE)
    assert everywhere.complete("team-b")
    everywhere.expect(None)  # a second cluster-wide watch, not listed yet
    assert not everywhere.complete(NAMESPACE)


async def test_a_new_credential_creates_its_target_without_reading_it() -> None:
    store = SecretStore()
    assert await run_attempt(store, fresh(), OWNER_POLICY, listings=listed(NAMESPACE)) is None
    assert store.calls == ["create"]


async def test_the_target_is_read_until_the_watches_have_listed() -> None:
    store, listings = SecretStore(), writer.TargetListings()
    listings.expect(NAMESPACE)
    assert await run_attempt(store, fresh(), OWNER_POLICY, listings=listings) is None
    assert store.calls == ["read", "create"]


@pytest.mark.parametrize(
    "change",
    [
        {"failed_attempts": 1},  # after a failure: refused before any token, as before
        {"handled_generation": 1},  # a credential this process (or status) handled
    ],
    ids=["failed-before", "handled-before"],
)
async def test_a_credential_with_a_past_reads_its_target_first(change: dict[str, Any]) -> None:
    store, rec = SecretStore(), fresh()
    rec.state = dataclasses.replace(rec.state, **change)
    await run_attempt(store, rec, OWNER_POLICY, listings=listed(NAMESPACE))
    assert store.calls[0] == "read"


@pytest.mark.parametrize("policy", [ADOPT, MERGE], ids=["Adopt", "Merge"])
async def test_a_target_that_may_be_handed_over_is_always_read(policy: model.TargetSpec) -> None:
    store = SecretStore()
    store.put(cronjob_secret(hand_over=NAME))
    assert await run_attempt(store, fresh(), policy, listings=listed(NAMESPACE)) is None
    assert store.calls == ["read", "patch"]


async def test_a_foreign_secret_the_watches_cannot_see_is_still_refused() -> None:
    """An Owner target that exists but is not tokensync's: the create's 409 reads it and
    refuses it, untouched; the next attempt reads it before any token."""
    store, rec = SecretStore(), fresh()
    before = copy.deepcopy(store.put(cronjob_secret()))
    listings = listed(NAMESPACE)
    failure = await run_attempt(store, rec, OWNER_POLICY, listings=listings)
    assert failure is not None
    assert failure.reason is failures.Reason.TARGET_CONFLICT
    assert store.calls == ["create", "read"]
    assert store.secrets[TARGET] == before
    rec.state = dataclasses.replace(rec.state, failed_attempts=1)
    store.calls.clear()
    with pytest.raises(failures.Failure):
        await writer.TargetWriter(kube_api=store, listings=listings).check(  # type: ignore[arg-type]
            rec, OWNER_POLICY
        )
    assert store.calls == ["read"]
