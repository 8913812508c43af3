"""The operator against a token endpoint that fails on purpose (tests/support/faultserver.py).

Each test gets its own namespace, client Secret and FaultServer; the operator runs as a real
process under the deploy/ ServiceAccount, shared by the module. What the contract promises
(design.md, "Errors", "Never lose a good token") is checked on the full history of the
objects, recorded with watches, not on a few polled snapshots: a watch sees every write, so
"the target Secret was never touched" and "failedAttempts went 1, 2, 3, 4" are exact.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import email.utils
import json
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from support import testenv
from support.faultserver import Fault, FaultServer
from support.fixtures import operator
from support.operatorproc import OperatorProcess
from support.testenv import GROUP, PLURAL, VERSION, decoded, ready_of

__all__ = ["operator"]  # the shared fixture, used by the tests below

CLIENT_ID = "fault-client"
CLIENT_SECRET = "fault-s3cr3t-Qx7!never-in-logs"
#: The operator's token request timeout (runtime.Config.request_timeout); no flag sets it.
REQUEST_TIMEOUT = 10.0
#: Error reasons the tests below provoked; the metrics test checks each has its series.
PROVOKED: set[str] = set()
#: Between checks while waiting: as this module has always polled (the shared default is 0.1 s).
POLL_INTERVAL = 0.05


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def arrivals(server: FaultServer, since: float = 0.0) -> list[float]:
    """When each request reached ``server`` (floats only: a Recorded's repr in an assertion
    message would print its Authorization header)."""
    return [r.at for r in server.requests if r.at >= since]


def rfc3339(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def jwt_expiring_at(exp: int) -> str:
    """An unsigned JWT-shaped token: the operator reads its ``exp`` to learn the lifetime.

    With no ``expires_in``, the expiry is exactly ``exp`` (not "request time + lifetime"),
    which lets a test know to the second when the token expires.
    """

    def segment(document: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    claims = {"exp": exp, "jti": uuid.uuid4().hex}
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}.x"


class Recorder:
    """Every watch event of one object, with the wall-clock time it arrived.

    The watch starts from the resourceVersion of a list made in the constructor, so no
    write that happens after the constructor returns can be missed.
    """

    def __init__(self, list_fn: Callable[..., Any], *args: Any, name: str) -> None:
        selector = f"metadata.name={name}"
        listed = list_fn(*args, field_selector=selector)
        version = (
            listed["metadata"]["resourceVersion"]
            if isinstance(listed, dict)
            else listed.metadata.resource_version
        )
        self._events: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._watch = watch.Watch()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(list_fn, args, selector, version),
            name=f"watch-{name}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, list_fn: Callable[..., Any], args: Any, selector: str, version: str) -> None:
        try:
            for event in self._watch.stream(
                list_fn,
                *args,
                field_selector=selector,
                resource_version=version,
                timeout_seconds=240,
            ):
                with self._lock:
                    self._events.append((time.time(), event["type"], event["raw_object"]))
        except Exception as exc:  # reported by the test that reads the events
            self.error = exc

    def stop(self) -> None:
        self._watch.stop()

    @property
    def events(self) -> list[tuple[float, str, dict[str, Any]]]:
        assert self.error is None, f"watch failed: {self.error!r}"
        with self._lock:
            return list(self._events)

    def objects(self) -> list[dict[str, Any]]:
        return [obj for _, kind, obj in self.events if kind in ("ADDED", "MODIFIED")]


class Env(testenv.Env):
    """One test's namespace and shortcuts; the watches it starts are stopped at teardown."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(api, namespace, interval=POLL_INTERVAL)
        self.recorders: list[Recorder] = []
        self.secret("oauth-client", {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})

    def credential(self, name: str, url: str, **spec: Any) -> None:
        self.create_credential(
            name,
            {
                "tokenURL": url,
                "clientSecretRef": {"name": "oauth-client"},
                "refresh": {"minInterval": "1s"},
                **spec,
            },
        )

    def target(self, name: str) -> dict[str, str] | None:
        """The target Secret's raw (base64) data, byte for byte as stored."""
        return self.secret_data(name, raw=True)

    def wait_token(self, name: str, token: str, *, timeout: float = 20.0) -> dict[str, str]:
        def check() -> dict[str, str] | None:
            data = self.target(name)
            return data if data and decoded(data).get("access_token") == token else None

        return self.wait_for(check, timeout=timeout, what=f"{token!r} in Secret {name}")

    def watch_credential(self, name: str) -> Recorder:
        recorder = Recorder(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL, name=name
        )
        self.recorders.append(recorder)
        return recorder

    def watch_secret(self, name: str) -> Recorder:
        recorder = Recorder(self.core.list_namespaced_secret, self.ns, name=name)
        self.recorders.append(recorder)
        return recorder


