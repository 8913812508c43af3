"""The operator's shared parts, built once at startup and closed at shutdown.

One Kubernetes API client (with its bounded thread pool), the HTTP clients for
every token request, one metrics registry and server, one refresh queue and its workers.
kopf handlers reach them through ``memo.runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

import tokensync
from tokensync import (
    config,
    failures,
    kube,
    kuberest,
    listwatch,
    membership,
    metrics,
    model,
    ownership,
    proxies,
    reconcile,
    refreshapi,
    scheduler,
    seen,
    target,
    tracking,
    transport,
    urlpolicy,
)

logger = logging.getLogger(__name__)

#: The refresh loop counts as stuck when its dispatcher has not run for this long.
STUCK_AFTER = 30.0
#: A start waits this long at most for the watch to deliver a listed credential that does
#: not come (deleted meanwhile) before this replica takes shards.
WARM_STALL = 10.0
#: How often the heap is considered for gc.freeze(), and the growth that calls for another.
FREEZE_INTERVAL = 30.0
FREEZE_GROWTH = 1.25


def _api_client(workers: int, identity: str = "", *, retries: bool = True) -> k8s_client.ApiClient:
    # The API server is reached directly, as kopf's own client does: HTTPS_PROXY is the
    # egress proxy for token requests (decision 0049), which the kubernetes client would
    # otherwise take for its own. A kubeconfig's proxy-url still applies.
    configuration = k8s_client.Configuration(proxy="", no_proxy="")
    try:
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    configuration.connection_pool_maxsize = workers
    if not retries:
        configuration.retries = False  # one attempt per call, within the call's own timeout
    api = k8s_client.ApiClient(configuration)
    # Names this replica in the API server's audit log (decision 0050).
    suffix = f" ({identity})" if identity else ""
    api.user_agent = f"tokensync/{tokensync.__version__}{suffix}"
    return api


def malloc_trim() -> bool:
    """Hand the C allocator's free pages back to the system (glibc's ``malloc_trim``).

    A cold start or a restart parses every listed object at once, partly in the Kubernetes
    client's threads, each with its own malloc arena; once that is over, most of those pages
    are free but still resident (decision 0053). False where the C library has no such call
    (musl, macOS): nothing is done there.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))


#: glibc's ``mallopt`` parameter for the mmap threshold (``M_MMAP_THRESHOLD`` in malloc.h),
#: and the threshold kept: glibc's own initial value.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Keep glibc's mmap threshold at ``size``: a C allocation of that size or more that no
    free chunk can serve gets a mapping of its own, unmapped when freed.

    glibc starts at 128 KiB but raises the threshold to the size of each such block freed
    (large response bodies), up to 32 MiB; smaller blocks then come from the arenas, where
    freed memory stayed: at 3,000 credentials the threads' arenas held 9.4 MiB free after
    the steady state's first resync, and ``malloc_trim`` gave back under 1 MiB of it. With
    the threshold fixed from here on they held 1.6 MiB, and the steady state grew 2.5-2.9
    MiB instead of 9.7 (decision 0056). The heap trim threshold is left as the imports left
    it (raised to 4 MiB). False where the C library has no such call (musl, macOS).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, size))


class HeapFreezer:
    """Moves what lives as long as the process out of the cyclic collector's way.

    A full collection walks every tracked object: the interpreter's modules, kopf, and
    several objects per credential. With thousands of credentials that pause delays every
    refresh due meanwhile (decision 0023). Once the number of credentials has stopped
    changing for one interval, one full collection is run and the survivors are frozen
    (``gc.freeze()``), so later full collections walk only what was allocated since. It
    happens again only when the number of credentials grows by a quarter.

    At every check, frozen or not, the C allocator's free pages go back to the system
    (``trim``, decision 0053): listings (a start, the resync, the client Secrets'
    confirmation every 150 s) leave them behind, resident. It takes milliseconds.
    """

    def __init__(self, count: Callable[[], int], *, trim: Callable[[], bool] = malloc_trim) -> None:
        self._count = count
        self._trim = trim
        self._seen = -1
        self._frozen_at = 0

    def check(self) -> bool:
        """One check; freezes and returns True when the count is settled and has grown.
        Trims either way, after the freeze's collection if there was one."""
        frozen = self._freeze()
        self._trim()
        return frozen

    def _freeze(self) -> bool:
        count, seen = self._count(), self._seen
        self._seen = count
        if count != seen or count == 0 or count < self._frozen_at * FREEZE_GROWTH:
            return False
        started = time.monotonic()
        gc.collect()  # what is garbage now must not be frozen
        gc.freeze()
        self._frozen_at = max(count, 1)
        logger.info(
            "froze %d objects with %d credentials (%.2f s)",
            gc.get_freeze_count(),
            count,
            time.monotonic() - started,
        )
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FREEZE_INTERVAL)
            self.check()


