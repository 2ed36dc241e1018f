"""The shared decision type, rate parsing, the RateLimited error and the sync/async fronts."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.core.errors import CrosswayError
from crossway.resilience.gcra import GCRA
from crossway.resilience.limiter import (
    AsyncLimiter,
    Decision,
    RateLimited,
    SyncLimiter,
    allowed,
    parse_rate,
)
from crossway.resilience.sliding_counter import SlidingWindowCounter
from crossway.resilience.token_bucket import TokenBucket


def test_decision_retry_after_only_for_refusals() -> None:
    assert Decision(True, 0.5, 0).retry_after == 0.0
    assert Decision(False, 0.5, 0).retry_after == 0.5
    assert allowed(3) == Decision(True, 0.0, 3)
    assert allowed(3) is allowed(3)  # shared, immutable
    assert allowed(10**6).remaining == 10**6


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        (100, 100.0),
        (0.5, 0.5),
        ("100", 100.0),
        ("100/s", 100.0),
        ("5/m", 5 / 60),
        ("10/500ms", 20.0),
        ("3 / 1h", 3 / 3600),
        ("1/.5s", 2.0),
    ],
)
def test_parse_rate_accepts_numbers_and_count_per_duration(text: float | str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["", "abc", "0", "-1/s", "5/0s", "5/x", "inf", "nan", "5/"])
def test_parse_rate_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate(text)


@given(st.text(max_size=12))
def test_parse_rate_fails_only_with_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert parse_rate(text) > 0


def test_rate_limited_is_a_429_with_retry_after() -> None:
    error = RateLimited(retry_after=1.25)
    assert isinstance(error, CrosswayError)
    assert error.status == 429
    assert error.code == "rate_limited"
    assert error.to_json() == {
        "error": {"code": "rate_limited", "message": "rate limit exceeded", "retry_after": 1.25}
    }


def test_sync_front_acquire_context_manager_and_decorator() -> None:
    clock = VirtualClock()
    limiter = SyncLimiter(TokenBucket(rate=1, burst=2), clock=clock)
    assert limiter.acquire().remaining == 1
    with limiter as decision:
        assert decision.allowed
    with pytest.raises(RateLimited) as refused:
        limiter.acquire()
    assert refused.value.retry_after == pytest.approx(1.0)

    calls = []

    @limiter
    def work(x: int) -> int:
        calls.append(x)
        return x * 2

    with pytest.raises(RateLimited):
        work(1)
    assert calls == []  # refused before the call
    clock.advance(1.0)
    assert work(2) == 4
    assert limiter.core.try_acquire(clock.now()).allowed is False


def test_sync_front_sleeps_for_queueing_limiters() -> None:
    clock = VirtualClock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    limiter = SyncLimiter(GCRA(rate=10, burst=1, max_wait=0.5), clock=clock, sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    # Each caller slept until its slot: admissions leave at exactly the rate.
    assert slept == [pytest.approx(0.1)] * 4
    assert clock.now() == pytest.approx(0.4)


def test_sync_front_is_thread_safe() -> None:
    # Nearly no refill during the test: exactly the burst must be granted.
    limiter = SyncLimiter(TokenBucket(rate=0.001, burst=500))
    granted = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        granted.append(sum(limiter.try_acquire().allowed for _ in range(250)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 500


async def test_async_front_acquire_context_manager_and_decorator() -> None:
    clock = VirtualClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = AsyncLimiter(TokenBucket(rate=2, burst=1, max_wait=0.5), clock=clock, sleep=sleep)
    async with limiter as first:
        assert first.wait == 0.0

    @limiter
    async def work() -> str:
        return "done"

    assert await work() == "done"
    assert slept == [pytest.approx(0.5)]
    with pytest.raises(RateLimited):
        await limiter.acquire()
    assert limiter.try_acquire().allowed is False
    assert isinstance(limiter.core, TokenBucket)


async def test_cancelled_wait_propagates_and_keeps_the_permit_spent() -> None:
    limiter = AsyncLimiter(GCRA(rate=1, burst=1, max_wait=60))
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The cancelled caller's slot is not handed back: the next one waits longer.
    assert limiter.try_acquire().wait > 1.0


async def test_async_front_serves_a_refusing_limiter() -> None:
    limiter = AsyncLimiter(SlidingWindowCounter(limit=1, window=10), clock=VirtualClock())
    await limiter.acquire()
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire()
    # The grant keeps weighing on the estimate through the whole next window.
    assert refused.value.retry_after == pytest.approx(20.0)
