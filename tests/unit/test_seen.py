"""Recently watched opted-in Secrets stand in for a read of them, for a bounded time."""

from __future__ import annotations

import pytest

from tokensync import model, seen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def secret(name: str, version: str, *, labelled: bool = True, **data: str) -> dict[str, object]:
    labels = {model.CLIENT_SECRET_LABEL: "true"} if labelled else {"app": "x"}
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "resourceVersion": version,
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "type": "Opaque",
        "data": data,
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_keeps_only_what_a_read_would_be_used_for(clock: Clock) -> None:
    cache = seen.SeenSecrets(clock=clock)
    cache.put(secret("a", "7", client_secret="c2VjcmV0"))
    assert cache.get("ns", "a") == {
        "metadata": {
            "name": "a",
            "namespace": "ns",
            "resourceVersion": "7",
            "labels": {model.CLIENT_SECRET_LABEL: "true"},
            "annotations": {},
        },
        "data": {"client_secret": "c2VjcmV0"},
    }
    assert cache.get("ns", "b") is None
    assert cache.get("other", "a") is None


def test_keeps_the_allowed_destinations(clock: Clock) -> None:
    """The watched body stands in for a read: where the Secret may go must survive."""
    cache = seen.SeenSecrets(clock=clock)
    body = secret("a", "7", client_secret="c2VjcmV0")
    body["metadata"]["annotations"][model.ALLOWED_DESTINATIONS_ANNOTATION] = "login.example.com"  # type: ignore[index]
    cache.put(body)
    kept = cache.get("ns", "a")
    assert kept is not None
    assert kept["metadata"]["annotations"] == {
        model.ALLOWED_DESTINATIONS_ANNOTATION: "login.example.com"
    }


def test_a_newer_event_replaces_the_entry(clock: Clock) -> None:
    cache = seen.SeenSecrets(clock=clock)
    cache.put(secret("a", "7", k="MQ=="))
    cache.put(secret("a", "8", k="Mg=="))
    entry = cache.get("ns", "a")
    assert entry is not None
    assert entry["metadata"]["resourceVersion"] == "8"
    assert entry["data"] == {"k": "Mg=="}
    assert len(cache) == 1


def test_drop_and_lost_label_forget_the_secret(clock: Clock) -> None:
    cache = seen.SeenSecrets(clock=clock)
    cache.put(secret("a", "7"))
    cache.put(secret("b", "7"))
    cache.drop("ns", "a")
    cache.put(secret("b", "8", labelled=False))
    assert cache.get("ns", "a") is None
    assert cache.get("ns", "b") is None
    assert len(cache) == 0


def test_entries_are_trusted_for_a_bounded_time(clock: Clock) -> None:
    cache = seen.SeenSecrets(trust=300.0, clock=clock)
    cache.put(secret("a", "7"))
    clock.now += 200
    cache.put(secret("b", "7"))
    clock.now += 99.9
    assert cache.get("ns", "a") is not None
    clock.now += 0.1  # a is 300 s old: read from the API again
    assert cache.get("ns", "a") is None
    assert cache.get("ns", "b") is not None
    assert len(cache) == 1  # aged entries are dropped, not just hidden


def test_a_refreshed_entry_ages_from_its_latest_event(clock: Clock) -> None:
    cache = seen.SeenSecrets(trust=300.0, clock=clock)
    cache.put(secret("a", "7"))
    cache.put(secret("b", "7"))
    clock.now += 250
    cache.put(secret("a", "8"))  # a moves behind b in age order
    clock.now += 100
    assert cache.get("ns", "b") is None
    assert cache.get("ns", "a") is not None


# -- confirmed by a listing (issue 19: a routine refresh reads no client Secret) -------------


def test_a_listing_at_the_same_version_keeps_an_entry_trusted(clock: Clock) -> None:
    cache = seen.SeenSecrets(trust=300.0, clock=clock)
    cache.put(secret("a", "7"))
    cache.put(secret("b", "7"))
    for _ in range(10):  # an hour and more, confirmed every 150 s
        clock.now += 150
        since = cache.now()
        assert cache.confirm({("ns", "a"): "7", ("ns", "b"): "7"}, since=since) == 0
    clock.now += 299
    assert cache.get("ns", "a") is not None
    clock.now += 1  # no confirmation for 300 s: read again
    assert cache.get("ns", "a") is None


