"""What the operator keeps per credential and per Secret is bounded (issue 14 section 3).

A tenant writes the ClientCredentials and labelled Secrets of their namespace; the records
the operator keeps of them hold only what it uses: the spec fields parse_spec reads, each
within the CRD's bounds (``bounds.retained``), a force-refresh request of bounded length,
and watched Secrets only while a credential reads them.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from tokensync import failures, metrics, model, reconcile, responses, scheduler, seen, tracking


def credential(spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": "cc",
            "uid": "u1",
            "generation": 1,
            "annotations": annotations,
        },
        "spec": spec,
    }


def labelled_secret(name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "resourceVersion": "1",
            "labels": {model.CLIENT_SECRET_LABEL: "true"},
        },
        "data": {"client_secret": "c2VjcmV0"},
    }


def test_a_record_keeps_only_the_fields_parse_spec_reads() -> None:
    spec = {
        "tokenURL": "https://a.example/t",
        "clientSecretRef": {"name": "client", "legacy": "x" * 100_000},
        "target": {"annotations": {"a": "x" * 1_000_000}},
        "removedField": ["x" * 1000] * 1000,
    }
    record = tracking.Record.from_body(credential(spec))
    assert set(record.spec) == {"tokenURL", "clientSecretRef", "target"}
    assert record.spec["clientSecretRef"] == {"name": "client"}
    assert len(record.spec["target"]["annotations"]["a"]) == 4097  # refused, with its reason
    assert record.secret_names == ("client",)


def test_a_long_refresh_request_is_kept_as_its_digest() -> None:
    short = tracking.Record.from_body(
        credential({}, **{model.REFRESH_REQUESTED_ANNOTATION: "2026-01-01T00:00:00Z"})
    )
    assert short.refresh_request == "2026-01-01T00:00:00Z"
    huge = "x" * 200_000
    first = tracking.Record.from_body(credential({}, **{model.REFRESH_REQUESTED_ANNOTATION: huge}))
    again = tracking.Record.from_body(credential({}, **{model.REFRESH_REQUESTED_ANNOTATION: huge}))
    other = tracking.Record.from_body(
        credential({}, **{model.REFRESH_REQUESTED_ANNOTATION: huge + "y"})
    )
    assert first.refresh_request is not None
    assert first.refresh_request.startswith("sha256:")
    assert len(first.refresh_request) < 100
    assert first.refresh_request == again.refresh_request != other.refresh_request


def test_is_referenced_follows_the_credentials() -> None:
    tracker = tracking.Tracker()
    assert not tracker.is_referenced("ns", "client")
    tracker.put(credential({"clientSecretRef": {"name": "client"}}))
    assert tracker.is_referenced("ns", "client")
    assert not tracker.is_referenced("other", "client")
    tracker.put(credential({"clientSecretRef": {"name": "renamed"}}))
    assert not tracker.is_referenced("ns", "client")
    assert tracker.is_referenced("ns", "renamed")
    tracker.remove(("ns", "cc"))
    assert not tracker.is_referenced("ns", "renamed")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_secret_no_credential_reads_is_kept_only_briefly() -> None:
    clock = Clock()
    cache = seen.SeenSecrets(clock=clock)
    rec = reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- no attempt runs
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=scheduler.RefreshQueue(workers=1),
        pacer=scheduler.HostPacer(rate=1, burst=1),
        seen_secrets=cache,
    )
    # A cold start's Secret listing may come before the credentials' listing: pending.
    rec.secret_seen(labelled_secret("client"))
    rec.secret_seen(labelled_secret("unrelated"))
    assert len(cache) == 2
    # The credential that reads it claims it: kept for the full trust time.
    rec.observe(credential({"clientSecretRef": {"name": "client"}}))
    clock.now = seen.PENDING_SECONDS + 1
    assert cache.get("ns", "client") is not None
    assert cache.get("ns", "unrelated") is None  # unclaimed: gone after PENDING_SECONDS
    assert len(cache) == 1
    clock.now = seen.TRUST_SECONDS + 1
    assert cache.get("ns", "client") is None


def test_pending_secrets_are_bounded_in_bytes() -> None:
    cache = seen.SeenSecrets(clock=Clock())
    value = "x" * (seen.MAX_ENTRY_BYTES - 100)
    count = seen.PENDING_BYTES // len(value) + 10
    for i in range(count):
        body = labelled_secret(f"s{i}")
        body["data"] = {"k": value}
        cache.put(body, referenced=False)
    assert len(cache) < count
    assert cache.get("ns", f"s{count - 1}") is not None  # the newest are kept
    assert cache.get("ns", "s0") is None


def test_a_large_secret_is_not_kept() -> None:
    cache = seen.SeenSecrets(clock=Clock())
    body = labelled_secret("big")
    body["data"] = {"k": "x" * (seen.MAX_ENTRY_BYTES + 1)}
    cache.put(body)
    assert cache.get("ns", "big") is None
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("field", "bound"),
    [("scope", responses.MAX_SCOPE_LENGTH), ("token_type", responses.MAX_TOKEN_TYPE_LENGTH)],
)
def test_a_token_response_cannot_make_status_huge(field: str, bound: int) -> None:
    """token_type and scope go into status, which every listing carries."""

    def parse(value: str) -> responses.Token:
        document = {"access_token": "t", "token_type": "Bearer", "expires_in": 60, field: value}
        return responses.parse_token_response(
            status_code=200,
            headers={},
            body=json.dumps(document).encode(),
            sent_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
            default_lifetime=datetime.timedelta(hours=1),
        )

    assert getattr(parse("s" * bound), field) == "s" * bound
    with pytest.raises(failures.TokenError) as caught:
        parse("s" * (bound + 1))
    assert caught.value.reason == failures.Reason.BAD_RESPONSE
    assert f"{field} is longer than {bound} characters" in str(caught.value)
