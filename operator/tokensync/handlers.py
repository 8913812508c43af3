"""kopf handlers: the table of contents of the operator. Each one delegates.

Only ``on.event`` handlers watch resources: they add no finalizers and write no kopf
annotations, so the operator's only writes are the target Secrets, status and events.

kopf watches the ClientCredentials only. The Secrets are watched too, but not here:
``runtime`` starts those watches (``secretwatch.SecretWatch``), which hand each event to the
reconciler on the event loop, like this handler: the target Secrets' (decision 0035) and
the opted-in client Secrets' (decision 0059).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kopf._cogs.structs import bodies, ephemera
from kopf._core.reactor import inventory

from tokensync import model, runtime


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled" state: kopf diffs it only for on.create/on.update handlers.

    kopf builds the diff base of every event (a deep copy of the body, client Secrets' data
    included) whether or not a handler uses it. Ours are all on.event (decision 0003), which
    get no diff, so the copy is skipped (decision 0029: about 3 % of the GIL-holding samples
    of a cold start). The base is then always empty, which such a handler would see as "no
    change": tests/unit/test_handlers.py fails if one is registered.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class NoMemories(inventory.ResourceMemories):
    """No per-object memory: kopf's is for daemons, timers, indexes and resumed handlers.

    kopf keeps a record per watched object for as long as the object exists (a memo copy, an
    error throttler, daemon and index bookkeeping: about 1.6 KiB per credential for its two
    objects in a traced restart), which only daemons, timers, indexes, on.resume and the
    throttling of a failing handler use. Ours are on.event handlers that do not raise, so
    every event gets a fresh record that is not kept (kopf's "ephemeral" memory, as for
    admission webhooks); tests/unit/test_handlers.py fails if another kind of handler is
    registered (decision 0053).
    """

    async def recall(
        self,
        raw_body: bodies.RawBody,
        *,
        memobase: ephemera.AnyMemo | None = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> inventory.ResourceMemory:
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True
        )


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{model.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=model.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # kopf would watch CRDs cluster-wide to discover resources; ours are known, and not
    # scanning keeps CRD list/watch out of the operator's RBAC.
    settings.scanning.disabled = True
    settings.posting.enabled = False  # our own Events are posted on transitions only
    settings.batching.batch_window = 0.001  # kopf's default 0.1 s sits in every create-to-Ready
    # A per-object worker keeps the last body it handled, its task, queue and timers while
    # it idles (default 5 s): on a restart, every listed object's at once, and what the
    # records build meanwhile is spread among them over arenas that stay (decisions 0024,
    # 0058). 20 ms still lets the MODIFIED event of a credential's own status write, a few
    # ms later, find its worker. Paged listing bounds the response parsed at a time.
    settings.queueing.idle_timeout = 0.02
    settings.watching.chunk_size = 100  # decision 0024 addendum: pages of maximal specs
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.connect_timeout = 10
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    memo.runtime = runtime.Runtime(memo.config)
    try:
        await memo.runtime.serve()  # first: a port taken stops the start, nothing is running
    except OSError as exc:
        raise kopf.PermanentError(f"the refresh endpoint cannot listen: {exc}") from None
    memo.runtime.start()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.stop()


# The event handlers are coroutines although they never await: kopf runs a plain function in
# a thread pool, and these touch the refresh queue's asyncio objects, which only the event
# loop's thread may touch (decision 0021). They do no I/O and take microseconds.
@kopf.on.event(model.GROUP, model.VERSION, model.PLURAL)
async def credential_changed(*, event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    body = event["object"]
    if event["type"] == "DELETED":
        memo.runtime.reconciler.forget(body["metadata"]["namespace"], body["metadata"]["name"])
    else:
        memo.runtime.reconciler.observe(body)


@kopf.on.probe(id="refresh_queue")
def refresh_queue_alive(memo: kopf.Memo, **_: Any) -> dict[str, float]:
    health: dict[str, float] = memo.runtime.health()
    return health
