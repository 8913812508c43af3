"""Which target Secret a credential may write, and the link between them (decision 0041).

Each rule of ``ownership.decide`` is a row: the Secret as read, the policy, and what the
writer may do (or the reason it may not).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from tokensync import failures, model, ownership, parsing, target

NAME, UID, TARGET = "billing", "0b6c7e0e-1111-4a4a-9c9c-000000000001", "billing-token"
OTHER_UID = "0b6c7e0e-2222-4a4a-9c9c-000000000002"
OWNER, ADOPT, MERGE = (
    model.CreationPolicy.OWNER,
    model.CreationPolicy.ADOPT,
    model.CreationPolicy.MERGE,
)
MANAGED = {model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE}
MERGED = {ownership.MERGE_LABEL: "true"}
HANDED = {ownership.HAND_OVER_ANNOTATION: NAME}
OURS = ownership.owner_reference(name=NAME, uid=UID)
THEIRS = ownership.owner_reference(name=NAME, uid=OTHER_UID)
CONTROLLER = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-1",
              "controller": True}  # fmt: skip
NOT_CONTROLLER = {**CONTROLLER, "controller": False}
DOCKER = "kubernetes.io/dockerconfigjson"
R = failures.Reason
T = ownership.Take


def secret(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": TARGET,
            "labels": labels or {},
            "annotations": annotations or {},
            "ownerReferences": owners or [],
        }
    }
    if type_ is not None:
        body["type"] = type_
    return body


def link(uid: str = UID) -> dict[str, str]:
    return {ownership.LINK_ANNOTATION: f"{NAME}/{uid}"}


ALL = (OWNER, ADOPT, MERGE)
ROWS: list[tuple[str, dict[str, Any] | None, tuple[model.CreationPolicy, ...], object]] = [
    # (what, the Secret as read, the policies the row holds for, what decide says)
    ("absent: created", None, (OWNER, ADOPT), T.CREATE),
    ("absent: a Merge target is never created", None, (MERGE,), R.TARGET_NOT_FOUND),
    ("ours by ownerReference", secret(labels=MANAGED, owners=[OURS]), ALL, T.WRITE),
    ("ours by the link annotation (Retain)", secret(labels=MANAGED, annotations=link()), ALL,
     T.WRITE),
    ("ours, a Merge target", secret(labels=MERGED, annotations=link(), owners=[CONTROLLER]),
     ALL, T.WRITE),
    ("ours, of another type: refused, never deleted",
     secret(labels=MANAGED, owners=[OURS], type_=DOCKER), (OWNER, ADOPT), R.TARGET_TYPE_MISMATCH),
    ("ours (Retain), of another type: refused",
     secret(labels=MANAGED, annotations=link(), type_=DOCKER), (OWNER, ADOPT),
     R.TARGET_TYPE_MISMATCH),
    ("ours, of another type, Merge: refused",
     secret(labels=MERGED, annotations=link(), type_=DOCKER), (MERGE,), R.TARGET_TYPE_MISMATCH),
    ("linked, but unlabelled: not ours", secret(owners=[OURS]), (OWNER,), R.TARGET_CONFLICT),
    ("another credential's (live)", secret(labels=MANAGED, owners=[THEIRS], annotations=HANDED),
     ALL, R.TARGET_CONFLICT),
    ("retained by a deleted credential of the same name, handed over",
     secret(labels=MANAGED, annotations={**link(OTHER_UID), **HANDED}), ALL, R.TARGET_CONFLICT),
    ("foreign, Owner", secret(annotations=HANDED), (OWNER,), R.TARGET_CONFLICT),
    ("foreign, no hand-over", secret(), (ADOPT, MERGE), R.TARGET_NOT_HANDED_OVER),
    ("foreign, handed over to another credential",
     secret(annotations={ownership.HAND_OVER_ANNOTATION: "other"}), (ADOPT, MERGE),
     R.TARGET_NOT_HANDED_OVER),
    ("foreign, hand-over in a label does not count",
     secret(labels={ownership.HAND_OVER_ANNOTATION: NAME}), (ADOPT, MERGE),
     R.TARGET_NOT_HANDED_OVER),
    ("handed over", secret(annotations=HANDED), (ADOPT, MERGE), T.TAKE),
    ("handed over, managed-by someone else", secret(labels={model.MANAGED_BY_LABEL: "Helm"},
     annotations=HANDED), (ADOPT, MERGE), T.TAKE),
    ("handed over, another controller: Adopt refuses", secret(annotations=HANDED,
     owners=[CONTROLLER]), (ADOPT,), R.TARGET_CONFLICT),
    ("handed over, another controller: Merge writes into it", secret(annotations=HANDED,
     owners=[CONTROLLER]), (MERGE,), T.TAKE),
    ("handed over, a non-controlling owner", secret(annotations=HANDED, owners=[NOT_CONTROLLER]),
     (ADOPT, MERGE), T.TAKE),
    ("handed over, of another type", secret(annotations=HANDED, type_=DOCKER), (ADOPT, MERGE),
     R.TARGET_TYPE_MISMATCH),
]  # fmt: skip
CASES = [
    pytest.param(found, policy, expected, id=f"{what} [{policy.value}]")
    for what, found, policies, expected in ROWS
    for policy in policies
]


@pytest.mark.parametrize(("found", "creation", "expected"), CASES)
def test_decide(
    found: dict[str, Any] | None, creation: model.CreationPolicy, expected: object
) -> None:
    policy = model.TargetSpec(name=TARGET, creation_policy=creation)
    got = ownership.decide(found, name=TARGET, policy=policy, credential=NAME, uid=UID)
    if isinstance(expected, ownership.Take):
        assert got is expected
        return
    assert isinstance(got, failures.Failure)
    assert got.reason is expected
    assert got.kind is failures.Kind.PERMANENT  # slow retry, at once on a spec change
    assert repr(TARGET) in got.message


def test_the_wanted_type_decides_the_type_rules() -> None:
    policy = model.TargetSpec(name=TARGET, creation_policy=MERGE)
    found = secret(annotations=HANDED, type_=DOCKER)
    got = ownership.decide(
        found, name=TARGET, policy=policy, credential=NAME, uid=UID, wanted_type=DOCKER
    )
    assert got is T.TAKE
    mismatch = ownership.decide(found, name=TARGET, policy=policy, credential=NAME, uid=UID)
    assert isinstance(mismatch, failures.Failure)
    assert f"{DOCKER!r}" in mismatch.message
    assert "'Opaque'" in mismatch.message


@pytest.mark.parametrize("creation", ALL, ids=[policy.value for policy in ALL])
def test_a_type_mismatch_says_what_the_user_does(creation: model.CreationPolicy) -> None:
    """tokensync deletes no Secret (its role has no delete, decision 0041): the message
    tells the user to delete a Secret tokensync created or adopted, and a Merge target's
    owner to recreate theirs."""
    found = (
        secret(labels=MERGED, annotations=link(), type_=DOCKER)
        if creation is MERGE
        else secret(labels=MANAGED, owners=[OURS], type_=DOCKER)
    )
    policy = model.TargetSpec(name=TARGET, creation_policy=creation)
    got = ownership.decide(found, name=TARGET, policy=policy, credential=NAME, uid=UID)
    assert isinstance(got, failures.Failure)
    assert got.reason is R.TARGET_TYPE_MISMATCH
    assert "revert spec.target.type" in got.message
    deleted = "delete the Secret; tokensync creates it anew with the new type"
    assert (deleted in got.message) is (creation is not MERGE)
    assert ("recreate it with that type" in got.message) is (creation is MERGE)


def test_messages_quote_user_text_cut_short() -> None:
    long = "x" * 5000
    found = secret(annotations={ownership.HAND_OVER_ANNOTATION: long})
    policy = model.TargetSpec(name=TARGET, creation_policy=ADOPT)
    got = ownership.decide(found, name=TARGET, policy=policy, credential=NAME, uid=UID)
    assert isinstance(got, failures.Failure)
    assert len(got.message) < 400


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (secret(owners=[OURS]), (NAME, UID)),
        (secret(owners=[CONTROLLER, OURS]), (NAME, UID)),
        (secret(annotations=link()), (NAME, UID)),
        # The ownerReference wins over an annotation that disagrees.
        (secret(owners=[OURS], annotations=link(OTHER_UID)), (NAME, UID)),
        (secret(owners=[CONTROLLER]), None),
        (secret(), None),
        (secret(annotations={ownership.LINK_ANNOTATION: "no-uid"}), None),
        (secret(annotations={ownership.LINK_ANNOTATION: f"Not_A_Name/{UID}"}), None),
        (secret(annotations={ownership.LINK_ANNOTATION: f"{NAME}/a b"}), None),
    ],
)
def test_link(found: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert ownership.link(found) == expected


@pytest.mark.parametrize(
    ("creation", "deletion", "references", "label"),
    [
        ("Owner", "Delete", [OURS], model.MANAGED_BY_LABEL),
        ("Adopt", "Delete", [OURS], model.MANAGED_BY_LABEL),
        ("Owner", "Retain", [{"$patch": "delete", "uid": UID}], model.MANAGED_BY_LABEL),
        ("Adopt", "Retain", [{"$patch": "delete", "uid": UID}], model.MANAGED_BY_LABEL),
        ("Merge", None, [{"$patch": "delete", "uid": UID}], ownership.MERGE_LABEL),
        ("Merge", "Retain", [{"$patch": "delete", "uid": UID}], ownership.MERGE_LABEL),
    ],
)
def test_rendered_metadata_per_policy(
    creation: str, deletion: str | None, references: list[dict[str, Any]], label: str
) -> None:
    raw: dict[str, Any] = {"name": TARGET, "creationPolicy": creation}
    if deletion is not None:
        raw["deletionPolicy"] = deletion
    spec = parsing.parse_spec(
        {"tokenURL": "https://idp.example.com/t", "clientSecretRef": {"name": "c"}, "target": raw},
        name=NAME,
    )
    body = target.render_target(
        namespace="ns",
        credential=NAME,
        credential_uid=UID,
        target=spec.target,
        access_token="tok",
        token_type="Bearer",
        expires_at=datetime.datetime(2026, 3, 1, 13, tzinfo=datetime.UTC),
        scope=None,
    )
    meta = body["metadata"]
    assert meta["ownerReferences"] == references
    assert target.for_create(body)["metadata"]["ownerReferences"] == [
        ref for ref in references if "$patch" not in ref
    ]
    assert label in meta["labels"]
    # Merge leaves app.kubernetes.io/managed-by to the Secret's owner.
    assert (model.MANAGED_BY_LABEL in meta["labels"]) is (creation != "Merge")
    assert meta["annotations"][ownership.LINK_ANNOTATION] == f"{NAME}/{UID}"
    # The target watch finds the credential from either link.
    found = target.seen(
        "MODIFIED", {**body, "metadata": {**meta, "uid": "s", "resourceVersion": "1"}}
    )
    assert found is not None
    assert found.owner == (NAME, UID)
    assert ownership.linked_to(body, uid=UID)


def test_parse_defaults_and_refusals() -> None:
    assert ownership.parse({}) == (model.CreationPolicy.OWNER, model.DeletionPolicy.DELETE)
    assert ownership.parse({"creationPolicy": "Merge"}) == (
        model.CreationPolicy.MERGE,
        model.DeletionPolicy.DELETE,  # unused: TargetSpec.owned is False for Merge
    )
    assert not model.TargetSpec(name="t", creation_policy=model.CreationPolicy.MERGE).owned
    for raw, field in [
        ({"creationPolicy": "owner"}, "spec.target.creationPolicy"),
        ({"creationPolicy": 3}, "spec.target.creationPolicy"),
        ({"deletionPolicy": "Orphan"}, "spec.target.deletionPolicy"),
        ({"creationPolicy": "Merge", "deletionPolicy": "Delete"}, "spec.target.deletionPolicy"),
    ]:
        with pytest.raises(model.SpecError) as refused:
            ownership.parse(raw)
        assert refused.value.field == field


def test_the_watch_selects_every_policy_s_label() -> None:
    for creation in ALL:
        labels = ownership.labels(model.TargetSpec(name="t", creation_policy=creation))
        assert any(f"{key}={value}" in ownership.WATCH_SELECTORS for key, value in labels.items())


def test_a_policy_is_a_target_spec_field() -> None:
    fields = {f.name for f in dataclasses.fields(model.TargetSpec)}
    assert {"creation_policy", "deletion_policy"} <= fields
