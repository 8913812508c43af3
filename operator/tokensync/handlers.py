"""kopf handlers: the table of contents of the operator. Each one delegates.

kopf starts and stops the operator, serves the liveness probe and handles signals; it
watches nothing. The ClientCredentials and the Secrets are watched by ``runtime``
(``listwatch.ListWatch``), which hands each event to the reconciler on the event loop:
the credentials' (decision 0061), the target Secrets' (decision 0035) and the opted-in
client Secrets' (decision 0059). The operator's only writes are the target Secrets,
status and events.
"""

from __future__ import annotations

from typing import Any

import kopf

from tokensync import runtime


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf would watch CRDs cluster-wide to discover resources; it has none to serve, and
    # not scanning keeps CRD list/watch out of the operator's RBAC.
    settings.scanning.disabled = True
    settings.posting.enabled = False  # our own Events are posted on transitions only
    memo.runtime = runtime.Runtime(memo.config)
    try:
        # First: a port taken ends the start (the process exits), with nothing running yet;
        # kopf would otherwise try the whole start again a minute later, unhealthy meanwhile.
        await memo.runtime.serve()
    except OSError as exc:
        raise kopf.PermanentError(f"the metrics or refresh endpoint cannot listen: {exc}") from None
    memo.runtime.start()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.stop()


@kopf.on.probe(id="refresh_queue")
def refresh_queue_alive(memo: kopf.Memo, **_: Any) -> dict[str, float]:
    health: dict[str, float] = memo.runtime.health()
    return health