@pytest.fixture
def env(api_client: client.ApiClient, namespace: str, operator: OperatorProcess) -> Iterator[Env]:
    environment = Env(api_client, namespace)
    yield environment
    for recorder in environment.recorders:
        recorder.stop()


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def test_transient_errors_keep_the_last_good_token(
    env: Env, faults: FaultServer, operator: OperatorProcess
) -> None:
    # Token A lives 30 s but is due 27 s before expiry (about 1-3 s after issue, jitter
    # included): the four failures below back off at most 1+2+4+8 s in total, which
    # leaves A valid throughout. A 6-8 s lifetime cannot promise that with full jitter.
    faults.push(
        Fault.token(access_token="token-A-good", expires_in=30),
        Fault.server_error(503),
        Fault.server_error(503),
        Fault.garbage(),
        Fault.missing_fields(),
    )
    faults.default = Fault.token(access_token="token-B-recovered", expires_in=3600)
    history = env.watch_credential("api")
    secret_history = env.watch_secret("api-token")
    env.credential("api", faults.url, refresh={"minInterval": "1s", "renewBefore": "27s"})

    good = env.wait_token("api-token", "token-A-good")
    recovered = env.wait_token("api-token", "token-B-recovered", timeout=25)
    ready = env.wait_ready("api", "TokenIssued")
    PROVOKED.update({"ServerError", "BadResponse"})
    assert ready["status"] == "True"
    st = env.status("api")
    assert st["failedAttempts"] == 0
    assert decoded(recovered)["authorization"] == "Bearer token-B-recovered"
    assert len(faults.requests) == 6, "one request per attempt, nothing more"

    # The Secret: written twice, A then B, never touched (let alone emptied) in between.
    env.wait_for(lambda: len(secret_history.objects()) >= 2, what="both Secret writes watched")
    versions = [obj.get("data") for obj in secret_history.objects()]
    assert versions[0] == good
    assert versions[-1] == recovered
    assert all(v in (good, recovered) for v in versions)
    first_b = versions.index(recovered)
    assert all(v == good for v in versions[:first_b]), "the good token was altered"

    # Status, write by write: Ready stays True (RefreshFailing) and counts every failure.
    env.wait_for(
        lambda: any(
            (ready_of(o) or {}).get("reason") == "TokenIssued"
            and (o.get("status") or {}).get("failedAttempts") == 0
            and (o.get("status") or {}).get("expiresAt") == st["expiresAt"]
            for o in history.objects()
        ),
        what="the recovery in the watch",
    )
    states = [
        (r["status"], r["reason"], o["status"].get("failedAttempts"), r["lastTransitionTime"])
        for o in history.objects()
        if (r := ready_of(o)) is not None
    ]
    assert {s[0] for s in states} == {"True"}, states
    assert len({s[3] for s in states}) == 1, "Ready never transitioned, so neither did its time"
    failing = [s[2] for s in states if s[1] == "RefreshFailing"]
    assert failing == [1, 2, 3, 4], states
    assert states[-1][1:3] == ("TokenIssued", 0)
    messages = [r["message"] for o in history.objects() if (r := ready_of(o)) is not None]
    for reason in ("ServerError", "BadResponse"):
        assert any(f"refresh failed ({reason}:" in m for m in messages), (reason, messages)

    # Events: a Warning per change of reason (not per attempt), then one Recovered.
    def all_events() -> list[tuple[str, str]] | None:
        seen = [(e.type, e.reason) for e in env.events("api")]
        return seen if ("Normal", "Recovered") in seen else None

    seen = env.wait_for(all_events, what="the Recovered event")
    assert seen == [
        ("Normal", "Issued"),
        ("Warning", "ServerError"),
        ("Warning", "BadResponse"),
        ("Normal", "Recovered"),
    ]

    # Secrets stay secret, garbage bodies included.
    haystack = " ".join(
        [
            operator.log(),
            json.dumps(env.status("api")),
            " ".join(e.message or "" for e in env.events("api")),
        ]
    )
    for needle in (CLIENT_SECRET, "token-A-good", "token-B-recovered", "not json"):
        assert needle not in haystack


