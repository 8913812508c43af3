"""The operator's shared parts, built once at startup and closed at shutdown.

One Kubernetes API client (with its bounded thread pool), the HTTP clients for
every token request, one metrics registry and server, one refresh queue and its workers.
kopf handlers reach them through ``memo.runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

import prometheus_client
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from tokensync import kube, metrics, reconcile, scheduler, transport

logger = logging.getLogger(__name__)

#: The refresh loop counts as stuck when its dispatcher has not run for this long.
STUCK_AFTER = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    allow_insecure_http: bool = False
    allowed_hosts: frozenset[str] | None = None
    metrics_port: int | None = 8080
    metrics_address: str = "0.0.0.0"  # noqa: S104 -- scraped from outside the pod
    workers: int = 16
    kube_workers: int = 8
    token_rate_per_host: float = 20.0
    token_burst_per_host: int = 20
    request_timeout: float = 10.0


def _api_client(workers: int) -> k8s_client.ApiClient:
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    configuration.connection_pool_maxsize = workers
    return k8s_client.ApiClient(configuration)


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = metrics.Metrics()
        self.queue: scheduler.RefreshQueue[reconcile.Key] = scheduler.RefreshQueue(
            workers=config.workers
        )
        self.kube = kube.Kube(_api_client(config.kube_workers), workers=config.kube_workers)
        self.http = transport.HttpClients(
            timeout=config.request_timeout, max_connections=config.workers
        )
        self.reconciler = reconcile.Reconciler(
            kube_api=self.kube,
            http=self.http,
            metrics_=self.metrics,
            queue=self.queue,
            pacer=scheduler.HostPacer(
                rate=config.token_rate_per_host, burst=config.token_burst_per_host
            ),
            settings=reconcile.Settings(
                allow_insecure_http=config.allow_insecure_http,
                allowed_hosts=config.allowed_hosts,
                request_timeout=config.request_timeout,
            ),
        )
        # Read at scrape time: kopf caches the health probe's result for up to 10 s, so
        # setting it there made the gauge lag (and a restart look 10 s slower than it is).
        self.metrics.queue_size.set_function(lambda: len(self.queue))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.config.metrics_port is not None:
            prometheus_client.start_http_server(
                self.config.metrics_port,
                addr=self.config.metrics_address,
                registry=self.metrics.registry,
            )
            logger.info("metrics on port %d", self.config.metrics_port)
        self._task = asyncio.create_task(self.queue.run(self.reconciler.refresh))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.http.aclose()
        self.kube.close()

    def health(self) -> dict[str, float]:
        """For the liveness probe: raises when the refresh loop is stuck."""
        age = time.monotonic() - self.queue.heartbeat
        if self._task is None or self._task.done() or age > STUCK_AFTER:
            raise RuntimeError(f"refresh loop not running (last heartbeat {age:.0f}s ago)")
        return {"heartbeat_age_seconds": round(age, 3), "credentials": len(self.reconciler)}
