"""The per-credential series: exported at scrape time from one record per credential."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tokensync import metrics


def samples(m: metrics.Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_per_credential_series_and_forget() -> None:
    m = metrics.Metrics()
    m.expiration.labels("ns", "a").set(200)
    m.renewal.labels("ns", "a").set(150)
    m.set_ready("ns", "a", "True")
    m.set_ready("ns", "b", "False")
    m.set_ready("ns", "b", "Unknown")  # replaces False: one series per credential
    found = samples(m)
    a = {"namespace": "ns", "name": "a"}
    assert found["tokensync_token_expiration_timestamp_seconds"] == [(a, 200.0)]
    assert found["tokensync_token_renewal_timestamp_seconds"] == [(a, 150.0)]
    assert found["tokensync_credential_ready"] == [
        ({**a, "condition": "True"}, 1.0),
        ({"namespace": "ns", "name": "b", "condition": "Unknown"}, 1.0),
    ]
    m.forget("ns", "a")
    found = samples(m)
    assert "tokensync_token_expiration_timestamp_seconds" not in found
    assert [labels["name"] for labels, _ in found["tokensync_credential_ready"]] == ["b"]
    m.forget("ns", "b")
    assert len(m.per_credential) == 0


def test_remove_like_a_gauge() -> None:
    m = metrics.Metrics()
    m.expiration.labels("ns", "a").set(1)
    m.expiration.remove("ns", "a")
    assert len(m.per_credential) == 0  # nothing left of it: the record goes too


def test_families_are_registered_without_credentials() -> None:
    names = {family.name for family in metrics.Metrics().registry.collect()}
    assert {
        "tokensync_token_expiration_timestamp_seconds",
        "tokensync_token_renewal_timestamp_seconds",
        "tokensync_credential_ready",
    } <= names
