"""spec.rolloutRestart: the restart decision (pure, tables, clock injected), its patch, and
the spec it reads (decision 0042)."""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tokensync import bounds, durations, model, parsing, restarts

T0 = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
MIN = datetime.timedelta(minutes=5)
CRED = "api"
CRD = pathlib.Path(__file__).resolve().parents[2] / "crds" / "clientcredentials.tokensync.dev.yaml"


def workload(
    *,
    created: datetime.datetime | None = T0 - 3600 * S,
    restarted_at: datetime.datetime | None = None,
    record: dict[str, datetime.datetime] | None = None,
) -> restarts.Workload:
    return restarts.Workload(
        version="7",
        created_at=created,
        restarted_at=restarted_at,
        restarted_for=record or {},
    )


# (id, workload, token, now, resumed, expected verdict)
TABLE: list[tuple[str, restarts.Workload, datetime.datetime, datetime.datetime, bool, Any]] = [
    ("new token, never restarted", workload(), T0, T0 + S, False, restarts.Restart()),
    (
        "new token, record of an older one",
        workload(record={CRED: T0 - 600 * S}),
        T0,
        T0 + S,
        False,
        restarts.Restart(),
    ),
    (
        "already restarted for this token (a second check, a second process)",
        workload(record={CRED: T0}),
        T0,
        T0 + S,
        False,
        restarts.Nothing("already restarted (or recorded) for this token"),
    ),
    (
        "record of a newer token (status behind)",
        workload(record={CRED: T0 + 60 * S}),
        T0,
        T0 + S,
        False,
        restarts.Nothing("already restarted (or recorded) for this token"),
    ),
    (
        "operator start, no record: nothing (Reloader's restart-everything)",
        workload(),
        T0,
        T0 + 3600 * S,
        True,
        restarts.Nothing("no record of an earlier token: an operator start restarts nothing"),
    ),
    (
        "operator start, record of this token: nothing",
        workload(record={CRED: T0}),
        T0,
        T0 + 3600 * S,
        True,
        restarts.Nothing("already restarted (or recorded) for this token"),
    ),
    (
        "operator start after a crash between the token and its restart",
        workload(record={CRED: T0 - 600 * S}, restarted_at=T0 - 600 * S),
        T0,
        T0 + 60 * S,
        True,
        restarts.Restart(),
    ),
    (
        "workload created after the token: recorded, not restarted",
        workload(created=T0 + 5 * S),
        T0,
        T0 + 10 * S,
        False,
        restarts.Record(),
    ),
    (
        "workload created in the token's second: restarted (a stale token is worse)",
        workload(created=T0),
        T0,
        T0 + 10 * S,
        False,
        restarts.Restart(),
    ),
    (
        "restarted by another credential 1 min ago: deferred to the interval's end",
        workload(record={"other": T0}, restarted_at=T0 - 60 * S),
        T0,
        T0 + S,
        False,
        restarts.Defer(until=T0 - 60 * S + MIN),
    ),
    (
        "restarted for the previous token within the interval: deferred",
        workload(record={CRED: T0 - 30 * S}, restarted_at=T0 - 30 * S),
        T0,
        T0 + S,
        False,
        restarts.Defer(until=T0 - 30 * S + MIN),
    ),
    (
        "the interval has passed: restarted",
        workload(record={CRED: T0 - 400 * S}, restarted_at=T0 - 400 * S),
        T0,
        T0 - 400 * S + MIN,
        False,
        restarts.Restart(),
    ),
    (
        "a restart time beyond clock skew is no restart: not deferred for ever",
        workload(restarted_at=datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)),
        T0,
        T0 + S,
        False,
        restarts.Restart(),
    ),
]


