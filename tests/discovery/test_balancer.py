"""Balancers: who gets the next call."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shipyard.discovery import (
    Instance,
    LeastOutstanding,
    NoHealthyInstance,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
)

A, B, C = (Instance(f"i-{n}", "users", "10.0.0.1", 8000 + n) for n in range(3))
ALL = [A, B, C]


@pytest.mark.parametrize(
    "balancer",
    [RoundRobin(), Random(), LeastOutstanding(), PowerOfTwoChoices()],
    ids=lambda b: type(b).__name__,
)
def test_every_balancer_raises_no_healthy_instance_on_an_empty_list(balancer: object) -> None:
    with pytest.raises(NoHealthyInstance, match="no healthy instance") as err:
        balancer.pick([])  # type: ignore[attr-defined]
    assert isinstance(err.value, LookupError)


def test_round_robin_takes_each_instance_in_turn() -> None:
    balancer = RoundRobin()

    assert [balancer.pick(ALL).id for _ in range(6)] == ["i-0", "i-1", "i-2"] * 2


def test_round_robin_keeps_cycling_when_the_list_shrinks() -> None:
    balancer = RoundRobin()
    balancer.pick(ALL)
    balancer.pick(ALL)

    assert [balancer.pick([A, B]).id for _ in range(3)] == ["i-0", "i-1", "i-0"]


def test_random_spreads_calls_evenly_with_a_seeded_source() -> None:
    balancer = Random(rng=random.Random(7))

    counts = Counter(balancer.pick(ALL).id for _ in range(3000))

    assert set(counts) == {"i-0", "i-1", "i-2"}
    assert all(900 < n < 1100 for n in counts.values())


def test_least_outstanding_picks_the_instance_with_fewest_calls_in_flight() -> None:
    balancer = LeastOutstanding()
    balancer.acquire(A)
    balancer.acquire(A)
    balancer.acquire(B)

    assert balancer.pick(ALL) is C
    with balancer.track(C), balancer.track(C):
        assert balancer.pick(ALL) is B
    assert balancer.outstanding(C) == 0
    assert balancer.pick(ALL) is C


def test_track_releases_the_call_even_when_it_fails() -> None:
    balancer = LeastOutstanding()

    with pytest.raises(ConnectionError), balancer.track(A):
        raise ConnectionError("refused")

    assert balancer.outstanding(A) == 0


def test_least_outstanding_counts_by_instance_id_across_fresh_lists() -> None:
    balancer = LeastOutstanding()
    balancer.acquire(A)
    same_a_from_a_new_registry_answer = Instance("i-0", "users", "10.0.0.1", 8000)

    assert balancer.pick([same_a_from_a_new_registry_answer, B]) is B


def test_power_of_two_choices_avoids_the_busy_instance() -> None:
    balancer = PowerOfTwoChoices(rng=random.Random(1))
    for _ in range(10):
        balancer.acquire(A)

    counts = Counter(balancer.pick(ALL).id for _ in range(3000))

    # The two draws are distinct, so one of them is always less busy than A.
    assert counts["i-0"] == 0
    assert 1300 < counts["i-1"] < 1700
    assert 1300 < counts["i-2"] < 1700


def test_power_of_two_choices_spreads_evenly_when_idle() -> None:
    balancer = PowerOfTwoChoices(rng=random.Random(3))

    counts = Counter(balancer.pick(ALL).id for _ in range(3000))

    assert all(800 < n < 1200 for n in counts.values())


def test_power_of_two_choices_with_one_instance_picks_it() -> None:
    assert PowerOfTwoChoices().pick([B]) is B
