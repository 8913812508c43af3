"""The per-credential series: exported at scrape time from one record per credential."""

from __future__ import annotations

import tracemalloc

import httpx
import prometheus_client as prom
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


def per_credential_only(m: metrics.Metrics) -> bytes:
    """What prometheus_client writes for the per-credential collector alone."""
    registry = prom.CollectorRegistry()
    registry.register(m.per_credential)
    return prom.generate_latest(registry)


def test_the_streamed_text_is_what_prometheus_client_writes() -> None:
    m = metrics.Metrics()
    for i in range(7):  # several chunks of 2, and series with a field missing
        if i != 3:
            m.expiration.labels("ns", f"c{i}").set(1_764_800_000.5 + i)
        if i % 2:
            m.renewal.labels("ns", f"c{i}").set(1_764_799_000 + i)
        m.set_ready("team-b" if i == 5 else "ns", f"c{i}", ("True", "False", "Unknown")[i % 3])
    m.expiration.labels("odd", 'a"b\\c\nd').set(1)  # escaped as prometheus_client does
    streamed = b"".join(m.per_credential.text(chunk=2))
    assert streamed == per_credential_only(m)
    assert m.exposition() == prom.generate_latest(m.registry)  # and the other metrics


def test_a_scrape_of_10000_credentials_never_holds_them_all_as_samples() -> None:
    m = metrics.Metrics()
    for i in range(10_000):
        m.expiration.labels("bench", f"cred-{i:05d}").set(1_764_800_000.0 + i)
        m.renewal.labels("bench", f"cred-{i:05d}").set(1_764_799_000.0 + i)
        m.set_ready("bench", f"cred-{i:05d}", "True")
    tracemalloc.start()
    try:
        size = sum(len(piece) for piece in m.scrape())  # written piece by piece
        _, streamed = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = len(per_credential_only(m))
        _, built = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > whole > 2_500_000
    # prometheus_client's path peaked at 13 MiB here; the pieces at under 1.
    assert streamed < built / 5


def test_the_endpoint_serves_the_text_and_nothing_else() -> None:
    m = metrics.Metrics()
    m.expiration.labels("ns", "a").set(200)
    server = metrics.serve(m, 0, "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        response = httpx.get(f"{base}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == prom.CONTENT_TYPE_LATEST
        assert response.content == m.exposition()
        assert httpx.get(f"{base}/other").status_code == 404
    finally:
        server.shutdown()
        server.server_close()