@pytest.mark.parametrize(
    ("found", "token", "now", "resumed", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_decide(
    found: restarts.Workload,
    token: datetime.datetime,
    now: datetime.datetime,
    resumed: bool,
    expected: restarts.Verdict,
) -> None:
    verdict = restarts.decide(
        found, credential=CRED, token=token, now=now, min_interval=MIN, resumed=resumed
    )
    assert verdict == expected


def run(
    found: restarts.Workload,
    *,
    token: datetime.datetime,
    now: datetime.datetime,
    resumed: bool = False,
    credential: str = CRED,
) -> tuple[restarts.Verdict, restarts.Workload]:
    """One decision and, if it writes, the workload as the API server would hold it after."""
    verdict = restarts.decide(
        found, credential=credential, token=token, now=now, min_interval=MIN, resumed=resumed
    )
    if not isinstance(verdict, restarts.Restart | restarts.Record):
        return verdict, found
    body = restarts.patch(found, verdict, credential=credential, token=token, now=now)
    annotations = body["spec"]["template"]["metadata"]["annotations"] if "spec" in body else {}
    after = restarts.workload(
        {
            "metadata": {
                "resourceVersion": str(int(found.version) + 1),
                "creationTimestamp": model.format_time(found.created_at or T0),
                "annotations": body["metadata"]["annotations"],
            },
            "spec": {
                "template": {
                    "metadata": {
                        "annotations": annotations
                        or (
                            {restarts.RESTARTED_AT: model.format_time(found.restarted_at)}
                            if found.restarted_at
                            else {}
                        )
                    }
                }
            },
        }
    )
    return verdict, after


def test_one_restart_per_token_however_often_it_is_checked() -> None:
    """Tokens every 10 minutes, each checked three times (a retry, a second process, an
    operator start): one restart per token, never one for a check."""
    found, restarted = workload(), 0
    for n in range(6):
        token = T0 + n * 600 * S
        for check, resumed in enumerate((False, False, True)):
            verdict, found = run(found, token=token, now=token + (1 + check) * S, resumed=resumed)
            restarted += isinstance(verdict, restarts.Restart)
    assert restarted == 6
    assert found.restarted_for == {CRED: T0 + 5 * 600 * S}


def test_two_tokens_within_the_interval_make_one_deferred_restart() -> None:
    found = workload(record={CRED: T0}, restarted_at=T0)
    first, found = run(found, token=T0 + 60 * S, now=T0 + 61 * S)
    second, found = run(found, token=T0 + 120 * S, now=T0 + 121 * S)
    assert first == second == restarts.Defer(until=T0 + MIN)
    # At the interval's end: once, for the token current then.
    verdict, found = run(found, token=T0 + 120 * S, now=T0 + MIN)
    assert verdict == restarts.Restart()
    assert found.restarted_for == {CRED: T0 + 120 * S}
    assert found.restarted_at == T0 + MIN
    again, _ = run(found, token=T0 + 120 * S, now=T0 + MIN + S)
    assert isinstance(again, restarts.Nothing)


def test_the_patch_is_conditional_and_records_only_metadata_for_record() -> None:
    found = workload(record={"other": T0 - 60 * S})
    body = restarts.patch(found, restarts.Record(), credential=CRED, token=T0, now=T0 + S)
    assert body == {
        "metadata": {
            "resourceVersion": "7",
            "annotations": {
                restarts.RESTARTED_FOR: (
                    '{"api":"2026-11-30T12:00:00Z","other":"2026-11-30T11:59:00Z"}'
                )
            },
        }
    }
    body = restarts.patch(found, restarts.Restart(), credential=CRED, token=T0, now=T0 + S)
    assert body["spec"] == {
        "template": {"metadata": {"annotations": {restarts.RESTARTED_AT: "2026-11-30T12:00:01Z"}}}
    }


def test_the_record_is_bounded_and_keeps_the_credential_it_is_written_for() -> None:
    others = {f"c{i:03d}": T0 + i * S for i in range(100)}
    found = workload(record=others)
    body = restarts.patch(found, restarts.Restart(), credential=CRED, token=T0 - S, now=T0)
    text = body["metadata"]["annotations"][restarts.RESTARTED_FOR]
    kept = json.loads(text)
    assert len(kept) == restarts.RECORD_ENTRIES
    assert kept[CRED] == model.format_time(T0 - S)
    assert "c099" in kept  # the most recent tokens stay
    assert "c000" not in kept
    # The longest record (32 names of 253 characters) is still read back.
    longest = {("n" * 250) + f"{i:03d}": T0 for i in range(restarts.RECORD_ENTRIES)}
    text = restarts.patch(
        workload(record=longest), restarts.Record(), credential="n" * 253, token=T0, now=T0
    )["metadata"]["annotations"][restarts.RESTARTED_FOR]
    assert len(restarts.workload(annotated(text)).restarted_for) == restarts.RECORD_ENTRIES


def annotated(record: object) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": "1", "annotations": {restarts.RESTARTED_FOR: record}}}


@pytest.mark.parametrize(
    "record",
    [
        None,
        "",
        "not json",
        "[1, 2]",
        '{"api": 5}',
        '{"api": "yesterday"}',
        "{" + " " * restarts.RECORD_CHARACTERS + "}",
    ],
)
def test_an_unreadable_record_is_no_record(record: object) -> None:
    """A tenant may write anything there; it never raises, and counts as absent."""
    assert restarts.workload(annotated(record)).restarted_for == {}


@given(
    st.dictionaries(
        st.text(max_size=20),
        st.one_of(st.text(max_size=30), st.integers(), st.none(), st.lists(st.integers())),
        max_size=5,
    )
)
def test_any_annotation_value_is_read_without_raising(raw: dict[str, Any]) -> None:
    restarts.workload(annotated(json.dumps(raw)))


def test_the_version_is_the_issue_time_in_whole_seconds() -> None:
    issued = T0 + datetime.timedelta(microseconds=999_999)
    assert restarts.version(issued) == T0
    assert model.format_time(restarts.version(issued)) == "2026-11-30T12:00:00Z"


# -- the spec ------------------------------------------------------------------------------

BASE: dict[str, Any] = {"tokenURL": "https://a.example/t", "clientSecretRef": {"name": "c"}}


def rollout(value: object) -> model.RolloutRestart | None:
    return parsing.parse_spec({**BASE, "rolloutRestart": value}, name="x").rollout_restart


def test_spec_defaults_and_targets() -> None:
    assert parsing.parse_spec(BASE, name="x").rollout_restart is None
    parsed = rollout({"targets": [{"kind": "StatefulSet", "name": "db"}]})
    assert parsed == model.RolloutRestart(
        targets=(model.RolloutTarget("StatefulSet", "db"),), min_interval=MIN
    )
    assert rollout(
        {"targets": [{"kind": "DaemonSet", "name": "a"}], "minInterval": "30s"}
    ) == model.RolloutRestart(targets=(model.RolloutTarget("DaemonSet", "a"),), min_interval=30 * S)


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ("x", "spec.rolloutRestart", "must be an object"),
        ({}, "spec.rolloutRestart.targets", "must be a non-empty list"),
        ({"targets": []}, "spec.rolloutRestart.targets", "must be a non-empty list"),
        ({"targets": ["a"]}, "spec.rolloutRestart.targets[0]", "must be an object"),
        (
            {"targets": [{"kind": "Pod", "name": "a"}]},
            "spec.rolloutRestart.targets[0].kind",
            "must be one of Deployment, StatefulSet, DaemonSet",
        ),
        (
            {"targets": [{"kind": "Deployment"}]},
            "spec.rolloutRestart.targets[0].name",
            "is required",
        ),
        (
            {"targets": [{"kind": "Deployment", "name": "Bad_Name"}]},
            "spec.rolloutRestart.targets[0].name",
            "is not a valid Deployment name",
        ),
        (
            {"targets": [{"kind": "Deployment", "name": "a"}, {"kind": "Deployment", "name": "a"}]},
            "spec.rolloutRestart.targets[1]",
            "is listed twice",
        ),
        (
            {"targets": [{"kind": "Deployment", "name": "a"}], "minInterval": "29s"},
            "spec.rolloutRestart.minInterval",
            "must be between 30s and 87600h",
        ),
    ],
)
def test_spec_refusals_name_the_field(value: object, field: str, message: str) -> None:
    with pytest.raises(model.SpecError) as caught:
        rollout(value)
    assert caught.value.field == field
    assert message in str(caught.value)