def test_token_expires_during_an_outage(
    env: Env, faults: FaultServer, operator: OperatorProcess
) -> None:
    exp = int(time.time()) + 8
    token = jwt_expiring_at(exp)
    faults.push(Fault.token(access_token=token, expires_in=None))
    history = env.watch_credential("api")
    secret_history = env.watch_secret("api-token")
    env.credential("api", faults.url)
    good = env.wait_token("api-token", token)
    assert env.status("api")["expiresAt"] == datetime.datetime.fromtimestamp(
        exp, datetime.UTC
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The endpoint goes away: the open keep-alive connection is hung up on, and every
    # later attempt is "connection refused".
    faults.default = Fault.disconnect()
    faults.stop()

    # Shortly before expiry the refresh (due with a third of the 8 s left) has failed, and
    # Ready is still True.
    env.wait_for(
        lambda: (env.ready("api") or {}).get("reason") == "RefreshFailing",
        timeout=exp - time.time(),
        what="RefreshFailing before expiry",
    )
    sleep_until(exp - 1.0)
    ready = env.ready("api")
    assert time.time() < exp, "the read came too late to prove anything"
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "RefreshFailing")
    assert "ConnectionFailed" in ready["message"]

    expired = env.wait_ready("api", "Expired", timeout=exp + 3.0 - time.time())
    PROVOKED.add("ConnectionFailed")
    assert expired["status"] == "False"
    # The transition time is the attempt's clock, to the second; exp is a whole second,
    # so this holds exactly when the operator declared expiry at or after exp.
    assert rfc3339(expired["lastTransitionTime"]) >= exp
    assert "ConnectionFailed" in expired["message"]
    assert env.target("api-token") == good, "the expired token must stay, not be emptied"
    # Logged as well: Events beyond their rate are dropped, the log line is not.
    env.wait_for(
        lambda: f"WARNING tokensync.reconcile: {env.ns}/api: token expired at " in operator.log(),
        timeout=5,
        what="the expiry in the operator's log",
    )

    # Every status write before the Expired one had Ready True.
    objects = history.objects()
    first_false = next(
        i for i, o in enumerate(objects) if (ready_of(o) or {}).get("status") == "False"
    )
    assert all(
        (ready_of(o) or {"status": "True"})["status"] == "True" for o in objects[:first_false]
    )
    assert [o.get("data") for o in secret_history.objects()] == [good]


def test_retry_after_is_honoured(env: Env) -> None:
    delay = 4
    with FaultServer() as seconds, FaultServer() as date:
        seconds.push(Fault.rate_limited(retry_after=str(delay)))
        not_before = int(time.time()) + 5
        date.push(Fault.rate_limited(retry_after=email.utils.formatdate(not_before, usegmt=True)))
        histories = {name: env.watch_credential(name) for name in ("seconds", "date")}
        env.credential("seconds", seconds.url)
        env.credential("date", date.url)
        env.wait_token("seconds-token", "fault-token", timeout=15)
        env.wait_token("date-token", "fault-token", timeout=15)
        PROVOKED.add("RateLimited")

        first, retry, *more = arrivals(seconds)
        assert not more
        waited = retry - first
        assert delay - 0.2 <= waited <= delay + 2.0, f"retried after {waited:.3f}s"

        first, retry, *more = arrivals(date)
        assert not more
        assert first < not_before - 1.0, "the first request came too late for the test"
        assert not_before - 0.2 <= retry <= not_before + 2.0, (
            f"retried {retry - not_before:+.3f}s from the Retry-After date"
        )

    for name, history in histories.items():
        reasons = [(r["status"], r["reason"]) for o in history.objects() if (r := ready_of(o))]
        assert ("False", "RateLimited") in reasons, (name, reasons)


