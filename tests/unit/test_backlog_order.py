"""A backlog drains in the order its tokens expire (decision 0066).

When many refreshes are due at once (a restart after an outage, a burst of forced
refreshes), the refresh queue built by ``reconcile.refresh_queue`` hands them out in turns
across namespaces (decision 0034) and, within a namespace, the credential whose token
expires first goes first; one without a token goes before any. The order in which they
became due (their refresh times) does not decide it.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from tokensync import metrics, model, reconcile, scheduler

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
MIN = datetime.timedelta(minutes=1)


def body(namespace: str, name: str, *, due: int, expires: int | None) -> dict[str, Any]:
    """A credential whose refresh was due ``due`` minutes ago, with a token that expires in
    ``expires`` minutes (None: no token yet)."""
    status: dict[str, Any] = {}
    if expires is not None:
        status = {
            "observedGeneration": 1,
            "lastRefreshAt": model.format_time(NOW - 50 * MIN),
            "nextRefreshAt": model.format_time(NOW - due * MIN),
            "expiresAt": model.format_time(NOW + expires * MIN),
            "conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued"}],
        }
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": f"u-{name}", "generation": 1},
        "spec": {
            "tokenURL": f"https://idp-{namespace}.example/token",
            "clientId": "c",
            "clientSecretRef": {"name": "client"},
        },
        "status": status,
    }


async def test_a_backlog_is_refreshed_earliest_expiry_first_in_turns_across_namespaces() -> None:
    holder: list[reconcile.Reconciler] = []
    queue = reconcile.refresh_queue(1, lambda: holder[0])
    budget = scheduler.Budget(rate=1e-9, burst=1)
    assert budget.take()  # Events are counted as dropped: no API server here
    holder.append(
        reconcile.Reconciler(
            kube_api=None,  # type: ignore[arg-type] -- no attempt runs: work is recorded
            http=None,  # type: ignore[arg-type]
            metrics_=metrics.Metrics(),
            queue=queue,
            pacer=scheduler.HostPacer(rate=1, burst=1),
            clock=lambda: NOW,
            events=budget,
        )
    )
    # Listed in this order; the refresh that fell due first expires last.
    for namespace, name, due, expires in [
        ("a", "a-due-first-expires-last", 30, 25),
        ("a", "a-expires-in-2", 2, 2),
        ("a", "a-expires-in-9", 20, 9),
        ("b", "b-expires-in-5", 10, 5),
        ("b", "b-no-token", 0, None),
        ("a", "a-expires-in-1", 1, 1),
    ]:
        holder[0].observe(body(namespace, name, due=due, expires=expires))
    order: list[str] = []
    finished = asyncio.Event()

    async def work(key: reconcile.Key, due: float) -> None:
        order.append(key[1])
        if len(order) == 6:
            finished.set()

    task = asyncio.create_task(queue.run(work))
    try:
        await asyncio.wait_for(finished.wait(), 5)
    finally:
        task.cancel()
    assert order == [
        "a-expires-in-1",
        "b-no-token",
        "a-expires-in-2",
        "b-expires-in-5",
        "a-expires-in-9",
        "a-due-first-expires-last",
    ]
