"""What the operator keeps per credential is shared where it repeats (decision 0053)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokensync import failures, model, progress, tracking


def parsed(document: dict[str, Any]) -> Any:
    """As from the API: every object of its own JSON, so no string is shared."""
    return json.loads(json.dumps(document))


def credential(name: str, secret: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": name, "uid": f"uid-{name}"},
        "spec": {"tokenURL": "https://idp.example/token", "clientSecretRef": {"name": secret}},
        "status": {
            "authMethod": "client_secret_basic",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "TokenIssued", "message": name}
            ],
        },
    }


def test_status_words_and_namespaces_are_one_string_each() -> None:
    one, two = (tracking.Record.from_body(parsed(credential(n, "s"))) for n in ("a", "b"))
    assert one.namespace is two.namespace
    assert one.state.auth_method is two.state.auth_method
    for field in ("type", "status", "reason"):
        assert getattr(one.state.conditions[0], field) is getattr(two.state.conditions[0], field)
    assert one.state.conditions[0].message == "a"  # free text stays as it was


def test_a_status_word_of_another_str_type_is_kept_as_it_is() -> None:
    reason = failures.Reason.TEMPLATE_FAILED
    state = progress.State.from_status({"conditions": [{"type": "Ready", "reason": reason}]})
    assert state.conditions[0].reason is reason


def test_the_record_key_is_made_once() -> None:
    record = tracking.Record.from_body(parsed(credential("a", "s")))
    assert record.key == ("team-a", "a")
    assert record.key is record.key


def test_readers_of_a_secret_are_indexed_and_unindexed() -> None:
    tracker = tracking.Tracker()
    for name in ("a", "b"):
        tracker.put(parsed(credential(name, "shared")))
    tracker.put(parsed(credential("c", "own")))
    assert {r.name for r in tracker.readers("team-a", "shared", "1")} == {"a", "b"}
    tracker.put(parsed(credential("a", "own")))  # a now reads another Secret
    assert [r.name for r in tracker.readers("team-a", "shared", "1")] == ["b"]
    tracker.remove(("team-a", "b"))
    assert not tracker.is_referenced("team-a", "shared")
    assert {r.name for r in tracker.readers("team-a", "own", "1")} == {"a", "c"}


def test_the_spec_is_kept_as_one_string_and_read_as_a_fresh_copy() -> None:
    body = parsed(credential("a", "s"))
    body["spec"]["audience"] = "api \u00e9\u4e2d \ud800"  # not ASCII; a lone surrogate
    record = tracking.Record.from_body(body)
    assert type(record.spec_json) is str
    assert record.spec == body["spec"]
    record.spec["tokenURL"] = "https://elsewhere.example/token"  # a copy: not kept
    assert record.spec["tokenURL"] == "https://idp.example/token"


def test_a_secret_read_by_one_credential_is_indexed_without_a_set() -> None:
    tracker = tracking.Tracker()
    tracker.put(parsed(credential("a", "s")))
    tracker.put(parsed(credential("a", "s")))  # the same reader again
    assert [r.name for r in tracker.readers("team-a", "s", "1")] == ["a"]
    tracker.put(parsed(credential("b", "s")))
    tracker.put(parsed(credential("c", "s")))
    tracker.remove(("team-a", "a"))
    tracker.remove(("team-a", "b"))
    assert [r.name for r in tracker.readers("team-a", "s", "1")] == ["c"]
    assert tracker._by_secret[("team-a", "s")] == ("team-a", "c")  # one key, not a set
    tracker.remove(("team-a", "c"))
    assert not tracker.is_referenced("team-a", "s")


def test_status_words_shared_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever may patch status chooses its reasons: past the bound, a word is not shared."""
    monkeypatch.setattr(model, "_words", {})
    monkeypatch.setattr(model, "WORDS_MAX", 2)
    first = [model.word(f"w{i}") for i in range(3)]
    again = [model.word(f"w{i}") for i in range(3)]
    assert again[0] is first[0]
    assert again[1] is first[1]
    assert again[2] == first[2]
    assert again[2] is not first[2]
    assert len(model._words) == 2


def test_a_credential_created_again_leaves_no_reader_of_its_old_secret() -> None:
    """Deleted and created again while the watch was down: a new uid, another Secret."""
    tracker = tracking.Tracker()
    tracker.put(parsed(credential("a", "old")))
    again = credential("a", "new")
    again["metadata"]["uid"] = "uid-a-2"
    tracker.put(parsed(again))
    assert not tracker.is_referenced("team-a", "old")
    assert [r.name for r in tracker.readers("team-a", "new", "1")] == ["a"]


def test_the_version_of_a_secret_read_is_matched_to_its_name() -> None:
    body = parsed(credential("a", "s"))
    body["spec"]["privateKeyRef"] = {"name": "k"}
    body["status"]["clientSecretVersion"] = "10,20"
    record = tracking.Record.from_body(body)
    assert record.has_secret_version("s", "10")
    assert record.has_secret_version("k", "20")
    assert not record.has_secret_version("s", "20")  # the other Secret's version
    assert not record.has_secret_version("s", "11")
    assert not record.has_secret_version("other", "10")
