"""Sliding-window counter: the weighted estimate, its worst-case bound, retry-after."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.limiter import Decision
from crossway.resilience.sliding_counter import SlidingWindowCounter

limits = st.integers(min_value=1, max_value=30)
windows = st.sampled_from([0.1, 0.5, 1.0, 2.5, 60.0])


def arrivals(limit: int, window: float) -> st.SearchStrategy[list[tuple[float, int]]]:
    gap = st.floats(min_value=0.0, max_value=2.5 * window / limit, allow_nan=False)
    return st.lists(st.tuples(gap, st.integers(1, 3)), min_size=1, max_size=100)


def test_the_previous_window_counts_by_its_remaining_share() -> None:
    counter = SlidingWindowCounter(limit=10, window=1.0)
    for _ in range(10):
        assert counter.try_acquire(0.2).allowed
    # Room appears 0.1s into the next window, once 10 * 0.9 + 1 <= 10.
    assert counter.try_acquire(0.9) == Decision(False, pytest.approx(0.2), 0)
    # At 1.5 half of the previous window still counts: 5 of 10 are in use.
    granted = [counter.try_acquire(1.5).allowed for _ in range(6)]
    assert granted == [True] * 5 + [False]


def test_a_refusal_reports_the_whole_permits_still_free() -> None:
    counter = SlidingWindowCounter(limit=10, window=1.0)
    for _ in range(10):
        counter.try_acquire(0.5)
    # At 1.25, 7.5 of the previous window's 10 still count: 2.5 free.
    assert counter.try_acquire(1.25, 3) == Decision(False, pytest.approx(0.05), 2)
    assert counter.try_acquire(1.25, 2).remaining == 0


def test_a_gap_of_two_windows_forgets_everything() -> None:
    counter = SlidingWindowCounter(limit=3, window="1s")
    for _ in range(3):
        counter.try_acquire(0.0)
    assert not counter.try_acquire(0.99).allowed
    assert counter.try_acquire(2.0, 3) == Decision(True, 0.0, 0)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        SlidingWindowCounter(limit=0)
    with pytest.raises(ValueError, match="window must be positive"):
        SlidingWindowCounter(limit=1, window=0)
    with pytest.raises(ValueError, match="never be granted"):
        SlidingWindowCounter(limit=2).try_acquire(0.0, 3)
    assert SlidingWindowCounter(limit=120, window="1m").rate == 2.0


@settings(max_examples=150, deadline=None)
@given(data=st.data(), limit=limits, window=windows)
def test_never_more_than_limit_plus_rate_times_window(
    data: st.DataObject, limit: int, window: float
) -> None:
    # The approximation's worst case is the previous window's grants bunched
    # at its end: a token bucket of rate limit/window and burst `limit`.
    counter = SlidingWindowCounter(limit=limit, window=window)
    clock = VirtualClock(start=data.draw(st.floats(0, 1e4)))
    grants = []
    for gap, permits in data.draw(arrivals(limit, window)):
        clock.advance(gap)
        n = min(permits, limit)
        if counter.try_acquire(clock.now(), n).allowed:
            grants.append((clock.now(), n))
    rate = limit / window
    for i, (start, _) in enumerate(grants):
        total = 0
        for end, n in grants[i:]:
            total += n
            assert total <= rate * (end - start) + limit + 1e-6


@settings(max_examples=150, deadline=None)
@given(data=st.data(), limit=limits, window=windows)
def test_retry_after_is_exactly_when_room_appears(
    data: st.DataObject, limit: int, window: float
) -> None:
    counter = SlidingWindowCounter(limit=limit, window=window)
    now = data.draw(st.floats(0, 1e4))
    for gap, permits in data.draw(arrivals(limit, window)):
        now += gap
        n = min(permits, limit)
        decision = counter.try_acquire(now, n)
        if not decision.allowed:
            wait = decision.retry_after
            assert wait > 0
            if wait > 1e-6:
                assert not counter.try_acquire(now + wait * 0.999 - 1e-9, n).allowed
            assert counter.try_acquire(now + wait, n).allowed
            return
