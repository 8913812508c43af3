"""The refresh endpoint's decisions (decision 0043): which proof gets which answer, the
per-credential rate, the token id kept and read back, and the HTTP layer's bounds."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from typing import Any

import aiohttp
import pytest

from tokensync import (
    metrics,
    model,
    possession,
    reconcile,
    refreshapi,
    scheduler,
    target,
    tracking,
)

A = possession.Answer
NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
TOKEN, OLD, OTHER = "token-now", "token-before", "token-of-another-credential"


def proof(token: str) -> bytes:
    parsed = possession.parse_proof(hashlib.sha256(token.encode()).hexdigest())
    assert parsed is not None
    return parsed


# -- proofs and ids -----------------------------------------------------------------------


def test_the_proof_is_what_sha256sum_prints() -> None:
    # printf %s token-now | sha256sum
    assert possession.proof_of(TOKEN) == hashlib.sha256(b"token-now").hexdigest()
    assert possession.token_id(TOKEN) == proof(TOKEN)
    assert len(possession.token_id(TOKEN)) == possession.ID_BYTES


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (possession.proof_of(TOKEN), True),
        (possession.proof_of(TOKEN).upper(), True),
        (f"  {possession.proof_of(TOKEN)}\t", True),
        (None, False),
        ("", False),
        (TOKEN, False),  # the token itself is not a proof
        (possession.proof_of(TOKEN)[:-1], False),
        (possession.proof_of(TOKEN) + "0", False),
        (possession.proof_of(TOKEN)[:-1] + "g", False),
        (" " * 200 + possession.proof_of(TOKEN), False),
    ],
)
def test_parse_proof(text: str | None, parsed: bool) -> None:
    result = possession.parse_proof(text)
    assert (result == possession.token_id(TOKEN)) is parsed
    if not parsed:
        assert result is None


def test_the_id_is_not_the_proof() -> None:
    """The annotation holds a hash of the proof: reading it gives no proof to send."""
    written = possession.format_id(possession.token_id(TOKEN))
    assert written != possession.proof_of(TOKEN)
    assert possession.parse_proof(written) is None  # 32 digits, not 64
    assert possession.parse_id(written) == possession.token_id(TOKEN)


@pytest.mark.parametrize("text", [None, 5, "", "zz" * 16, "ab" * 15, "AB" * 16, "ab" * 17])
def test_parse_id_refuses_what_tokensync_does_not_write(text: object) -> None:
    assert possession.parse_id(text) is None


# -- judge --------------------------------------------------------------------------------

CURRENT, PREVIOUS = possession.token_id(TOKEN), possession.token_id(OLD)


@pytest.mark.parametrize(
    ("proof_of", "known", "answer"),
    [
        # the current token's proof: asked once, then told it is asked
        (TOKEN, possession.Known(CURRENT, PREVIOUS, None), A.REQUESTED),
        (TOKEN, possession.Known(CURRENT, PREVIOUS, PREVIOUS), A.REQUESTED),
        (TOKEN, possession.Known(CURRENT, PREVIOUS, CURRENT), A.ALREADY_REQUESTED),
        (TOKEN, possession.Known(CURRENT, None, None), A.REQUESTED),
        # the previous token's proof: a no-op
        (OLD, possession.Known(CURRENT, PREVIOUS, None), A.STALE),
        (OLD, possession.Known(CURRENT, PREVIOUS, CURRENT), A.STALE),
        # everything else alike
        (OTHER, possession.Known(CURRENT, PREVIOUS, None), A.REFUSED),
        (TOKEN, None, A.REFUSED),  # no such credential
        (None, possession.Known(CURRENT, PREVIOUS, None), A.REFUSED),  # malformed
        (TOKEN, possession.Known(None, None, None), A.REFUSED),  # id unknown (old Secret)
        (OLD, possession.Known(CURRENT, None, None), A.REFUSED),  # older than previous
    ],
)
def test_judge(proof_of: str | None, known: possession.Known | None, answer: A) -> None:
    given = None if proof_of is None else proof(proof_of)
    assert possession.judge(given, known) is answer


def test_a_zero_proof_matches_nothing() -> None:
    """A malformed proof is compared as 16 zero bytes: that never matches a known id."""
    zero = bytes(possession.ID_BYTES)
    assert possession.judge(None, possession.Known(zero, zero, None)) is A.REFUSED


@pytest.mark.parametrize(
    ("issued_ago", "min_interval", "runs_in"),
    [
        (None, 30, 0),  # no token yet
        (60, 30, 0),
        (30, 30, 0),
        (10, 30, 20),  # minInterval after the current token
        (0, 300, 300),
        (-5, 30, 35),  # issued by a clock ahead of ours
    ],
)
def test_refresh_at(issued_ago: int | None, min_interval: int, runs_in: int) -> None:
    issued = None if issued_ago is None else NOW - datetime.timedelta(seconds=issued_ago)
    at = possession.refresh_at(
        issued_at=issued, min_interval=datetime.timedelta(seconds=min_interval), now=NOW
    )
    assert at == NOW + datetime.timedelta(seconds=runs_in)


# -- the per-credential rate --------------------------------------------------------------


def test_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = possession.Limiter(rate=3 / 60, burst=3)
    key = ("ns", "a")
    assert [limiter.take(key, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(key, now=0.0) == 20.0  # one more in 20 s
    assert limiter.take(key, now=10.0) == 10.0
    assert limiter.take(key, now=20.0) == 0.0
    assert limiter.take(("ns", "b"), now=20.0) == 0.0  # per credential


def test_limiter_forgets_full_buckets() -> None:
    limiter = possession.Limiter(rate=1.0, burst=2)
    for i in range(1000):
        limiter.take(("ns", str(i)), now=0.0)
    assert len(limiter) == 1000
    limiter.take(("ns", "late"), now=5.0)
    assert len(limiter) == 1  # the others refilled since: forgotten


# -- what a Record keeps ------------------------------------------------------------------


def body(name: str = "c") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"u-{name}", "generation": 1},
        "spec": {
            "tokenURL": "https://idp.example/token",
            "clientId": "c",
            "clientSecretRef": {"name": "client"},
            "refresh": {"minInterval": "10s"},
        },
        "status": {
            "observedGeneration": 1,
            "lastRefreshAt": model.format_time(NOW - datetime.timedelta(minutes=5)),
            "expiresAt": model.format_time(NOW + datetime.timedelta(minutes=55)),
            "conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued"}],
        },
    }


def rendered(token: str) -> dict[str, Any]:
    secret = target.render_target(
        namespace="ns",
        credential="c",
        credential_uid="u-c",
        target=model.TargetSpec(name="c-token"),
        access_token=token,
        token_type="Bearer",
        expires_at=NOW,
        scope=None,
        token_id=possession.token_id(token),
    )
    secret["metadata"]["uid"] = "secret-uid"
    return secret


def test_the_target_carries_the_id_and_the_watch_reads_it_back() -> None:
    secret = rendered(TOKEN)
    annotation = secret["metadata"]["annotations"][target.TOKEN_ID_ANNOTATION]
    assert annotation == possession.token_id(TOKEN).hex()
    assert TOKEN not in annotation
    assert possession.proof_of(TOKEN) not in annotation
    assert target.token_id(secret) == possession.token_id(TOKEN)
    seen = target.seen("ADDED", secret)
    assert seen is not None
    assert seen.token_id == possession.token_id(TOKEN)


def test_the_record_keeps_the_current_and_previous_ids() -> None:
    record = tracking.Record.from_body(body())
    record.read_target(rendered(OLD))
    record.holds(possession.token_id(TOKEN))
    assert (record.token_id, record.token_previous) == (CURRENT, PREVIOUS)
    record.holds(possession.token_id(TOKEN))  # the same token again: nothing moves
    assert (record.token_id, record.token_previous) == (CURRENT, PREVIOUS)
    record.token_asked = record.token_id
    assert record.replace_asked()
    record.holds(possession.token_id(OTHER))  # replaced: the request is answered
    assert not record.replace_asked()


def test_a_restarted_operator_knows_the_id_from_the_watch() -> None:
    tracker = tracking.Tracker()
    record = tracker.put(body())
    seen = target.seen("ADDED", rendered(TOKEN))
    assert seen is not None
    record.accept(seen)
    assert record.token_id == CURRENT


# -- the reconciler's side ----------------------------------------------------------------


def reconciler() -> tuple[reconcile.Reconciler, scheduler.RefreshQueue[reconcile.Key]]:
    queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(workers=1)
    budget = scheduler.Budget(rate=1e-9, burst=1)
    assert budget.take()  # the Event is counted as dropped, not posted: no API server here
    rec = reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- never reached
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=queue,
        pacer=scheduler.HostPacer(rate=1, burst=1),
        clock=lambda: NOW,
        events=budget,
    )
    return rec, queue


async def test_one_refresh_per_token_version_within_the_rate() -> None:
    rec, queue = reconciler()
    rec.observe(body())
    record = rec._tracker.get(("ns", "c"))
    assert record is not None
    record.holds(PREVIOUS)
    record.holds(CURRENT)
    first = await rec.refresh_asked("ns", "c", proof(TOKEN))
    assert first.answer is A.REQUESTED
    assert first.summary == {
        "ready": "True",
        "expiresAt": "2026-01-01T12:55:00Z",
        "refreshAt": "2026-01-01T12:00:00Z",
    }
    assert queue.due_at(("ns", "c")) is not None
    assert queue.waiting == 0
    assert record.replace_asked()
    assert (await rec.refresh_asked("ns", "c", proof(TOKEN))).answer is A.ALREADY_REQUESTED
    stale = await rec.refresh_asked("ns", "c", proof(OLD))
    assert stale.answer is A.STALE
    assert "refreshAt" not in stale.summary
    limited = await rec.refresh_asked("ns", "c", proof(OLD))
    assert (limited.answer, limited.retry_after) == (A.RATE_LIMITED, 20.0)
    # Refusals spend nothing of the credential's rate, and say nothing of it.
    for given in (proof(OTHER), None):
        assert (await rec.refresh_asked("ns", "c", given)) == possession.Reply(A.REFUSED)
    assert (await rec.refresh_asked("ns", "nope", proof(TOKEN))) == possession.Reply(A.REFUSED)


async def test_minimum_interval_defers_the_refresh() -> None:
    rec, queue = reconciler()
    fresh = body()
    fresh["status"]["lastRefreshAt"] = model.format_time(NOW - datetime.timedelta(seconds=4))
    fresh["status"]["nextRefreshAt"] = model.format_time(NOW + datetime.timedelta(minutes=30))
    rec.observe(fresh)
    record = rec._tracker.get(("ns", "c"))
    assert record is not None
    record.holds(CURRENT)
    reply = await rec.refresh_asked("ns", "c", proof(TOKEN))
    assert reply.answer is A.REQUESTED
    assert reply.summary["refreshAt"] == "2026-01-01T12:00:06Z"  # minInterval 10s
    assert queue.due_at(("ns", "c")) == (NOW + datetime.timedelta(seconds=6)).timestamp()


# -- the HTTP layer -----------------------------------------------------------------------


class Recorder:
    """The endpoint's one collaborator, answering as told and noting what it was asked."""

    def __init__(self, reply: possession.Reply) -> None:
        self.reply = reply
        self.asked: list[tuple[str, str, bytes | None]] = []
        self.gate: asyncio.Event | None = None
        #: Set once MAX_IN_FLIGHT requests are being answered.
        self.all_in = asyncio.Event()

    async def refresh_asked(
        self, namespace: str, name: str, proof: bytes | None
    ) -> possession.Reply:
        self.asked.append((namespace, name, proof))
        if len(self.asked) >= refreshapi.MAX_IN_FLIGHT:
            self.all_in.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.reply


