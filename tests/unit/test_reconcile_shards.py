"""The reconcile loop with shards (decision 0050): a credential of a shard this replica does
not serve is kept warm from its watch events and never scheduled; taking the shard over
schedules it from its status, with no listing; handing it over stops it."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import types
from typing import Any

import httpx
import pytest
from test_target_watch import TARGET, secret, seen

from tokensync import (
    attempt,
    config,
    leases,
    metrics,
    model,
    possession,
    reconcile,
    scheduler,
    status,
    target,
    timing,
)

T0 = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
NS = "team-a"
SHARDS = 4


def body(
    name: str, *, issued: datetime.datetime = T0, refresh_asked: str | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": NS, "name": name, "uid": f"uid-{name}", "generation": 1}
    if refresh_asked:
        meta["annotations"] = {model.REFRESH_REQUESTED_ANNOTATION: refresh_asked}
    return {
        "metadata": meta,
        "spec": {"tokenURL": "https://idp.example/t", "clientSecretRef": {"name": "c"}},
        "status": {
            "observedGeneration": 1,
            "target": TARGET,
            "lastRefreshAt": model.format_time(issued),
            "expiresAt": model.format_time(issued + 3600 * S),
            "nextRefreshAt": model.format_time(issued + 2300 * S),
        },
    }


def names_in(shard: int, count: int = 2) -> list[str]:
    found = [f"c{i}" for i in range(200) if leases.shard_of(NS, f"c{i}", SHARDS) == shard]
    return found[:count]


@dataclasses.dataclass
class Setup:
    rec: reconcile.Reconciler
    queue: scheduler.RefreshQueue[reconcile.Key]
    served: set[int]
    metrics: metrics.Metrics


def setup(served: set[int]) -> Setup:
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    registry = metrics.Metrics()
    rec = reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- no I/O is reached
        http=None,  # type: ignore[arg-type]
        metrics_=registry,
        queue=queue,
        pacer=scheduler.HostPacer(rate=1, burst=1),
        settings=config.Config(shards=SHARDS),
        clock=lambda: T0,
        serving=lambda shard: shard in served,
    )
    return Setup(rec, queue, served, registry)


def expiration(registry: metrics.Metrics, name: str) -> float | None:
    return registry.registry.get_sample_value(
        "tokensync_token_expiration_timestamp_seconds", {"namespace": NS, "name": name}
    )


async def test_a_credential_of_a_shard_served_elsewhere_is_known_but_not_scheduled() -> None:
    s = setup(served={0})
    mine, theirs = names_in(0, 1)[0], names_in(1, 1)[0]
    s.rec.observe(body(mine))
    s.rec.observe(body(theirs))
    assert s.rec.knows((NS, theirs))
    assert s.queue.due_at((NS, mine)) == (T0 + 2300 * S).timestamp()
    assert not s.queue.is_known((NS, theirs))
    assert expiration(s.metrics, theirs) is None  # a standby's value would go stale and alert
    assert s.rec.counts() == (1, 1)


async def test_a_forced_refresh_of_a_credential_served_elsewhere_is_left_to_its_replica() -> None:
    s = setup(served=set())
    name = names_in(2, 1)[0]
    s.rec.observe(body(name, refresh_asked="now"))
    assert not s.queue.is_known((NS, name))


async def test_taking_a_shard_over_schedules_from_the_latest_status_seen() -> None:
    s = setup(served=set())
    first, second = names_in(3)
    s.rec.observe(body(first))
    s.rec.observe(body(first, issued=T0 + 600 * S))  # the other replica refreshed it
    s.rec.observe(body(second, refresh_asked="please"))
    s.served.add(3)
    s.rec.take_over(3)
    assert s.queue.due_at((NS, first)) == (T0 + 2900 * S).timestamp()
    assert s.queue.due_at((NS, second)) is not None  # the unhandled request: now
    assert expiration(s.metrics, first) == (T0 + 4200 * S).timestamp()
    assert s.rec.counts() == (2, 0)


async def test_a_takeover_reads_the_target_before_writing_it() -> None:
    s = setup(served=set())
    name = names_in(1, 1)[0]
    s.rec.observe(body(name))
    found = dataclasses.replace(seen(secret(version="7")), owner=(name, f"uid-{name}"))
    s.rec.target_seen(found)
    record = s.rec._tracker.get((NS, name))
    assert record is not None
    assert record.target_uid is None  # written by the other replica: read again first
    assert record.token_id == found.token_id  # a proof of its token is recognised here


async def test_handing_a_shard_over_stops_its_credentials_and_drops_their_metrics() -> None:
    s = setup(served={2})
    name = names_in(2, 1)[0]
    s.rec.observe(body(name))
    assert s.queue.is_known((NS, name))
    s.served.discard(2)
    s.rec.hand_over(2)
    assert not s.queue.is_known((NS, name))
    assert expiration(s.metrics, name) is None
    assert not s.rec.busy(2)
    assert s.rec.counts() == (0, 1)


async def test_a_valid_proof_for_a_credential_served_elsewhere_is_sent_there() -> None:
    s = setup(served=set())
    name = names_in(0, 1)[0]
    s.rec.observe(body(name))
    token_id = possession.token_id("the-token")
    found = dataclasses.replace(
        seen(secret("the-token")), owner=(name, f"uid-{name}"), token_id=token_id
    )
    s.rec.target_seen(found)
    reply = await s.rec.refresh_asked(NS, name, token_id)
    assert reply.answer is possession.Answer.ELSEWHERE
    wrong = await s.rec.refresh_asked(NS, name, b"0" * 16)
    assert wrong.answer is possession.Answer.REFUSED  # no oracle: the same 403


async def test_a_refresh_due_for_a_shard_no_longer_served_does_nothing() -> None:
    s = setup(served=set())
    name = names_in(0, 1)[0]
    s.rec.observe(body(name))
    await s.rec.refresh((NS, name), due=T0.timestamp())  # no I/O reached: kube is None


async def test_an_attempt_whose_shard_was_handed_over_while_it_waited_sends_nothing() -> None:
    """A hand-over waits for attempts under way; one still waiting for its host's slot gives
    up when the slot comes, before any token request (decision 0050)."""
    served = [True]
    attempts = attempt.Attempts(
        kube_api=None,  # type: ignore[arg-type] -- not reached
        endpoints=None,  # type: ignore[arg-type]
        targets=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        pacer=scheduler.HostPacer(rate=1, burst=1),
        seen_secrets=None,  # type: ignore[arg-type]
        settings=config.Config(),
        clock=lambda: T0,
        draw=lambda: 0.5,
        serving=lambda record: served[0],
    )
    where = types.SimpleNamespace(
        request=types.SimpleNamespace(token_url="https://idp.example/t"), http=None
    )
    record = setup(served={0}).rec
    served[0] = False
    with pytest.raises(attempt.HandedOver):
        await attempts._fetch(
            where,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            methods=[],
            policy=None,  # type: ignore[arg-type]
            record=record,  # type: ignore[arg-type]
        )


# -- a takeover whose watch lags the previous holder's last write ------------------------------

#: The previous holder refreshed the credential here, just before it handed the shard over.
REFRESHED = T0 + 2310 * S
#: When the new holder's first attempt runs: its watch still shows the status before that.
TAKEN = T0 + 2312 * S


class ApiServer:
    """The API server as the previous holder left it: the client Secret, the target Secret
    with the token it wrote last, and the ClientCredential whose status describes that
    token. Reads are answered, writes recorded (none is expected)."""

    def __init__(self, name: str, credential: dict[str, Any], token: dict[str, Any]) -> None:
        self.name = name
        self.credential = credential
        self.secrets: dict[str, dict[str, Any]] = {
            "c": {
                "metadata": {
                    "namespace": NS,
                    "name": "c",
                    "resourceVersion": "7",
                    "labels": {model.CLIENT_SECRET_LABEL: "true"},
                    "annotations": {model.ALLOWED_DESTINATIONS_ANNOTATION: "idp.example"},
                },
                "data": {
                    "client_id": base64.b64encode(b"payments").decode(),
                    "client_secret": base64.b64encode(b"s3cret").decode(),
                },
            },
            f"{name}-token": token,
        }
        self.writes: list[str] = []
        self.credential_reads = 0

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.secrets.get(name)
        return copy.deepcopy(found) if found else None

    async def read_credential(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.credential_reads += 1
        return copy.deepcopy(self.credential)

    async def patch_status(self, namespace: str, name: str, patch: Any, **_: Any) -> Any:
        self.writes.append(f"status {sorted(patch)}")
        return {"metadata": {"resourceVersion": "99"}}

    async def patch_secret(self, namespace: str, name: str, body: Any) -> Any:
        self.writes.append(f"Secret {name}")
        return copy.deepcopy(body)

    async def create_secret(self, namespace: str, body: Any) -> Any:
        self.writes.append(f"Secret {body['metadata']['name']} (create)")
        return copy.deepcopy(body)

    async def post_event(self, **_: Any) -> None:
        self.writes.append("Event")


class TokenEndpoint:
    """Stands in for transport.HttpClients; counts token requests."""

    def __init__(self) -> None:
        self.requests = 0

        def answer(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            return httpx.Response(
                200, json={"access_token": "again", "token_type": "Bearer", "expires_in": 3600}
            )

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))

    def for_tls(self, **_: Any) -> httpx.AsyncClient:
        return self.client


def refreshed(name: str, lifetime: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The previous holder's last refresh, at :data:`REFRESHED`: the ClientCredential with
    the status it wrote, and the target Secret it wrote just before."""
    expires = REFRESHED + lifetime * S
    refresh = timing.refresh_at(
        issued_at=REFRESHED, expires_at=expires, policy=model.RefreshPolicy(), jitter=0.5
    )
    message = f"token valid until {model.format_time(expires)}"
    conditions = status.set_condition(
        (), type_=status.READY, status=True, reason="TokenIssued", message=message,
        generation=1, now=T0,
    )  # fmt: skip
    credential = body(name)
    credential["metadata"]["resourceVersion"] = "51"
    credential["status"] = {
        "observedGeneration": 1,
        "handledRefreshRequest": None,
        "target": f"{name}-token",
        "lastRefreshAt": model.format_time(REFRESHED),
        "expiresAt": model.format_time(expires),
        "nextRefreshAt": model.format_time(refresh),
        "failedAttempts": 0,
        "lastFailureReason": None,
        "clientSecretVersion": "7",
        "conditions": status.rendered(conditions),
    }
    token = target.for_create(
        target.render_target(
            namespace=NS,
            credential=name,
            credential_uid=f"uid-{name}",
            target=model.TargetSpec(name=f"{name}-token"),
            access_token="written-by-the-previous-holder",
            token_type="Bearer",
            expires_at=expires,
            scope=None,
            issued_at=REFRESHED,
            refresh_at=refresh,
        )
    )
    token["metadata"].update(uid="uid-target", resourceVersion="50")
    return credential, token


