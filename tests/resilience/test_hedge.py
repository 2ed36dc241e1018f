"""Hedged requests: the first answer wins and every loser is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from crossway.resilience.budget import ConcurrentRetryBudget, RetryBudget
from crossway.resilience.hedge import Hedge, HedgePolicy, hedged


class Backend:
    """Attempt i sleeps delays[i] (seconds) then answers i, or raises if it is in `fail`."""

    def __init__(self, delays: list[float], fail: frozenset[int] = frozenset()) -> None:
        self.delays = delays
        self.fail = fail
        self.started = 0
        self.cancelled: list[int] = []
        self.finished: list[int] = []
        self.hedge_started = asyncio.Event()

    async def __call__(self) -> int:
        i = self.started
        self.started += 1
        if i == 1:
            self.hedge_started.set()
        try:
            await asyncio.sleep(self.delays[i])
        except asyncio.CancelledError:
            self.cancelled.append(i)
            raise
        self.finished.append(i)
        if i in self.fail:
            raise ConnectionError(f"attempt {i}")
        return i


async def test_a_fast_answer_sends_no_hedge() -> None:
    backend = Backend([0.0, 0.0])
    assert await hedged(backend, HedgePolicy(delay=1.0)) == 0
    assert backend.started == 1


async def test_a_late_answer_is_hedged_and_the_loser_cancelled() -> None:
    backend = Backend([10.0, 0.0])
    assert await hedged(backend, HedgePolicy(delay=0.01)) == 1
    assert backend.started == 2
    assert backend.cancelled == [0]  # cancelled and awaited before hedged() returned


async def test_the_original_can_still_win() -> None:
    backend = Backend([0.03, 10.0])
    assert await hedged(backend, HedgePolicy(delay=0.01)) == 0
    assert backend.cancelled == [1]


async def test_a_failure_triggers_the_hedge_at_once() -> None:
    backend = Backend([0.0, 0.0], fail=frozenset({0}))
    assert await hedged(backend, HedgePolicy(delay=3600.0)) == 1


async def test_all_attempts_failing_raises_the_last_failure() -> None:
    backend = Backend([0.0, 0.0, 0.0], fail=frozenset({0, 1, 2}))
    with pytest.raises(ConnectionError, match="attempt 2"):
        await hedged(backend, HedgePolicy(delay=0.01, max_hedges=2))
    assert backend.started == 3


async def test_at_most_max_hedges_are_sent() -> None:
    backend = Backend([0.05, 0.05, 0.05, 0.05, 0.05])
    await hedged(backend, HedgePolicy(delay=0.001, max_hedges=2))
    assert backend.started == 3


async def test_no_hedges_when_max_hedges_is_zero() -> None:
    backend = Backend([0.02])
    assert await hedged(backend, HedgePolicy(delay=0.001, max_hedges=0)) == 0
    assert backend.started == 1


async def test_cancelling_the_caller_cancels_every_attempt() -> None:
    backend = Backend([3600.0, 3600.0])
    task = asyncio.create_task(hedged(backend, HedgePolicy(delay=0.001)))
    await backend.hedge_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(backend.cancelled) == [0, 1]


async def test_a_refusing_budget_stops_hedging() -> None:
    budget = RetryBudget(min_retries_per_sec=0.0, percent_can_retry=0.1)
    backend = Backend([0.02, 0.0])
    assert await hedged(backend, HedgePolicy(delay=0.001, budget=budget)) == 0
    assert backend.started == 1


async def test_concurrent_budget_is_balanced_afterwards() -> None:
    budget = ConcurrentRetryBudget()
    backend = Backend([10.0, 0.0])
    assert await hedged(backend, HedgePolicy(delay=0.001, budget=budget)) == 1
    assert (budget.active_requests, budget.active_retries) == (0, 0)


def test_percentile_delay_after_enough_samples() -> None:
    policy = HedgePolicy(delay=0.5, percentile=0.9, min_samples=10)
    for _ in range(9):
        policy.record(0.010)
    assert policy.hedge_delay() == 0.5  # not enough samples yet
    policy.record(0.010)
    assert 0.010 <= policy.hedge_delay() <= 0.0125
    for _ in range(90):
        policy.record(0.002)
    assert policy.hedge_delay() <= 0.0025  # p90 follows the latencies


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="percentile"):
        HedgePolicy(percentile=1.0)
    with pytest.raises(ValueError, match="max_hedges"):
        HedgePolicy(max_hedges=-1)


async def test_decorator_passes_arguments() -> None:
    calls: list[tuple[int, str]] = []

    @Hedge(HedgePolicy(delay=1.0))
    async def get(n: int, *, tag: str) -> int:
        calls.append((n, tag))
        return n * 2

    assert await get(21, tag="x") == 42
    assert calls == [(21, "x")]
    assert get.__name__ == "get"