async def serve(asks: Recorder, **kwargs: Any) -> tuple[refreshapi.RefreshApi, str]:
    from localcluster.cluster import free_port  # noqa: PLC0415 -- test tooling

    port = free_port()
    api = refreshapi.RefreshApi(
        asks=asks, metrics_=metrics.Metrics(), port=port, address="127.0.0.1", **kwargs
    )
    await api.start()
    return api, f"http://127.0.0.1:{port}"


PATH = "/v1/namespaces/ns/clientcredentials/c/refresh"


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (possession.Reply(A.REQUESTED, summary={"refreshAt": "x"}), 202),
        (possession.Reply(A.ALREADY_REQUESTED), 202),
        (possession.Reply(A.STALE, summary={"ready": "True"}), 200),
        (possession.Reply(A.REFUSED), 403),
        (possession.Reply(A.RATE_LIMITED, retry_after=19.2), 429),
    ],
)
async def test_answers_as_http(reply: possession.Reply, status: int) -> None:
    asks = Recorder(reply)
    api, base = await serve(asks)
    try:
        async with aiohttp.ClientSession() as session:
            headers = {refreshapi.PROOF_HEADER: possession.proof_of(TOKEN)}
            async with session.post(base + PATH, headers=headers) as resp:
                assert resp.status == status
                answer = await resp.json()
                assert answer["outcome"] == reply.answer.value
                assert answer.items() >= dict(reply.summary).items()
                if status == 429:
                    assert resp.headers["Retry-After"] == "19"
    finally:
        await api.stop()
    assert asks.asked == [("ns", "c", proof(TOKEN))]