def taking_over(
    api: ApiServer, endpoint: TokenEndpoint, served: set[int]
) -> tuple[reconcile.Reconciler, scheduler.RefreshQueue[reconcile.Key]]:
    """A replica at TAKEN that serves the shards in ``served``, against these fakes."""
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    rec = reconcile.Reconciler(
        kube_api=api,  # type: ignore[arg-type]
        http=endpoint,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=queue,
        pacer=scheduler.HostPacer(rate=1000, burst=1000),
        settings=config.Config(shards=SHARDS),
        clock=lambda: TAKEN,
        draw=lambda: 0.5,
        serving=lambda shard: shard in served,
    )
    return rec, queue


@pytest.mark.parametrize(
    "lifetime",
    [
        3600,  # as long as the last: adopted, and its status was written again
        7200,  # longer than the stale status allows to trust: a second token was fetched
    ],
)
async def test_a_takeover_whose_watch_lags_the_previous_holder_writes_nothing(
    lifetime: int,
) -> None:
    """The previous holder refreshed a credential and handed its shard over; the replica
    that took it still had the status from before that refresh (its watch lagged), so the
    credential looked due. Its first attempt finds the newer token in the target, reads
    status again, and then writes nothing and asks for no token: the previous holder's
    status describes that token already (the chaos test's "served by two replicas in one
    cycle", decision 0050)."""
    name = names_in(1, 1)[0]
    credential, token = refreshed(name, lifetime)
    api, endpoint = ApiServer(name, credential, token), TokenEndpoint()
    served: set[int] = set()
    rec, queue = taking_over(api, endpoint, served)
    stale = body(name)  # what the watch delivered last: the token of T0, due at T0 + 2300 s
    stale["metadata"]["resourceVersion"] = "40"
    stale["status"].update(
        clientSecretVersion="7", conditions=credential["status"]["conditions"], failedAttempts=0
    )
    rec.observe(stale)
    served.add(1)
    rec.take_over(1)
    due = queue.due_at((NS, name))
    assert due is not None
    assert due <= TAKEN.timestamp()  # due, as far as the lagging view can tell
    await rec.refresh((NS, name), due)
    await endpoint.client.aclose()

    assert api.writes == []
    assert endpoint.requests == 0
    assert api.credential_reads == 1
    record = rec._tracker.get((NS, name))
    assert record is not None
    assert record.state.issued_at == REFRESHED
    next_refresh = model.parse_time(credential["status"]["nextRefreshAt"])
    assert next_refresh is not None
    assert queue.due_at((NS, name)) == next_refresh.timestamp()  # the new token's time


async def test_a_takeover_with_a_current_view_reads_no_status_and_writes_none() -> None:
    """The watch had delivered the previous holder's last status: an attempt that runs all
    the same finds the target as status describes it, reads no status and writes none."""
    name = names_in(1, 1)[0]
    credential, token = refreshed(name, 3600)
    api, endpoint = ApiServer(name, credential, token), TokenEndpoint()
    served: set[int] = set()
    rec, _ = taking_over(api, endpoint, served)
    rec.observe(credential)
    served.add(1)
    rec.take_over(1)
    await rec.refresh((NS, name), TAKEN.timestamp())
    await endpoint.client.aclose()
    assert (api.credential_reads, api.writes, endpoint.requests) == (0, [], 0)
