"""The kopf handler table: kopf starts, stops and probes the operator; it watches nothing
(decision 0061: the ClientCredentials are watched by ``listwatch``, like the Secrets)."""

from __future__ import annotations

import kopf

from tokensync import handlers


def test_kopf_has_no_resource_handler() -> None:
    registry = kopf.get_default_registry()
    assert not registry._watching.get_all_handlers()
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    assert not registry._indexing.get_all_handlers()
    assert not registry._webhooks.get_all_handlers()
    ours = {handlers.start, handlers.stop, handlers.refresh_queue_alive}
    assert ours <= {h.fn for h in registry._activities.get_all_handlers()}  # and kopf's login
