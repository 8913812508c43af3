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
