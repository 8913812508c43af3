"""Prometheus collectors. One instance per process, served on a port of its own.

Per-credential series carry ``namespace`` and ``name`` and are removed when the credential
is deleted, so a cluster's churn does not grow the operator's memory. Nothing secret is
ever a label value: error labels are RFC 6749 error codes or reasons, never descriptions.

The per-credential series are not ``prometheus_client`` children: with 10,000 credentials
those cost about 2 KiB each (a child object, a value object and a lock per series). They
are one small record per credential here, turned into samples when they are scraped
(decision 0020).
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client as prom
from prometheus_client import utils as prom_utils
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

_READY_STATES = ("True", "False", "Unknown")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

_EXPIRATION = (
    "tokensync_token_expiration_timestamp_seconds",
    "Unix time at which the current access token expires.",
)
_RENEWAL = (
    "tokensync_token_renewal_timestamp_seconds",
    "Unix time at which the next refresh is due.",
)
_READY = (
    "tokensync_credential_ready",
    "1 for the credential's current Ready condition status (True, False, Unknown).",
)

Key = tuple[str, str]

#: How prometheus_client writes a value (untyped there).
_number: Callable[[float], str] = prom_utils.floatToGoString

#: Credentials per piece of a scrape's per-credential text (:meth:`PerCredential.text`).
TEXT_CHUNK = 500


def _escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Series:
    """The per-credential values; None means the series is not exported."""

    __slots__ = ("expiration", "ready", "renewal")

    def __init__(self) -> None:
        self.expiration: float | None = None
        self.renewal: float | None = None
        self.ready: str | None = None


class _Child:
    __slots__ = ("_field", "_key", "_owner")

    def __init__(self, owner: PerCredential, key: Key, field: str) -> None:
        self._owner, self._key, self._field = owner, key, field

    def set(self, value: float) -> None:
        setattr(self._owner.series(self._key), self._field, float(value))


class _Gauge:
    """``labels(namespace, name).set(value)`` and ``remove(namespace, name)``, like a Gauge."""

    def __init__(self, owner: PerCredential, field: str) -> None:
        self._owner, self._field = owner, field

    def labels(self, namespace: str, name: str) -> _Child:
        return _Child(self._owner, (namespace, name), self._field)

    def remove(self, namespace: str, name: str) -> None:
        series = self._owner.get((namespace, name))
        if series is None:
            raise KeyError((namespace, name))
        setattr(series, self._field, None)
        self._owner.drop_if_empty((namespace, name))


class PerCredential:
    """A collector yielding the per-credential gauges from one record per credential."""

    def __init__(self) -> None:
        self._series: dict[Key, _Series] = {}

    def __len__(self) -> int:
        return len(self._series)

    def series(self, key: Key) -> _Series:
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = _Series()
        return found

    def get(self, key: Key) -> _Series | None:
        return self._series.get(key)

    def drop_if_empty(self, key: Key) -> None:
        found = self._series.get(key)
        if found is not None and (found.expiration, found.renewal, found.ready) == (
            None,
            None,
            None,
        ):
            del self._series[key]

    def forget(self, key: Key) -> None:
        self._series.pop(key, None)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(*_EXPIRATION, labels=["namespace", "name"]),
            GaugeMetricFamily(*_RENEWAL, labels=["namespace", "name"]),
            GaugeMetricFamily(*_READY, labels=["namespace", "name", "condition"]),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def text(self, chunk: int = TEXT_CHUNK) -> Iterator[bytes]:
        """The same families in the text format, as ``prometheus_client.generate_latest``
        writes them (labels in name order), ``chunk`` credentials at a time: what
        :meth:`collect` builds for a scrape, a sample object and a label dict per series,
        took 13 MiB and half a second of the GIL at 10,000 credentials (decision 0062)."""
        items = sorted(self._series.copy().items())  # see collect()
        for (metric, doc), field in ((_EXPIRATION, "expiration"), (_RENEWAL, "renewal")):
            yield f"# HELP {metric} {doc}\n# TYPE {metric} gauge\n".encode()
            for start in range(0, len(items), chunk):
                lines = []
                for (namespace, name), series in items[start : start + chunk]:
                    value = getattr(series, field)
                    if value is not None:
                        lines.append(
                            f'{metric}{{name="{_escape(name)}",namespace="{_escape(namespace)}"}}'
                            f" {_number(value)}\n"
                        )
                yield "".join(lines).encode()
        metric, doc = _READY
        yield f"# HELP {metric} {doc}\n# TYPE {metric} gauge\n".encode()
        for start in range(0, len(items), chunk):
            lines = [
                f'{metric}{{condition="{series.ready}",name="{_escape(name)}",'
                f'namespace="{_escape(namespace)}"}} 1.0\n'
                for (namespace, name), series in items[start : start + chunk]
                if series.ready is not None
            ]
            yield "".join(lines).encode()

    def collect(self) -> Iterator[Metric]:
        # Scraped from the metrics server's thread while the event loop writes: copy first
        # (dict.copy() holds the GIL throughout, so it never sees the dict change size).
        items = sorted(self._series.copy().items())
        expiration, renewal, ready = self._families()
        for (namespace, name), series in items:
            if series.expiration is not None:
                expiration.add_metric([namespace, name], series.expiration)
            if series.renewal is not None:
                renewal.add_metric([namespace, name], series.renewal)
            if series.ready is not None:
                ready.add_metric([namespace, name, series.ready], 1.0)
        yield expiration
        yield renewal
        yield ready


class Metrics:
    def __init__(self, registry: prom.CollectorRegistry | None = None) -> None:
        #: Every metric but the per-credential ones, which a scrape writes itself (text()).
        self.common = prom.CollectorRegistry()
        self.per_credential = PerCredential()
        #: All of them, as one registry (for tests and :meth:`exposition`).
        self.registry = registry or prom.CollectorRegistry()
        self.registry.register(self.per_credential)
        self.registry.register(self.common)
        self.expiration = _Gauge(self.per_credential, "expiration")
        self.renewal = _Gauge(self.per_credential, "renewal")
        self.requests = prom.Counter(
            "tokensync_token_requests",
            "Token endpoint requests by result (success, error) and error reason.",
            ["result", "error"],
            registry=self.common,
        )
        self.duration = prom.Histogram(
            "tokensync_token_request_duration_seconds",
            "Time from sending a token request to parsing its response.",
            buckets=_DURATION_BUCKETS,
            registry=self.common,
        )
        self.lateness = prom.Histogram(
            "tokensync_refresh_lateness_seconds",
            "How late a refresh started against its due time.",
            buckets=_LATENESS_BUCKETS,
            registry=self.common,
        )
        self.events_dropped = prom.Counter(
            "tokensync_events_dropped",
            "Kubernetes Events not posted because more were due than --event-rate allows.",
            registry=self.common,
        )
        # spec.rolloutRestart (decision 0042): per namespace and kind, not per workload or
        # credential, so the series grow with the namespaces that use it, at most.
        self.rollout_restarts = prom.Counter(
            "tokensync_rollout_restarts",
            "Workloads restarted after a new token (spec.rolloutRestart), by namespace and kind.",
            ["namespace", "kind"],
            registry=self.common,
        )
        self.rollout_restart_failures = prom.Counter(
            "tokensync_rollout_restart_failures",
            "Workload restarts that failed, by namespace, kind and reason "
            "(NotFound, Forbidden, KubernetesAPIError).",
            ["namespace", "kind", "reason"],
            registry=self.common,
        )
        self.queue_size = prom.Gauge(
            "tokensync_refresh_queue_size",
            "Credentials waiting in the refresh queue.",
            registry=self.common,
        )
        # Labelled by outcome only: a namespace label would let any caller mint series
        # (decision 0020); the Event names the credential.
        self.refresh_asks = prom.Counter(
            "tokensync_refresh_endpoint_requests",
            "Requests at the refresh endpoint by outcome (requested, already_requested, "
            "stale, refused, rate_limited, busy, elsewhere).",
            ["outcome"],
            registry=self.common,
        )
        # Leader election and sharding (decision 0050): per replica, so a dashboard sums
        # shards_held over the replicas and compares it with shards.
        self.leader = prom.Gauge(
            "tokensync_leader",
            "1 when this replica holds at least one shard and serves its credentials.",
            registry=self.common,
        )
        self.shards = prom.Gauge(
            "tokensync_shards",
            "The shard count this replica runs with (--shards).",
            registry=self.common,
        )
        self.shards_held = prom.Gauge(
            "tokensync_shards_held",
            "Shards whose Lease this replica holds.",
            registry=self.common,
        )
        self.shard_held = prom.Gauge(
            "tokensync_shard_held",
            "1 for each shard whose Lease this replica holds (at most --shards series).",
            ["shard"],
            registry=self.common,
        )
        self.leadership_transitions = prom.Counter(
            "tokensync_leadership_transitions",
            "Shards this replica took (acquired), handed over (released) or lost.",
            ["change"],
            registry=self.common,
        )
        self.credentials = prom.Gauge(
            "tokensync_credentials",
            "ClientCredentials this replica knows: served here, or standing by.",
            ["role"],
            registry=self.common,
        )

    def set_ready(self, namespace: str, name: str, condition: str) -> None:
        if condition not in _READY_STATES:
            raise ValueError(f"not a condition status: {condition!r}")
        self.per_credential.series((namespace, name)).ready = condition

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted credential."""
        self.per_credential.forget((namespace, name))

    def exposition(self) -> bytes:
        return b"".join(self.scrape())

    def scrape(self) -> Iterator[bytes]:
        """What the metrics endpoint sends, piece by piece: the per-credential series are
        written as text a few hundred at a time, never built as samples (decision 0062)."""
        yield from self.per_credential.text()
        yield prom.generate_latest(self.common)


class _ScrapeHandler(http.server.BaseHTTPRequestHandler):
    """GET /metrics (or /): the text format, written as it is produced; HTTP/1.0, so the
    connection's end ends the body."""

    server: _MetricsServer

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path not in ("/", "/metrics"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", prom.CONTENT_TYPE_LATEST)
        self.end_headers()
        for piece in self.server.metrics.scrape():
            self.wfile.write(piece)

    def log_message(self, format: str, *args: Any) -> None:
        return  # a scrape every few seconds is not worth a log line


class _MetricsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics) -> None:
        super().__init__(address, _ScrapeHandler)
        self.metrics = metrics


def serve(metrics: Metrics, port: int, address: str = "") -> http.server.ThreadingHTTPServer:
    """Serve ``metrics`` for Prometheus on ``port``, from a daemon thread (as
    ``prometheus_client.start_http_server`` would, but without a scrape's samples)."""
    server = _MetricsServer((address, port), metrics)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
