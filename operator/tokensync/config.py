"""The operator's settings and their defaults, in one place.

``tokensync run``'s flags default to these values, and every part reads its settings from
one :class:`Config`, so a default is written once.
"""

from __future__ import annotations

import dataclasses

#: Kubernetes Events posted at most in a burst (decision 0027); the rate is a setting.
EVENT_BURST = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    allow_insecure_http: bool = False
    #: None: any host that passes the URL policy; else only these ("*.example.com" too).
    allowed_hosts: frozenset[str] | None = None
    #: Loopback, private and cluster-internal destinations the admin allows: CIDRs,
    #: addresses, host names (urlpolicy.Allowance.parse); none by default (decision 0037).
    private_networks: tuple[str, ...] = ()
    metrics_port: int | None = 8080
    metrics_address: str = "0.0.0.0"  # noqa: S104 -- scraped from outside the pod
    #: The refresh endpoint's port (decision 0043); None: not served.
    refresh_port: int | None = 8082
    refresh_address: str = "0.0.0.0"  # noqa: S104 -- called by workloads in other pods
    #: Requests with a valid proof answered per credential and minute, and at once.
    refresh_asks_per_minute: float = 3.0
    refresh_ask_burst: int = 3
    #: Refreshes running at once.
    workers: int = 16
    #: Kubernetes API requests at once (the client's thread pool, decision 0006).
    kube_workers: int = 16
    token_rate_per_host: float = 20.0
    # No burst: requests evenly spaced, so no 1-s window holds more than the rate. A burst
    # of B lets a window hold up to B - 1 more (decision 0022).
    token_burst_per_host: int = 1
    #: Token requests in flight per host (decision 0026).
    token_concurrency_per_host: int = 4
    #: Workloads read or patched at once for spec.rolloutRestart (decision 0042).
    rollout_workers: int = 4
    #: Kubernetes Events posted per second at most, on average (decision 0027).
    event_rate: float = 10.0
    #: Seconds a token request (or discovery) may take, all of it.
    request_timeout: float = 10.0
    #: Namespaces watched; empty: the whole cluster.
    namespaces: tuple[str, ...] = ()
    #: Seconds between full listings of ClientCredentials that forget the ones deleted
    #: while a watch was down (issue 14 section 7).
    resync_interval: float = 300.0
    #: Leader election and sharding on Leases (decision 0050). Off: this process serves
    #: every credential it watches.
    leader_elect: bool = False
    #: Where the Leases live, and the prefix of their names.
    lease_namespace: str | None = None
    lease_name: str = "tokensync"
    #: Seconds: how long a Lease holds without renewal, how long its holder keeps serving
    #: without one (shorter), and how often each replica renews and looks (client-go's and
    #: kube-controller-manager's defaults).
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: Shards the credentials are split into; each is served by one replica at a time.
    shards: int = 1
    #: This process's name in the Leases (a pod name and a random suffix).
    identity: str = ""


DEFAULTS = Config()