def test_permanent_errors_wait_for_a_spec_change(env: Env) -> None:
    window = 5.0
    with FaultServer() as scope_server, FaultServer() as client_server:
        # invalid_scope from the start: nothing to keep, nothing to probe (1 request).
        scope_server.default = Fault.oauth_error("invalid_scope")
        env.credential("scope", scope_server.url, scopes=["nope"])
        # invalid_client after a good token: the remembered method fails, then `auto`
        # probes basic and post once each (3 requests), and the good token stays.
        client_server.push(Fault.token(access_token="client-good", expires_in=3600))
        client_server.default = Fault.oauth_error("invalid_client", status=401)
        env.credential("client", client_server.url, scopes=["read"])
        good = env.wait_token("client-token", "client-good")
        env.wait_ready("client", "TokenIssued")
        env.patch(
            "client", {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "1"}}}
        )

        scope_ready = env.wait_ready("scope", "InvalidScope")
        client_ready = env.wait_ready("client", "InvalidClient")
        PROVOKED.update({"InvalidScope", "InvalidClient"})
        assert scope_ready["status"] == client_ready["status"] == "False"
        # No fast retry loop: watch the endpoints for a while (a deliberate sleep).
        time.sleep(window)
        assert len(scope_server.requests) == 1
        # The good token's request, then one attempt: the remembered method, then `auto`'s
        # probes (see test_invalid_client_probes_each_method_once for the duplicate).
        assert 1 + 2 <= len(client_server.requests) <= 1 + 3
        assert env.target("client-token") == good
        assert env.target("scope-token") is None
        for name in ("scope", "client"):
            next_at = rfc3339(env.status(name)["nextRefreshAt"])
            assert next_at - time.time() > 60, f"{name}: a permanent error retried soon"

        # A spec change is a new attempt, at once.
        scope_server.default = Fault.token(access_token="scope-fixed", expires_in=3600)
        changed = time.time()
        env.patch("scope", {"spec": {"scopes": ["read"]}})
        env.patch("client", {"spec": {"scopes": ["read", "write"]}})
        env.wait_token("scope-token", "scope-fixed", timeout=5)
        env.wait_ready("scope", "TokenIssued", timeout=5)
        retried = env.wait_for(
            lambda: client_server.requests_since(changed), timeout=5, what="a new attempt"
        )
        assert arrivals(client_server, changed)[0] - changed < 3.0
        sent = urllib.parse.parse_qs(retried[0].body.decode())
        assert sent["scope"] == ["read write"], "the attempt used the new spec"
        assert arrivals(scope_server, changed)[0] - changed < 3.0
        env.wait_for(lambda: env.status("client").get("observedGeneration") == 2, timeout=5)
        assert (env.ready("client") or {}).get("reason") == "InvalidClient"
        assert env.target("client-token") == good


def test_hang_is_a_transient_timeout(env: Env, faults: FaultServer) -> None:
    faults.push(Fault.hang(REQUEST_TIMEOUT + 20))
    history = env.watch_credential("api")
    env.credential("api", faults.url)
    # Transient: retried after the 1 s backoff step, not after the permanent-error delay.
    env.wait_token("api-token", "fault-token", timeout=REQUEST_TIMEOUT + 5)
    PROVOKED.add("Timeout")
    first, retry, *more = arrivals(faults)
    assert not more
    assert REQUEST_TIMEOUT - 0.5 <= retry - first <= REQUEST_TIMEOUT + 2.0
    env.wait_ready("api", "TokenIssued")
    assert env.status("api")["failedAttempts"] == 0
    # The retry may follow within milliseconds: the watch saw the failure that polling may not.
    failures = [
        (r["status"], r["reason"], o["status"]["failedAttempts"], r["message"])
        for o in history.objects()
        if (r := ready_of(o)) is not None and r["reason"] != "TokenIssued"
    ]
    assert len(failures) == 1, failures
    status, reason, attempts, message = failures[0]
    # No token yet, so nothing valid keeps Ready True.
    assert (status, reason, attempts) == ("False", "Timeout", 1)
    assert "timed out" in message