class Runtime:
    def __init__(self, settings: config.Config) -> None:
        self.config = settings
        fix_mmap_threshold()  # before the first listing (decision 0056)
        self.metrics = metrics.Metrics()
        # Fair across namespaces, earliest expiry first within one (decisions 0034, 0066).
        self.queue = reconcile.refresh_queue(settings.workers, lambda: self.reconciler)
        self.pacer = scheduler.HostPacer(
            rate=settings.token_rate_per_host,
            burst=settings.token_burst_per_host,
            concurrency=settings.token_concurrency_per_host,
        )
        # Leader election and sharding (decision 0050): which shards this replica serves,
        # and the fence every write passes.
        self.membership = (
            membership.for_settings(
                settings,
                identity=settings.identity,
                # No retry in urllib3: a Lease write re-sent after a lost answer meets its own
                # newer version (409), and every retry adds a whole timeout to a renewal.
                api=_api_client(1, settings.identity, retries=False),
                metrics_=self.metrics,
                share_rate=self.pacer.share,
            )
            if settings.leader_elect
            else None
        )
        self.kube = kube.Kube(
            _api_client(settings.kube_workers, settings.identity),
            workers=settings.kube_workers,
            fence=self.membership.may_write if self.membership else None,
        )
        self.http = transport.HttpClients(
            timeout=settings.request_timeout,
            max_connections=settings.workers,
            allowance=urlpolicy.Allowance.parse(settings.private_networks),
            # The admin's proxy, from the environment as curl reads it (decision 0049);
            # `tokensync run` refused a bad value before the operator started.
            egress=proxies.from_environment(os.environ),
        )
        self.reconciler = reconcile.Reconciler(
            kube_api=self.kube,
            http=self.http,
            metrics_=self.metrics,
            queue=self.queue,
            pacer=self.pacer,
            settings=settings,
            serving=self.membership.serves if self.membership else None,
        )
        # Every watch runs in a thread of its own, with a client of its own, and hands the
        # event loop a summary per event, not kopf, which watches nothing (decision 0061).
        namespaces = settings.namespaces or (None,)
        self.credential_watches = [
            listwatch.ListWatch(
                _api_client(1),
                path=kuberest.path(
                    f"{model.GROUP}/{model.VERSION}", model.PLURAL, namespace=namespace
                ),
                namespace=namespace,
                what="ClientCredentials",
                summarize=tracking.summarize,
                deliver=self.reconciler.credential_event,
            )
            for namespace in namespaces
        ]
        # The target Secrets (decision 0035). Merge targets carry a label of their own
        # (their managed-by is their owner's), and a selector cannot say "or": a second
        # watch (decision 0041). Once both have listed a namespace, a new credential's
        # target is created unread (decision 0052).
        listings = self.reconciler.target_listings
        self.target_watches = [
            listwatch.ListWatch(
                _api_client(1),
                path=kuberest.path("v1", "secrets", namespace=namespace),
                namespace=namespace,
                label_selector=selector,
                what="target Secrets",
                summarize=target.seen,
                deliver=self.reconciler.target_seen,
                on_listed=functools.partial(listings.listed, namespace),
            )
            for namespace in namespaces
            for selector in ownership.WATCH_SELECTORS
        ]
        for namespace in namespaces:
            for _ in ownership.WATCH_SELECTORS:
                listings.expect(namespace)
        # The opted-in client Secrets: the event loop gets the few fields the operator keeps
        # (decision 0059).
        self.client_watches = [
            listwatch.ListWatch(
                _api_client(1),
                path=kuberest.path("v1", "secrets", namespace=namespace),
                namespace=namespace,
                label_selector=f"{model.CLIENT_SECRET_LABEL}=true",
                what="client Secrets",
                summarize=seen.summarize,
                deliver=self.reconciler.client_secret_event,
            )
            for namespace in namespaces
        ]
        # Workloads ask for a new token here, with no Kubernetes rights (decision 0043).
        self.refresh_api = (
            refreshapi.RefreshApi(
                asks=self.reconciler,
                metrics_=self.metrics,
                port=settings.refresh_port,
                address=settings.refresh_address,
            )
            if settings.refresh_port is not None
            else None
        )
        # Read at scrape time: kopf caches the health probe's result for up to 10 s, so
        # setting it there made the gauge lag (and a restart look 10 s slower than it is).
        self.metrics.queue_size.set_function(lambda: len(self.queue))
        self._task: asyncio.Task[None] | None = None
        self._freezer = HeapFreezer(lambda: len(self.reconciler))
        self._freeze_task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._confirm_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._rollout_task: asyncio.Task[None] | None = None
        self._membership_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.queue.run(self.reconciler.refresh))
        self._freeze_task = asyncio.create_task(self._freezer.run())
        self._resync_task = asyncio.create_task(self._resync_forever())
        self._confirm_task = asyncio.create_task(self._confirm_forever())
        self._expiry_task = asyncio.create_task(self.reconciler.watch_expiry())
        self._rollout_task = asyncio.create_task(self.reconciler.rollouts.run())
        for watch in self._watches():
            watch.start(asyncio.get_running_loop())
        if self.membership is not None:
            self._membership_task = asyncio.create_task(
                self.membership.run(self.reconciler, warm=self._warm)
            )

    def _watches(self) -> list[listwatch.ListWatch[Any]]:
        return [*self.credential_watches, *self.client_watches, *self.target_watches]

    async def _warm(self) -> None:
        """Wait until the watch has delivered every credential a listing has, so that this
        replica takes shards with the state to serve them (decision 0050)."""
        listed: set[reconcile.Key] = set()
        for namespace in self.config.namespaces or (None,):
            while True:
                try:
                    listed |= await self.kube.list_credentials(namespace)
                    break
                except failures.ApiError as exc:
                    logger.warning("listing ClientCredentials failed, retried: %s", exc)
                    await asyncio.sleep(self.config.retry_period)
        missing, progress_at = listed, time.monotonic()
        while missing:
            still = {key for key in missing if not self.reconciler.knows(key)}
            if len(still) < len(missing):
                progress_at = time.monotonic()
            missing = still
            if missing and time.monotonic() - progress_at > WARM_STALL:
                logger.info("%d listed credentials not seen yet; joining anyway", len(missing))
                return
            if missing:
                await asyncio.sleep(0.2)
        logger.info("watching %d credentials: ready to take shards", len(listed))

    async def serve(self) -> None:
        """Open the metrics and the refresh endpoints; raises OSError when a port cannot be
        bound, before anything else runs."""
        if self.config.metrics_port is not None:
            metrics.serve(self.metrics, self.config.metrics_port, self.config.metrics_address)
            logger.info("metrics on port %d", self.config.metrics_port)
        if self.refresh_api is not None:
            await self.refresh_api.start()

    async def resync(self) -> list[reconcile.Key]:
        """One full listing; the credentials it no longer has are forgotten."""
        since = self.reconciler.mark()
        listed: set[reconcile.Key] = set()
        for namespace in self.config.namespaces or (None,):
            listed |= await self.kube.list_credentials(namespace)
        gone = self.reconciler.retain(listed, since=since)
        for namespace, name in gone:
            logger.info("forgot %s/%s: deleted while a watch was down", namespace, name)
        return gone

    async def confirm_secrets(self) -> int:
        """List the opted-in Secrets' versions: the client Secrets kept from watch events
        stay trusted, and stand in for a read at every refresh (decision 0025 addendum)."""
        since = self.reconciler.secrets_mark()
        listed: dict[tuple[str, str], str] = {}
        selector = f"{model.CLIENT_SECRET_LABEL}=true"
        for namespace in self.config.namespaces or (None,):
            listed |= await self.kube.list_secret_versions(namespace, selector)
        return self.reconciler.confirm_secrets(listed, since=since)

    async def _confirm_forever(self) -> None:
        while True:
            await asyncio.sleep(seen.CONFIRM_SECONDS)
            try:
                dropped = await self.confirm_secrets()
            except failures.ApiError as exc:
                logger.warning("listing client Secrets failed, retried later: %s", exc)
            else:
                if dropped:
                    logger.info(
                        "%d kept client Secrets were not listed as kept: read again", dropped
                    )

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            try:
                await self.resync()
            except failures.ApiError as exc:
                logger.warning("listing ClientCredentials failed, retried later: %s", exc)

    async def stop(self) -> None:
        if self._membership_task is not None:
            self._membership_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._membership_task
        if self.membership is not None:
            await self.membership.stop()  # hands every shard over while the queue runs
        if self.refresh_api is not None:
            await self.refresh_api.stop()
        for watch in self._watches():
            watch.stop()
        for task in (
            self._task,
            self._freeze_task,
            self._resync_task,
            self._confirm_task,
            self._expiry_task,
            self._rollout_task,
        ):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.http.aclose()
        self.kube.close()

    def health(self) -> dict[str, float]:
        """For the liveness probe: raises when the refresh loop is stuck."""
        age = time.monotonic() - self.queue.heartbeat
        if self._task is None or self._task.done() or age > STUCK_AFTER:
            raise RuntimeError(f"refresh loop not running (last heartbeat {age:.0f}s ago)")
        return {"heartbeat_age_seconds": round(age, 3), "credentials": len(self.reconciler)}
