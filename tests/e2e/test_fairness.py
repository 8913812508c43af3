"""One namespace cannot delay another (issue 14 section 2, decision 0034).

A tenant aims dozens of credentials at a loopback host that accepts connections and never
answers (a tarpit, on 127.0.0.2). Another namespace's credentials, with 20-second tokens
from a real token endpoint on 127.0.0.1, must keep refreshing on time and never expire. The
operator runs as a real process with its default workers (16) under the deploy/
ServiceAccount. The assertions are counts (tokens that lapsed before the next one was
issued, Ready=False seen for a victim, refreshes done); the lateness measured is printed
as a FIGURES line for docs/reliability.md, never asserted.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import statistics
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from support import testenv
from support.faultserver import Fault, FaultServer
from support.fixtures import operator
from support.operatorproc import OperatorProcess
from support.tokenserver import TokenServer

__all__ = ["operator"]  # the shared fixture, used by the test below

pytestmark = pytest.mark.e2e

TARPIT_HOST = "127.0.0.2"
TARPITTED, VICTIMS = 36, 10
LIFETIME = 20
WINDOW = 60.0
#: target.py's annotations (the test names them, it does not import the operator).
ISSUED_AT, REFRESH_AT = f"{testenv.GROUP}/issued-at", f"{testenv.GROUP}/refresh-at"


@pytest.fixture
def tarpit() -> Iterator[FaultServer]:
    with FaultServer(default=Fault.hang(120.0), host=TARPIT_HOST) as server:
        yield server


@pytest.fixture
def other_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def seconds(stamp: str) -> float:
    """An annotation's time: whole seconds, or the refresh time to the millisecond."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_tarpit_in_one_namespace_does_not_delay_another(
    api_client: client.ApiClient,
    namespace: str,
    other_namespace: str,
    operator: OperatorProcess,
    tarpit: FaultServer,
) -> None:
    tenant = testenv.Env(api_client, other_namespace)
    tenant.secret(
        "tarpit-client", {"client_id": "t", "client_secret": "t-s3cret"}, destinations=TARPIT_HOST
    )
    for i in range(TARPITTED):
        tenant.create_credential(
            f"stuck-{i}", {"tokenURL": tarpit.url, "clientSecretRef": {"name": "tarpit-client"}}
        )
    wait_for_requests(tarpit)  # the tarpit holds its share of the workers from now on

    victim = testenv.Env(api_client, namespace)
    with TokenServer(lifetime=LIFETIME) as idp:
        names = [f"v{i}" for i in range(VICTIMS)]
        for name in names:
            idp.add_client(name, f"{name}-s3cret")
            victim.secret(f"{name}-client", {"client_id": name, "client_secret": f"{name}-s3cret"})
            victim.create_credential(
                name,
                {
                    "tokenURL": idp.url,
                    "clientSecretRef": {"name": f"{name}-client"},
                    "target": {"name": f"{name}-token"},
                    "refresh": {"minInterval": "5s"},
                },
            )
        for name in names:
            victim.wait_ready(name)
        window_start = time.time()
        seen, not_ready = watch_victims(victim, names, until=window_start + WINDOW)
        issued = collections.defaultdict(list)
        for token in sorted(idp.issued, key=lambda token: token.issued_at):
            issued[token.client_id].append(token)

    # Lateness: when the token endpoint issued the next token, against the refresh time
    # the Secret named for the previous one. The annotation is to the second (rounded
    # down), so this is an upper bound, up to a second above the truth.
    late = []
    for name, times in seen.items():
        for _, refresh_at in times[:-1]:
            after = [t.issued_at.timestamp() for t in issued[name]]
            late.append(min(t for t in after if t > refresh_at) - refresh_at)
    lapsed = sum(
        1
        for tokens in issued.values()
        for earlier, later in itertools.pairwise(tokens)
        if later.issued_at > earlier.expires_at
    )
    stuck_requests = len(tarpit.requests)
    still_asked = len(tarpit.requests_since(window_start))
    print(
        "\nFIGURES "
        + json.dumps(
            {
                "test": "tarpit_fairness",
                "tarpitted_credentials": TARPITTED,
                "victims": VICTIMS,
                "victim_lifetime_s": LIFETIME,
                "window_s": WINDOW,
                "victim_refreshes": len(late),
                "victim_lateness_upper_p50_s": round(statistics.median(late), 3) if late else None,
                "victim_lateness_upper_p99_s": quantile(late, 0.99),
                "victim_lateness_upper_max_s": round(max(late), 3) if late else None,
                "victim_tokens_lapsed": lapsed,
                "victim_ready_false_seen": not_ready,
                "tarpit_requests": stuck_requests,
                "tarpit_requests_in_window": still_asked,
            },
            sort_keys=True,
        )
    )
    # Each victim renews about every 2/3 of 20 s: about 3 refreshes each in the window.
    assert len(late) >= VICTIMS * 2, seen
    assert lapsed == 0  # no victim token expired before its successor was issued
    assert not_ready == 0
    assert still_asked >= 4  # the tarpit held its share all along


def wait_for_requests(tarpit: FaultServer) -> None:
    deadline = time.monotonic() + 60
    while len(tarpit.requests) < 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(tarpit.requests) >= 8, "the operator never reached the tarpit"


def watch_victims(
    env: testenv.Env, names: list[str], *, until: float
) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """Poll every victim's Secret and Ready: distinct (issued, refresh-at) pairs in order,
    and how often Ready was seen False."""
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    not_ready = 0
    while time.time() < until:
        for item in env.credentials().values():
            name = item["metadata"]["name"]
            if name in seen and (testenv.ready_of(item) or {}).get("status") != "True":
                not_ready += 1
        for secret in env.core.list_namespaced_secret(env.ns).items:
            meta = secret.metadata
            if meta is None or meta.name is None:
                continue
            name, annotations = meta.name.removesuffix("-token"), meta.annotations or {}
            if name not in seen or ISSUED_AT not in annotations:
                continue
            times = (seconds(annotations[ISSUED_AT]), seconds(annotations[REFRESH_AT]))
            if not seen[name] or seen[name][-1] != times:
                seen[name].append(times)
        time.sleep(0.25)
    return seen, not_ready


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
