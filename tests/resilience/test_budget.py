"""Retry budgets never allow more retries than their formula."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.budget import ConcurrentRetryBudget, RetryBudget

# -- Finagle's RetryBudget ----------------------------------------------------------------


def test_defaults_follow_finagle() -> None:
    budget = RetryBudget(clock=VirtualClock())
    assert (budget.ttl, budget.min_retries_per_sec, budget.percent_can_retry) == (10.0, 10.0, 0.2)
    assert budget.balance() == 100  # min_retries_per_sec * ttl with no traffic at all


def test_reserve_is_spent_then_requests_earn_retries() -> None:
    clock = VirtualClock()
    budget = RetryBudget(min_retries_per_sec=1.0, ttl=10.0, percent_can_retry=0.2, clock=clock)
    assert sum(budget.try_withdraw() for _ in range(20)) == 10
    assert not budget.can_retry()
    for _ in range(4):
        budget.deposit()
    assert not budget.try_withdraw()  # four requests are 0.8 of a retry
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_withdrawals_expire_after_the_ttl() -> None:
    clock = VirtualClock()
    budget = RetryBudget(min_retries_per_sec=1.0, ttl=10.0, clock=clock)
    assert sum(budget.try_withdraw() for _ in range(10)) == 10
    clock.advance(9.0)
    assert not budget.can_retry()
    clock.advance(1.0)  # the slice of the withdrawals has slid out
    assert budget.balance() == 10


def test_zero_percent_means_the_reserve_only() -> None:
    clock = VirtualClock()
    budget = RetryBudget(min_retries_per_sec=0.5, ttl=4.0, percent_can_retry=0.0, clock=clock)
    for _ in range(100):
        budget.on_request()
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ttl"):
        RetryBudget(ttl=0)
    with pytest.raises(ValueError, match="negative"):
        RetryBudget(percent_can_retry=-0.1)


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3.0),
        st.sampled_from(["request", "request", "request", "retry", "retry"]),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([1.0, 2.5, 10.0]),
    st.sampled_from([0.0, 0.3, 1.0, 10.0]),
    st.sampled_from([0.0, 0.1, 0.2, 0.3, 1.0, 2.0]),
    st.integers(min_value=1, max_value=10),
    steps,
)
def test_finagle_budget_never_exceeds_its_formula(
    ttl: float,
    min_per_sec: float,
    percent: float,
    slices: int,
    plan: list[tuple[float, str]],
) -> None:
    clock = VirtualClock()
    budget = RetryBudget(
        ttl=ttl,
        min_retries_per_sec=min_per_sec,
        percent_can_retry=percent,
        slices=slices,
        clock=clock,
    )
    width = ttl / slices
    reserve = math.floor(min_per_sec * ttl)
    requests: list[float] = []
    retries: list[float] = []
    for gap, kind in plan:
        clock.advance(gap)
        now = clock.now()
        if kind == "request":
            budget.deposit()
            requests.append(now)
            continue
        if not budget.try_withdraw():
            continue
        retries.append(now)
        # In terms of the slices the budget keeps...
        newest = int(now // width)
        in_window = [t for t in requests if int(t // width) > newest - slices]
        retried = [t for t in retries if int(t // width) > newest - slices]
        assert len(retried) <= percent * len(in_window) + reserve + 1e-9
        # ... and in plain time: retries of the last ttl - width seconds against
        # requests of the last ttl seconds.
        recent_retries = [t for t in retries if t > now - (ttl - width)]
        recent_requests = [t for t in requests if t > now - ttl]
        assert len(recent_retries) <= percent * len(recent_requests) + reserve + 1e-9


# -- Envoy's concurrent retry budget --------------------------------------------------------


def test_envoy_defaults() -> None:
    budget = ConcurrentRetryBudget()
    assert (budget.budget_percent, budget.min_retry_concurrency) == (20.0, 3)
    assert budget.limit() == 3
    for _ in range(100):
        budget.on_request()
    assert budget.limit() == 20


def test_envoy_bad_arguments() -> None:
    with pytest.raises(ValueError, match="budget_percent"):
        ConcurrentRetryBudget(budget_percent=150)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0.0, 10.0, 20.0, 50.0, 100.0]),
    st.integers(min_value=0, max_value=4),
    st.lists(
        st.sampled_from(["start", "start", "finish", "retry", "retry", "retry_done"]), max_size=200
    ),
)
def test_envoy_budget_never_exceeds_its_share(
    percent: float, minimum: int, plan: list[str]
) -> None:
    budget = ConcurrentRetryBudget(budget_percent=percent, min_retry_concurrency=minimum)
    active = retries = 0
    for op in plan:
        if op == "start":
            budget.on_request()
            active += 1
        elif op == "finish" and active:
            budget.on_request_done()
            active -= 1
        elif op == "retry":
            allowed = max(minimum, math.floor(percent / 100 * active))
            granted = budget.try_retry()
            assert granted == (retries < allowed)  # exactly the formula, no stricter
            if granted:
                retries += 1
                assert retries <= allowed
        elif op == "retry_done" and retries:
            budget.on_retry_done()
            retries -= 1
        assert (budget.active_requests, budget.active_retries) == (active, retries)
