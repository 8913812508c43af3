"""The heap under the refresh queue and the expiry alarms: one due time per key, in due
order, and no more dead entries than a quarter of the live ones (issue 19)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tokensync import dueheap


def test_keys_come_due_in_order_at_their_latest_time_once() -> None:
    heap = dueheap.DueHeap[str]()
    assert heap.put("b", 20.0)
    assert heap.put("a", 10.0)  # now the first
    assert not heap.put("c", 30.0)
    heap.put("b", 5.0)  # moved earlier
    heap.put("c", 40.0)  # moved later
    heap.put("gone", 1.0)
    heap.remove("gone")
    assert (len(heap), heap.at("b"), heap.at("gone"), "gone" in heap) == (3, 5.0, None, False)
    assert heap.first() == 5.0
    assert heap.pop_due(25.0) == [("b", 5.0), ("a", 10.0)]
    assert heap.pop_due(35.0) == []  # c's first time was replaced
    assert heap.first() == 40.0
    assert heap.pop_due(40.0) == [("c", 40.0)]
    assert (len(heap), heap.first()) == (0, None)


def test_replacing_every_time_again_and_again_keeps_the_dead_entries_bounded() -> None:
    """A refresh ahead of expiry replaces each credential's alarm: without a rebuild, 10,000
    credentials refreshed three times would leave 30,000 dead entries in the heap."""
    heap = dueheap.DueHeap[int]()
    keys = 10_000
    for key in range(keys):
        heap.put(key, 1_000.0 + key)
    for cycle in range(1, 4):
        for key in range(keys):
            heap.put(key, 1_000.0 * (cycle + 1) + key)
            assert heap.entries - len(heap) <= len(heap) // 4 + dueheap.SLACK
    for key in range(0, keys, 2):
        heap.remove(key)
    assert heap.entries - len(heap) <= len(heap) // 4 + dueheap.SLACK
    assert heap.pop_due(4_000.0 + keys) == [(key, 4_000.0 + key) for key in range(1, keys, 2)]
    assert heap.entries == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "remove", "pop"]), st.integers(0, 40), st.integers(0, 99)
        ),
        max_size=400,
    )
)
def test_it_agrees_with_a_dict_of_due_times(ops: list[tuple[str, int, int]]) -> None:
    heap, model = dueheap.DueHeap[int](), dict[int, float]()
    for op, key, at in ops:
        if op == "put":
            heap.put(key, float(at))
            model[key] = float(at)
        elif op == "remove":
            heap.remove(key)
            model.pop(key, None)
        else:
            due = heap.pop_due(float(at))
            expected = sorted((t, k) for k, t in model.items() if t <= at)
            assert [t for _, t in due] == [t for t, _ in expected]
            assert {k for k, _ in due} == {k for _, k in expected}
            for k, _ in due:
                del model[k]
        assert len(heap) == len(model)
        assert heap.first() == (min(model.values()) if model else None)
        assert heap.entries - len(heap) <= len(heap) // 4 + dueheap.SLACK


def test_equal_times_come_due_in_the_order_they_were_set() -> None:
    heap = dueheap.DueHeap[int]()
    order = list(range(500))
    random.Random(19).shuffle(order)  # noqa: S311 -- an order, not a secret
    for key in order:
        heap.put(key, 7.0)
    assert [key for key, _ in heap.pop_due(7.0)] == order
