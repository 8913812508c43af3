"""Timing that no answer of a token endpoint can break (issue 14, section 5; decision 0031).

The operator runs as a real process under the deploy/ ServiceAccount (shared by the
module); each test has its own namespace and a scripted token endpoint
(tests/support/faultserver.py) that counts the requests it gets. The assertions are on
request counts over a window, never on durations, so a slow machine does not fail them;
the rates measured are printed as a FIGURES line (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from support import testenv
from support.faultserver import Fault, FaultServer
from support.fixtures import operator
from support.operatorproc import OperatorProcess

__all__ = ["operator"]  # the shared fixture, used by the tests below

pytestmark = pytest.mark.e2e

#: A token that lives 2 s, renewed no more often than every 5 s ...
LIFETIME, MIN_INTERVAL = 2, 5
#: ... counted over this window, which at most MIN_INTERVAL-spaced refreshes fill 3 times.
WINDOW = 15.0


class Env(testenv.Env):
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(api, namespace)
        self.secret("oauth-client", {"client_id": "timing", "client_secret": "timing-s3cret"})

    def credential(self, url: str, **spec: Any) -> None:
        self.create_credential(
            "api", {"tokenURL": url, "clientSecretRef": {"name": "oauth-client"}, **spec}
        )


@pytest.fixture
def env(api_client: client.ApiClient, namespace: str, operator: OperatorProcess) -> Env:
    return Env(api_client, namespace)


@pytest.fixture
def endpoint() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def report(test: str, figures: dict[str, Any]) -> None:
    print(f"\nFIGURES {json.dumps({'test': test, **figures}, sort_keys=True)}")


def test_min_interval_holds_for_a_two_second_token(env: Env, endpoint: FaultServer) -> None:
    """A server answering expires_in: 2 is asked no more often than minInterval allows
    (the midpoint rule asked it about once a second: ~60 requests a minute); the Ready
    message says why the Secret holds an expired token, and one Warning Event says it."""
    endpoint.default = Fault.token(access_token="short-lived", expires_in=LIFETIME)
    env.credential(endpoint.url, refresh={"minInterval": f"{MIN_INTERVAL}s"})
    env.wait_ready()
    start = time.time()
    time.sleep(WINDOW)
    count = len(endpoint.requests_since(start))
    report(
        "min_interval_2s_token",
        {
            "lifetime_s": LIFETIME,
            "min_interval_s": MIN_INTERVAL,
            "window_s": WINDOW,
            "token_requests_in_window": count,
            "token_requests_per_minute": round(count * 60 / WINDOW, 1),
        },
    )
    # Refreshes at least MIN_INTERVAL apart: at most WINDOW / MIN_INTERVAL + 1 in the window.
    assert count <= WINDOW / MIN_INTERVAL + 1, count
    assert count >= 2, "the credential stopped refreshing"  # it is renewed all the same
    ready = env.ready()
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "TokenIssued")
    assert "is shorter than spec.refresh.minInterval" in ready["message"], ready["message"]
    warnings = [e for e in env.events("api") if e.reason == "LifetimeBelowMinInterval"]
    assert len(warnings) == 1, [e.message for e in warnings]  # once, not per refresh
    assert warnings[0].type == "Warning"


def test_an_invalid_target_is_not_refetched_at_every_backoff(
    env: Env, endpoint: FaultServer
) -> None:
    """A token too large for a Secret (access_token and authorization over 1 MiB): the API
    server refuses the target (422), which is TargetInvalid, retried in 5 minutes; as a
    transient failure it fetched a new token at every backoff step (1, 2, 4 ... s)."""
    endpoint.default = Fault.token(access_token="x" * 600_000, expires_in=3600)
    env.credential(endpoint.url, refresh={"minInterval": "1s"})
    ready = env.wait_ready(reason="TargetInvalid")
    assert ready["status"] == "False"
    assert "refused the target Secret 'api-token' as invalid" in ready["message"]
    time.sleep(6)  # a transient backoff would have asked two or three more times by now
    assert len(endpoint.requests) == 1
    assert env.secret_data("api-token") is None
