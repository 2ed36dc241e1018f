from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.balance import NO_CALL, RoundRobin, SmoothWeighted
from crossway.balance import round_robin as rr_module

from .helpers import endpoints, pick_counts

weight_lists = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=10)


@given(n=st.integers(min_value=1, max_value=40), rounds=st.integers(min_value=1, max_value=5))
def test_round_robin_is_exactly_fair(n: int, rounds: int) -> None:
    lb = RoundRobin(rng=random.Random(n))
    lb.update(endpoints(n))
    assert set(pick_counts(lb, n * rounds).values()) == {rounds}


def test_round_robin_walks_in_order_from_a_random_start() -> None:
    starts = set()
    for seed in range(20):
        lb = RoundRobin(rng=random.Random(seed))
        lb.update(endpoints(5))
        seq = [lb.pick().id for _ in range(6)]  # type: ignore[union-attr]
        first = int(seq[0][2:])
        assert seq == [f"ep{(first + i) % 5}" for i in range(6)]
        starts.add(first)
    assert len(starts) > 1  # clients started together do not move in lockstep


def test_round_robin_survives_membership_changes_and_ignores_keys() -> None:
    lb = RoundRobin(rng=random.Random(3))
    lb.update(endpoints(5))
    lb.pick()
    lb.update(endpoints(2))
    assert {lb.pick("k").id for _ in range(4)} == {"ep0", "ep1"}  # type: ignore[union-attr]
    assert lb.begin(endpoints(1)[0]) is NO_CALL


def test_smooth_weighted_is_nginx_sequence() -> None:
    lb = SmoothWeighted()
    lb.update(endpoints(3, weights=[5, 1, 1]))
    names = {"ep0": "a", "ep1": "b", "ep2": "c"}
    seq = [names[lb.pick().id] for _ in range(14)]  # type: ignore[union-attr]
    assert "".join(seq) == "aabacaa" * 2


@contextmanager
def schedule_budget(budget: int) -> Iterator[None]:
    """Force the precomputed cycle (large budget) or the O(n) step (0)."""
    saved = rr_module._SCHEDULE_BUDGET
    rr_module._SCHEDULE_BUDGET = budget
    try:
        yield
    finally:
        rr_module._SCHEDULE_BUDGET = saved


@pytest.mark.parametrize("budget", [1 << 30, 0], ids=["precomputed", "stepwise"])
@settings(max_examples=150)
@given(weights=weight_lists)
def test_smooth_weighted_matches_weights_exactly_each_cycle(
    budget: int, weights: list[int]
) -> None:
    lb = SmoothWeighted()
    with schedule_budget(budget):
        lb.update(endpoints(len(weights), weights=weights))
    total = sum(weights)
    for _ in range(2):  # every cycle, not just the first
        counts = pick_counts(lb, total)
        assert [counts[f"ep{i}"] for i in range(len(weights))] == weights


@settings(max_examples=150)
@given(weights=weight_lists)
def test_smooth_weighted_never_strays_far_from_the_ideal_share(weights: list[int]) -> None:
    # Plain weighted round robin sends a weight-w endpoint w requests in a row;
    # the smooth variant keeps every prefix within two picks of its ideal share.
    lb = SmoothWeighted()
    lb.update(endpoints(len(weights), weights=weights))
    total = sum(weights)
    counts: Counter[str] = Counter()
    for t in range(1, total + 1):
        counts[lb.pick().id] += 1  # type: ignore[union-attr]
        for i, w in enumerate(weights):
            assert abs(counts[f"ep{i}"] - t * w / total) < 2


@settings(max_examples=100)
@given(weights=weight_lists)
def test_both_paths_give_the_same_sequence(weights: list[int]) -> None:
    eps = endpoints(len(weights), weights=weights)
    fast = SmoothWeighted()
    fast.update(eps)
    slow = SmoothWeighted()
    with schedule_budget(0):
        slow.update(eps)
    n = 2 * sum(weights) + 3
    assert [fast.pick() for _ in range(n)] == [slow.pick() for _ in range(n)]


def test_smooth_weighted_skips_ejected_and_empty() -> None:
    lb = SmoothWeighted()
    assert lb.pick() is None
    lb.update(endpoints(3, weights=[3, 2, 1]))
    lb.set_ejected({"ep0"})
    counts = pick_counts(lb, 30)
    assert counts == {"ep1": 20, "ep2": 10}