def test_metrics_and_liveness(env: Env, faults: FaultServer, operator: OperatorProcess) -> None:
    faults.push(Fault.server_error(502))
    faults.default = Fault.token(access_token="metrics-token", expires_in=3600)
    env.credential("api", faults.url)
    env.wait_token("api-token", "metrics-token")
    env.wait_ready("api", "TokenIssued")
    expires_at = rfc3339(env.status("api")["expiresAt"])

    def samples() -> dict[str, list[tuple[dict[str, str], float]]]:
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(operator.metrics()):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found

    def has_expiration() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        found = samples()
        series = found.get("tokensync_token_expiration_timestamp_seconds", [])
        mine = {"namespace": env.ns, "name": "api"}
        return found if any(labels == mine for labels, _ in series) else None

    found = env.wait_for(has_expiration, timeout=5, what="the expiration gauge")
    requests = {
        (labels["result"], labels["error"]): value
        for labels, value in found["tokensync_token_requests_total"]
    }
    assert requests[("error", "ServerError")] >= 1
    assert requests[("success", "")] >= 1
    for reason in PROVOKED:  # whatever the earlier tests of this module provoked
        assert requests.get(("error", reason), 0) >= 1, reason
    for histogram in (
        "tokensync_token_request_duration_seconds",
        "tokensync_refresh_lateness_seconds",
    ):
        # Two attempts of this test alone (the 502 and the token); more after other tests.
        assert found[f"{histogram}_count"][0][1] >= 2, histogram
        assert found[f"{histogram}_bucket"], histogram
    expiration = next(
        value
        for labels, value in found["tokensync_token_expiration_timestamp_seconds"]
        if labels == {"namespace": env.ns, "name": "api"}
    )
    # Status is rounded down to the second; the gauge is exact.
    assert expires_at <= expiration < expires_at + 1

    url = f"http://127.0.0.1:{operator.health_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200


def test_retry_after_counts_from_the_response(env: Env, faults: FaultServer) -> None:
    answer_after, delay = 1.5, 3
    faults.push(dataclasses.replace(Fault.rate_limited(retry_after=str(delay)), delay=answer_after))
    env.credential("api", faults.url)
    env.wait_token("api-token", "fault-token", timeout=15)
    first, retry, *_ = arrivals(faults)
    answered = first + answer_after
    assert retry >= answered + delay - 0.2, (
        f"retried {answered + delay - retry:.2f}s before the Retry-After the server sent"
    )


def test_invalid_client_probes_each_method_once(env: Env, faults: FaultServer) -> None:
    faults.push(Fault.token(access_token="probe-good", expires_in=3600))
    faults.default = Fault.oauth_error("invalid_client", status=401)
    env.credential("api", faults.url)
    env.wait_token("api-token", "probe-good")
    env.wait_ready("api", "TokenIssued")
    env.patch("api", {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "1"}}})
    env.wait_ready("api", "InvalidClient")
    failed = faults.requests[1:]
    methods = [
        "basic" if "Authorization" in r.headers else "post" if b"client_secret=" in r.body else "?"
        for r in failed
    ]
    assert methods == ["basic", "post"]


def test_expiry_is_reported_while_a_request_hangs(env: Env, faults: FaultServer) -> None:
    exp = int(time.time()) + 6
    token = jwt_expiring_at(exp)
    # The refresh (due with a third of the lifetime left) hangs past the expiry.
    faults.push(Fault.token(access_token=token, expires_in=None), Fault.hang(30))
    env.credential("api", faults.url)
    env.wait_token("api-token", token)
    env.wait_for(lambda: len(faults.requests) == 2, timeout=exp - time.time(), what="the refresh")
    expired = env.wait_ready("api", "Expired", timeout=exp + 2.0 - time.time())
    assert expired["status"] == "False"


def test_recovery_after_a_restart_is_reported(
    env: Env, faults: FaultServer, operator: OperatorProcess
) -> None:
    faults.push(Fault.token(access_token="restart-A", expires_in=120))
    faults.default = Fault.server_error(503)
    env.credential("api", faults.url, refresh={"minInterval": "1s", "renewBefore": "118s"})
    env.wait_token("api-token", "restart-A")
    env.wait_ready("api", "RefreshFailing")
    operator.stop()
    PROVOKED.clear()  # the restarted operator's counters start from zero
    # The endpoint recovers while the operator is down: its first attempt succeeds.
    faults.default = Fault.token(access_token="restart-B", expires_in=3600)
    operator.start()
    env.wait_token("api-token", "restart-B", timeout=20)
    env.wait_ready("api", "TokenIssued")

    # The Recovered event follows the status write; give it a moment, then compare.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen = [(e.type, e.reason) for e in env.events("api")]
        if ("Normal", "Recovered") in seen:
            break
        time.sleep(0.05)
    assert seen == [("Normal", "Issued"), ("Warning", "ServerError"), ("Normal", "Recovered")]