@pytest.mark.parametrize(
    "listed",
    [{}, {("ns", "a"): "8"}],
    ids=["deleted-or-unlabelled-unseen", "changed-unseen"],
)
def test_a_listing_drops_what_it_lacks_or_has_at_another_version(
    clock: Clock, listed: dict[tuple[str, str], str]
) -> None:
    cache = seen.SeenSecrets(trust=300.0, clock=clock)
    cache.put(secret("a", "7"))
    clock.now += 10
    assert cache.confirm(listed, since=cache.now()) == 1
    assert cache.get("ns", "a") is None


def test_an_event_after_the_listing_began_is_newer_than_the_listing(clock: Clock) -> None:
    cache = seen.SeenSecrets(trust=300.0, clock=clock)
    cache.put(secret("a", "7"))
    clock.now += 10
    since = cache.now()
    clock.now += 1
    cache.put(secret("a", "9"))  # while the listing ran
    assert cache.confirm({("ns", "a"): "7"}, since=since) == 0
    found = cache.get("ns", "a")
    assert found is not None
    assert found["metadata"]["resourceVersion"] == "9"


def test_confirmed_entries_keep_age_order(clock: Clock) -> None:
    cache = seen.SeenSecrets(trust=300.0, clock=clock)
    cache.put(secret("a", "7"))
    clock.now += 100
    since = cache.now()
    clock.now += 1
    cache.put(secret("b", "7"))  # after the listing began: newer than a's confirmation
    cache.confirm({("ns", "a"): "7"}, since=since)
    clock.now += 299.5  # a is 300.5 s past its confirmation, b 299.5 s past its event
    assert cache.get("ns", "a") is None
    assert cache.get("ns", "b") is not None
    assert len(cache) == 1


def test_a_confirmation_keeps_age_order_in_place(clock: Clock) -> None:
    """A Secret claimed after a newer event's Secret sits behind it; confirmed, it is older
    than that one again (``since``), and is moved before it: expiry stops at the first
    entry still trusted, so an entry out of order would outlive its trust."""
    cache = seen.SeenSecrets(trust=300.0, clock=clock)
    cache.put(secret("z", "7"), referenced=False)  # pending: no credential reads it yet
    clock.now += 10
    since = cache.now()
    clock.now += 1
    cache.put(secret("y", "7"))  # after the listing began
    cache.claim("ns", "z")  # its credential came: kept, behind y
    assert cache.confirm({("ns", "y"): "7", ("ns", "z"): "7"}, since=since) == 0
    clock.now = since + 300.5  # z is 300.5 s past its confirmation, y 299.5 s past its event
    assert cache.get("ns", "y") is not None
    assert len(cache) == 1
    assert cache.get("ns", "z") is None


def test_the_watch_hands_over_only_what_put_reads() -> None:
    """The client Secrets' watch (decision 0059) reduces each event in its thread: the
    cache keeps from the summary exactly what it keeps from the whole body."""
    body = secret("a", "7", client_secret="c2VjcmV0")
    allowed = model.ALLOWED_DESTINATIONS_ANNOTATION
    body["metadata"]["annotations"][allowed] = "login.example.com"  # type: ignore[index]
    body["metadata"]["labels"]["team"] = "x"  # type: ignore[index]
    event = seen.summarize("MODIFIED", body)
    assert event == seen.Event(
        "ns",
        "a",
        {
            "metadata": {
                "namespace": "ns",
                "name": "a",
                "resourceVersion": "7",
                "labels": {model.CLIENT_SECRET_LABEL: "true"},
                "annotations": {model.ALLOWED_DESTINATIONS_ANNOTATION: "login.example.com"},
            },
            "data": {"client_secret": "c2VjcmV0"},
        },
    )
    whole, summarized = seen.SeenSecrets(), seen.SeenSecrets()
    whole.put(body)
    assert event.body is not None
    summarized.put(event.body)
    assert summarized.get("ns", "a") == whole.get("ns", "a")
    plain = seen.summarize("LISTED", secret("b", "8", client_secret="eA=="))
    assert plain.body is not None
    assert "annotations" not in plain.body["metadata"]
    # Deleted, or the label removed (a watch selected by label reports it as DELETED).
    assert seen.summarize("DELETED", body) == seen.Event("ns", "a", None)
    assert "c2VjcmV0" not in repr(event)  # the data never reaches a log line
