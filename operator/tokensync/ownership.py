"""Which target Secret a credential may write, and what links the two (decision 0041).

``spec.target.creationPolicy`` says which Secret tokensync may write: one it creates
(Owner), also one handed over to it (Adopt), or only tokensync's keys in a Secret that
something else owns (Merge). ``spec.target.deletionPolicy`` says whether the Secret goes
with its credential (an ownerReference, Delete) or stays (Retain). A hand-over is explicit:
an annotation on the Secret naming the credential, which only someone who may write that
Secret can set; a Secret is never taken because it has the right name.

Every target also carries an annotation naming its credential's name and uid, the link the
target watch and the writer follow when there is no ownerReference (Retain, Merge). The
rules are pure functions of the Secret as read, so that each is a table row in a test.
Pure: no I/O, and no kopf, kubernetes or httpx imports.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from tokensync import failures, model

_E = TypeVar("_E", model.CreationPolicy, model.DeletionPolicy)

#: Set by whoever may write the Secret, naming a ClientCredential of its namespace: that
#: credential may take the Secret over (Adopt) or write its keys into it (Merge).
HAND_OVER_ANNOTATION = f"{model.GROUP}/hand-over-to"
#: Set by tokensync on every target: ``<credential name>/<credential uid>``.
LINK_ANNOTATION = f"{model.GROUP}/written-for"
#: On Merge targets instead of app.kubernetes.io/managed-by, which belongs to the Secret's
#: owner (Helm checks it on upgrade): the target watch selects on it.
MERGE_LABEL = f"{model.GROUP}/merge-target"
MERGE_SELECTOR = f"{MERGE_LABEL}=true"
MANAGED_SELECTOR = f"{model.MANAGED_BY_LABEL}={model.MANAGED_BY_VALUE}"
#: The target watch runs once per selector: Kubernetes selectors cannot say "or".
WATCH_SELECTORS = (MANAGED_SELECTOR, MERGE_SELECTOR)
#: A Secret without a type is Opaque (the API server defaults it so).
DEFAULT_TYPE = model.SecretType.OPAQUE.value

# A DNS subdomain and something a uid could be; anything else is no link.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_UID = re.compile(r"[-0-9A-Za-z._]{1,128}")
# User-written text quoted in a message (an annotation value) is cut to this.
_QUOTED = 80


class Take(enum.Enum):
    """What the writer may do with the target name (:func:`decide`)."""

    #: No Secret of that name: create it.
    CREATE = "create"
    #: Linked to this credential: write it.
    WRITE = "write"
    #: Handed over to this credential and acceptable to its policy: write it from now on.
    TAKE = "take"


def owner_reference(*, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{model.GROUP}/{model.VERSION}",
        "kind": model.KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def owner_references(policy: model.TargetSpec, *, name: str, uid: str) -> list[dict[str, Any]]:
    """The ownerReferences of a write, for a strategic merge patch (merged by uid: other
    owners' references stay). Without an ownerReference to keep, ours is deleted, in case an
    earlier policy put it there; a create drops that directive (:func:`for_create`)."""
    if policy.owned:
        return [owner_reference(name=name, uid=uid)]
    return [{"$patch": "delete", "uid": uid}]


def for_create(references: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [ref for ref in references if "$patch" not in ref]


def labels(policy: model.TargetSpec) -> dict[str, str]:
    """The label the target watch selects on: managed-by, or on a Merge target (whose
    managed-by is its owner's) a label of tokensync's own."""
    if policy.creation_policy is model.CreationPolicy.MERGE:
        return {MERGE_LABEL: "true"}
    return {model.MANAGED_BY_LABEL: model.MANAGED_BY_VALUE}


def link_value(*, name: str, uid: str) -> str:
    return f"{name}/{uid}"


def link(secret: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the ClientCredential the Secret is written for: its ownerReference to
    a ClientCredential, else the link annotation; None when neither says."""
    meta = secret.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if (
            isinstance(ref, Mapping)
            and ref.get("kind") == model.KIND
            and str(ref.get("apiVersion", "")).startswith(f"{model.GROUP}/")
            and isinstance(ref.get("name"), str)
            and isinstance(ref.get("uid"), str)
        ):
            return ref["name"], ref["uid"]
    value = (meta.get("annotations") or {}).get(LINK_ANNOTATION)
    if not isinstance(value, str):
        return None
    name, _, uid = value.rpartition("/")
    if _NAME.fullmatch(name) is None or _UID.fullmatch(uid) is None:
        return None
    return name, uid


def marked(secret: Mapping[str, Any]) -> bool:
    """Does the Secret carry a label the target watch selects on?"""
    found = (secret.get("metadata") or {}).get("labels") or {}
    return (
        found.get(model.MANAGED_BY_LABEL) == model.MANAGED_BY_VALUE
        or found.get(MERGE_LABEL) == "true"
    )


def linked_to(secret: Mapping[str, Any], *, uid: str) -> bool:
    """True when tokensync writes ``secret`` for the credential with that uid: marked, and
    an ownerReference with that uid (uids are unique: its kind need not be checked) or
    else the link annotation names it."""
    if not marked(secret):
        return False
    references = (secret.get("metadata") or {}).get("ownerReferences") or []
    if any(isinstance(ref, Mapping) and ref.get("uid") == uid for ref in references):
        return True
    found = link(secret)
    return found is not None and found[1] == uid


def secret_type(secret: Mapping[str, Any]) -> str:
    return str(secret.get("type") or DEFAULT_TYPE)


def wanted_type(policy: model.TargetSpec) -> str:
    """The Secret type spec.target asks for (decision 0040)."""
    return policy.type.value


def decide(
    secret: Mapping[str, Any] | None,
    *,
    name: str,
    policy: model.TargetSpec,
    credential: str,
    uid: str,
    wanted_type: str = DEFAULT_TYPE,
) -> Take | failures.Failure:
    """May the credential ``credential`` (``uid``) write the Secret ``name`` as read (None:
    absent) under ``policy``? A failure says why not, in words safe to show anywhere.

    A Secret's type is immutable and tokensync deletes nothing (its role has no delete):
    a Secret of another type is refused under every policy (:func:`type_mismatch`)."""
    merge = policy.creation_policy is model.CreationPolicy.MERGE
    if secret is None:
        return _missing(name, credential) if merge else Take.CREATE
    if linked_to(secret, uid=uid):
        if secret_type(secret) == wanted_type:
            return Take.WRITE
        return type_mismatch(name, secret_type(secret), wanted_type, merge=merge)
    return _handed_over(secret, name=name, policy=policy, credential=credential, wanted=wanted_type)


def _handed_over(
    secret: Mapping[str, Any],
    *,
    name: str,
    policy: model.TargetSpec,
    credential: str,
    wanted: str,
) -> Take | failures.Failure:
    """A Secret tokensync does not write for this credential: may it start to?"""
    linked = link(secret)
    if linked is not None and marked(secret):
        return _linked_elsewhere(name, linked)
    if policy.creation_policy is model.CreationPolicy.OWNER:
        return conflict(name)
    handed = ((secret.get("metadata") or {}).get("annotations") or {}).get(HAND_OVER_ANNOTATION)
    if handed != credential:
        return _not_handed_over(name, credential, handed)
    controller = _controller(secret)
    if policy.creation_policy is model.CreationPolicy.ADOPT and controller is not None:
        return failures.Failure(
            failures.Reason.TARGET_CONFLICT,
            f"Secret {name!r} is controlled by {controller}; creationPolicy Adopt takes "
            "over only a Secret no controller owns: use creationPolicy Merge to write "
            "tokensync's keys into it",
            kind=failures.Kind.PERMANENT,
        )
    if secret_type(secret) != wanted:
        merge = policy.creation_policy is model.CreationPolicy.MERGE
        return type_mismatch(name, secret_type(secret), wanted, merge=merge)
    return Take.TAKE


def conflict(name: str) -> failures.Failure:
    """A Secret of the target name that tokensync does not manage for this credential."""
    return failures.Failure(
        failures.Reason.TARGET_CONFLICT,
        f"Secret {name!r} exists and is not managed by this ClientCredential; "
        "delete it, choose another spec.target.name, or hand it over (annotation "
        f"{HAND_OVER_ANNOTATION} naming this ClientCredential, and spec.target."
        "creationPolicy Adopt or Merge)",
        kind=failures.Kind.PERMANENT,
    )


def type_mismatch(name: str, found: str, wanted: str, *, merge: bool) -> failures.Failure:
    """A Secret of another type than spec.target asks for. Its type cannot change in place,
    and tokensync never deletes a Secret (least privilege: its role has no delete, decision
    0041), so the message says what the user does instead."""
    if merge:
        what = (
            "creationPolicy Merge writes into a Secret that belongs to something else and "
            "never replaces it: have its owner recreate it with that type, or revert "
            "spec.target.type"
        )
    else:
        what = (
            "tokensync deletes no Secret: delete the Secret; tokensync creates it anew "
            "with the new type (or revert spec.target.type)"
        )
    return failures.Failure(
        failures.Reason.TARGET_TYPE_MISMATCH,
        f"Secret {name!r} has type {_quoted(found)} and spec.target asks for "
        f"{_quoted(wanted)}; a Secret's type cannot change, and {what}",
        kind=failures.Kind.PERMANENT,
    )


def _missing(name: str, credential: str) -> failures.Failure:
    return failures.Failure(
        failures.Reason.TARGET_NOT_FOUND,
        f"Secret {name!r} does not exist; creationPolicy Merge writes only into an existing "
        f"Secret handed over with the annotation {HAND_OVER_ANNOTATION}: {credential}",
        kind=failures.Kind.PERMANENT,
    )


def _not_handed_over(name: str, credential: str, handed: object) -> failures.Failure:
    said = "has no" if handed is None else f"names {_quoted(str(handed))} in its"
    return failures.Failure(
        failures.Reason.TARGET_NOT_HANDED_OVER,
        f"Secret {name!r} exists and {said} annotation {HAND_OVER_ANNOTATION}; to hand it "
        f"over, annotate it {HAND_OVER_ANNOTATION}={credential}",
        kind=failures.Kind.PERMANENT,
    )


def _linked_elsewhere(name: str, linked: tuple[str, str]) -> failures.Failure:
    return failures.Failure(
        failures.Reason.TARGET_CONFLICT,
        f"Secret {name!r} is written for ClientCredential {_quoted(linked[0])} (uid "
        f"{linked[1]}), not this one; if that one is gone and the Secret should be this "
        f"one's, remove its annotation {LINK_ANNOTATION} and hand it over again",
        kind=failures.Kind.PERMANENT,
    )


def _controller(secret: Mapping[str, Any]) -> str | None:
    """'<kind> <name>' of the Secret's controller, if any."""
    for ref in (secret.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return f"{_quoted(str(ref.get('kind')))} {_quoted(str(ref.get('name')))}"
    return None


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _QUOTED else text[:_QUOTED] + "...")


def parse(raw: Mapping[str, Any]) -> tuple[model.CreationPolicy, model.DeletionPolicy]:
    """spec.target's creationPolicy and deletionPolicy; raises SpecError naming the field."""
    creation = _enum(raw, "creationPolicy", model.CreationPolicy, model.CreationPolicy.OWNER)
    deletion = _enum(raw, "deletionPolicy", model.DeletionPolicy, model.DeletionPolicy.DELETE)
    if creation is model.CreationPolicy.MERGE and raw.get("deletionPolicy") == "Delete":
        raise model.SpecError(
            "spec.target.deletionPolicy",
            "must not be Delete with creationPolicy Merge: a Merge target belongs to "
            "something else and is never deleted with the ClientCredential",
        )
    return creation, deletion


def _enum(raw: Mapping[str, Any], key: str, kind: type[_E], default: _E) -> _E:
    value = raw.get(key)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise model.SpecError(f"spec.target.{key}", f"must be one of {allowed}") from None
