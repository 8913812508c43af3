"""The kopf handler table: only on.event handlers, so kopf's diff base may stay empty."""

from __future__ import annotations

import kopf

from tokensync import handlers


def test_every_resource_handler_is_an_event_handler() -> None:
    # NoDiffBase keeps no "last handled" state: an on.create/on.update/on.field handler or a
    # daemon would see no change, or every change, and misbehave quietly.
    registry = kopf.get_default_registry()
    assert {h.fn for h in registry._watching.get_all_handlers()} == {handlers.credential_changed}
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    assert not registry._indexing.get_all_handlers()


def test_the_diff_base_is_empty_and_copies_nothing() -> None:
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "s"}, "data": {"client_secret": "c2VjcmV0"}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=kopf.BodyEssence())
    assert not patch


async def test_kopf_keeps_no_memory_per_object() -> None:
    # kopf's per-object record serves daemons, timers, indexes and on.resume, none of which
    # is registered (above); each event gets a fresh one, which is not kept (decision 0053).
    memories = handlers.NoMemories()
    memo = kopf.Memo(runtime="the runtime")
    body = {"metadata": {"uid": "u-1", "namespace": "ns", "name": "c"}}
    first = await memories.recall(body, memobase=memo, noticed_by_listing=True)
    again = await memories.recall(body, memobase=memo)
    assert again is not first
    assert again.memo.runtime == "the runtime"
    assert list(memories.iter_all_memories()) == []
    await memories.forget(body)  # a DELETED event: nothing to forget, no error