async def test_paths_methods_and_names() -> None:
    asks = Recorder(possession.Reply(A.REFUSED))
    api, base = await serve(asks)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(base + PATH) as resp:
                assert resp.status == 405
            async with session.post(base + "/metrics") as resp:
                assert resp.status == 404
            bad = "/v1/namespaces/NS/clientcredentials/c/refresh"  # not a Kubernetes name
            async with session.post(base + bad) as resp:
                assert resp.status == 403
                refused = await resp.json()
            async with session.post(base + PATH, headers={"X-Token-SHA256": "x"}) as resp:
                assert resp.status == 403
                assert await resp.json() == refused  # the same body, whatever was wrong
            async with session.post(base + PATH, headers={"X-Pad": "a" * 5000}) as resp:
                assert resp.status == 400  # a header beyond MAX_FIELD
    finally:
        await api.stop()
    assert asks.asked == [("ns", "c", None)]


async def test_global_bounds_answer_busy() -> None:
    asks = Recorder(possession.Reply(A.STALE))
    asks.gate = asyncio.Event()
    api, base = await serve(asks)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            waiting = [
                asyncio.create_task(session.post(base + PATH))
                for _ in range(refreshapi.MAX_IN_FLIGHT)
            ]
            await asyncio.wait_for(asks.all_in.wait(), timeout=10)
            async with session.post(base + PATH) as resp:
                assert resp.status == 429
                assert (await resp.json())["outcome"] == "busy"
                assert resp.headers["Retry-After"] == "1"
            asks.gate.set()
            for task in waiting:
                resp = await task
                assert resp.status == 200
                resp.release()
    finally:
        await api.stop()
    budget = scheduler.Budget(rate=1e-9, burst=1)
    api, base = await serve(Recorder(possession.Reply(A.STALE)), budget=budget)
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(2):
                async with session.post(base + PATH) as resp:
                    statuses.append(resp.status)
            assert statuses == [200, 429]
    finally:
        await api.stop()
