"""Which due key runs next (decision 0034): turns across namespaces, a share per host."""

from __future__ import annotations

import pytest

from tokensync import fairness

Key = tuple[str, str, str]  # (namespace, host, name)


def ready(share: int) -> fairness.FairReady[Key]:
    return fairness.FairReady[Key](share=share, group=lambda k: k[0], lane=lambda k: k[1])


def take_all(fair: fairness.FairReady[Key]) -> list[str]:
    taken = []
    while (item := fair.take()) is not None:
        taken.append(item[0][2])
    return taken


def test_namespaces_take_turns_whatever_arrived_first() -> None:
    fair = ready(share=100)
    for i in range(5):
        fair.add(("noisy", f"h{i}", f"n{i}"), due=float(i))
    fair.add(("quiet", "q", "q0"), due=10.0)
    fair.add(("other", "o", "o0"), due=11.0)
    assert take_all(fair) == ["n0", "q0", "o0", "n1", "n2", "n3", "n4"]


def test_a_namespace_holds_at_most_its_share_and_gets_its_turn_back_when_one_ends() -> None:
    fair = ready(share=2)
    for i in range(4):
        fair.add(("noisy", f"h{i}", f"n{i}"), due=float(i))
    assert take_all(fair) == ["n0", "n1"]  # strict: alone, it still holds only its share
    fair.add(("quiet", "q", "q0"), due=9.0)
    assert take_all(fair) == ["q0"]
    fair.done(("noisy", "h0", "n0"))
    assert take_all(fair) == ["n2"]
    assert len(fair) == 1


def test_a_full_host_parks_its_keys_without_blocking_others_of_the_namespace() -> None:
    fair = ready(share=2)
    fair.add(("a", "tarpit", "t0"), due=0.0)
    fair.add(("b", "tarpit", "t1"), due=1.0)
    fair.add(("a", "tarpit", "t2"), due=2.0)  # the host is full: parked
    fair.add(("a", "good", "g0"), due=3.0)
    assert take_all(fair) == ["t0", "t1", "g0"]
    assert len(fair) == 1  # t2, parked, holding no worker
    fair.done(("a", "good", "g0"))
    assert take_all(fair) == []  # a place in the namespace is not a place at the host
    fair.done(("b", "tarpit", "t1"))
    assert take_all(fair) == ["t2"]


def test_a_parked_key_goes_first_in_its_namespace_when_its_host_has_room() -> None:
    fair = ready(share=1)
    fair.add(("a", "slow", "s0"), due=0.0)
    assert take_all(fair) == ["s0"]
    fair.add(("b", "slow", "s1"), due=1.0)
    assert take_all(fair) == []  # parked
    fair.done(("a", "slow", "s0"))
    fair.add(("b", "fast", "f0"), due=2.0)
    assert take_all(fair) == ["s1"]  # due first, first again


def test_no_lane_means_no_host_limit() -> None:
    fair = fairness.FairReady[str](share=1, group=lambda k: k, lane=lambda k: None)
    for key in "abc":
        fair.add(key, due=0.0)
    assert [item[0] for item in iter(fair.take, None)] == ["a", "b", "c"]


def test_share_must_be_positive() -> None:
    with pytest.raises(ValueError, match="share"):
        fairness.FairReady[str](share=0, group=lambda k: k, lane=lambda k: k)


def ranked(share: int, ranks: dict[str, float]) -> fairness.FairReady[Key]:
    return fairness.FairReady[Key](
        share=share, group=lambda k: k[0], lane=lambda k: k[1], rank=lambda k: ranks[k[2]]
    )


def test_within_a_namespace_the_lowest_rank_goes_first_and_ties_in_arrival_order() -> None:
    ranks = {"late": 300.0, "soon": 10.0, "new": float("-inf"), "tie1": 300.0, "q0": 900.0}
    fair = ranked(share=100, ranks=ranks)
    for due, name in enumerate(["late", "soon", "tie1", "new"]):
        fair.add(("a", f"h-{name}", name), due=float(due))
    fair.add(("quiet", "q", "q0"), due=9.0)
    # Namespaces still take turns; within "a": no token first, then earliest expiry, and
    # the two that expire together in the order they became due.
    assert take_all(fair) == ["new", "q0", "soon", "late", "tie1"]


def test_a_parked_key_goes_back_with_its_rank_when_its_host_has_room() -> None:
    ranks = {"s0": 0.0, "parked": 100.0, "sooner": 50.0, "later": 200.0}
    fair = ranked(share=1, ranks=ranks)
    fair.add(("a", "slow", "s0"), due=0.0)
    assert take_all(fair) == ["s0"]  # holds the slow host
    fair.add(("b", "slow", "parked"), due=1.0)
    assert take_all(fair) == []  # its host is full: parked, holding no worker
    fair.add(("b", "fast", "later"), due=2.0)
    fair.add(("b", "fast", "sooner"), due=3.0)
    fair.done(("a", "slow", "s0"))  # the slow host has room: "parked" is ready again
    taken = []
    while (item := fair.take()) is not None:
        taken.append(item[0][2])
        fair.done(item[0])  # one at a time: the namespace's share is one
    assert taken == ["sooner", "parked", "later"]  # by expiry, not by arrival