def test_no_namespace_can_be_named() -> None:
    """A workload of another namespace is impossible by construction: no such field in the
    model, the parser or the CRD (the API server prunes it)."""
    assert bounds.FIELDS["spec.rolloutRestart.targets[]"] == {"kind", "name"}
    assert {f.name for f in model.RolloutTarget.__dataclass_fields__.values()} == {"kind", "name"}
    parsed = rollout({"targets": [{"kind": "Deployment", "name": "a", "namespace": "kube-system"}]})
    assert parsed is not None
    assert parsed.targets == (model.RolloutTarget("Deployment", "a"),)
    kept = bounds.retained(
        {
            **BASE,
            "rolloutRestart": {"targets": [{"kind": "Deployment", "name": "a", "namespace": "x"}]},
        }
    )
    assert kept["rolloutRestart"] == {"targets": [{"kind": "Deployment", "name": "a"}]}


def test_crd_states_the_model_s_kinds_and_default() -> None:
    (crd,) = [d for d in yaml.safe_load_all(CRD.read_text()) if d]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node = schema["properties"]["spec"]["properties"]["rolloutRestart"]
    items = node["properties"]["targets"]["items"]
    assert items["properties"]["kind"]["enum"] == list(model.ROLLOUT_KINDS)
    assert set(items["properties"]) == bounds.FIELDS["spec.rolloutRestart.targets[]"]
    assert "namespace" not in items["properties"]
    assert node["properties"]["targets"]["x-kubernetes-list-map-keys"] == ["kind", "name"]
    default = node["properties"]["minInterval"]["default"]
    assert durations.parse(default, field="x") == model.DEFAULT_ROLLOUT_INTERVAL
