"""Prometheus collectors. One instance per process, served on a port of its own.

Per-credential series carry ``namespace`` and ``name`` and are removed when the credential
is deleted, so a cluster's churn does not grow the operator's memory. Nothing secret is
ever a label value: error labels are RFC 6749 error codes or reasons, never descriptions.
"""

from __future__ import annotations

import contextlib

import prometheus_client as prom

_READY_STATES = ("True", "False", "Unknown")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self, registry: prom.CollectorRegistry | None = None) -> None:
        self.registry = registry or prom.CollectorRegistry()
        per_credential = ["namespace", "name"]
        self.expiration = prom.Gauge(
            "tokensync_token_expiration_timestamp_seconds",
            "Unix time at which the current access token expires.",
            per_credential,
            registry=self.registry,
        )
        self.renewal = prom.Gauge(
            "tokensync_token_renewal_timestamp_seconds",
            "Unix time at which the next refresh is due.",
            per_credential,
            registry=self.registry,
        )
        self.ready = prom.Gauge(
            "tokensync_credential_ready",
            "1 for the credential's current Ready condition status (True, False, Unknown).",
            [*per_credential, "condition"],
            registry=self.registry,
        )
        self.requests = prom.Counter(
            "tokensync_token_requests",
            "Token endpoint requests by result (success, error) and error reason.",
            ["result", "error"],
            registry=self.registry,
        )
        self.duration = prom.Histogram(
            "tokensync_token_request_duration_seconds",
            "Time from sending a token request to parsing its response.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.lateness = prom.Histogram(
            "tokensync_refresh_lateness_seconds",
            "How late a refresh started against its due time.",
            buckets=_LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.queue_size = prom.Gauge(
            "tokensync_refresh_queue_size",
            "Credentials waiting in the refresh queue.",
            registry=self.registry,
        )

    def set_ready(self, namespace: str, name: str, condition: str) -> None:
        for state in _READY_STATES:
            if state == condition:
                self.ready.labels(namespace, name, state).set(1)
            else:
                with contextlib.suppress(KeyError):
                    self.ready.remove(namespace, name, state)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted credential."""
        for gauge in (self.expiration, self.renewal):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        for state in _READY_STATES:
            with contextlib.suppress(KeyError):
                self.ready.remove(namespace, name, state)

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)
