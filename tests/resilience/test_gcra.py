"""GCRA: same decisions as the token bucket, the window bound, pacing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.gcra import GCRA
from crossway.resilience.limiter import Decision
from crossway.resilience.token_bucket import TokenBucket

rates = st.floats(min_value=0.5, max_value=5000.0, allow_nan=False)
bursts = st.integers(min_value=1, max_value=20)
max_waits = st.sampled_from([0.0, 0.0, 0.01, 0.25, 1.0, 3.0])


def arrivals(rate: float) -> st.SearchStrategy[list[tuple[float, int]]]:
    gap = st.floats(min_value=0.0, max_value=3.0 / rate, allow_nan=False)
    return st.lists(st.tuples(gap, st.integers(1, 4)), min_size=1, max_size=100)


def test_burst_then_one_per_interval() -> None:
    gcra = GCRA(rate=4, burst=2)
    assert gcra.try_acquire(0.0) == Decision(True, 0.0, 1)
    assert gcra.try_acquire(0.0) == Decision(True, 0.0, 0)
    assert gcra.try_acquire(0.0) == Decision(False, 0.25, 0)
    assert gcra.try_acquire(0.25) == Decision(True, 0.0, 0)
    assert gcra.available(0.25) == 0
    assert gcra.available(5.0) == 2


def test_refusal_leaves_state_untouched() -> None:
    gcra = GCRA(rate=1, burst=1)
    assert gcra.try_acquire(0.0).allowed
    for _ in range(100):
        assert gcra.try_acquire(0.5).retry_after == pytest.approx(0.5)
    assert gcra.try_acquire(1.0).allowed


def test_queueing_reserves_slots_in_order() -> None:
    gcra = GCRA(rate=100, burst=1, max_wait="25ms")
    waits = [gcra.try_acquire(1.0) for _ in range(5)]
    assert [d.allowed for d in waits] == [True, True, True, False, False]
    assert [round(d.wait, 9) for d in waits[:3]] == [0.0, 0.01, 0.02]
    assert waits[3].retry_after == pytest.approx(0.005)


def test_permits_beyond_burst_and_max_wait_raise() -> None:
    with pytest.raises(ValueError, match="never be granted"):
        GCRA(rate=10, burst=2).try_acquire(0.0, 3)
    # Queueing lets a request bigger than the burst wait for the rest.
    decision = GCRA(rate=10, burst=2, max_wait=1).try_acquire(0.0, 3)
    assert decision.allowed
    assert decision.wait == pytest.approx(0.1)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rate=rates, burst=bursts, max_wait=max_waits)
def test_gcra_and_token_bucket_make_identical_decisions(
    data: st.DataObject, rate: float, burst: int, max_wait: float
) -> None:
    gcra = GCRA(rate=rate, burst=burst, max_wait=max_wait)
    bucket = TokenBucket(rate=rate, burst=burst, max_wait=max_wait)
    most = burst + int(max_wait * rate)
    clock = VirtualClock(start=data.draw(st.floats(0, 1e5)))
    for gap, permits in data.draw(arrivals(rate)):
        clock.advance(gap)
        n = min(permits, most)
        assert gcra.try_acquire(clock.now(), n) == bucket.try_acquire(clock.now(), n)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rate=rates, burst=bursts)
def test_never_more_than_rate_times_window_plus_burst(
    data: st.DataObject, rate: float, burst: int
) -> None:
    gcra = GCRA(rate=rate, burst=burst)
    clock = VirtualClock()
    grants = []
    for gap, permits in data.draw(arrivals(rate)):
        clock.advance(gap)
        n = min(permits, burst)
        if gcra.try_acquire(clock.now(), n).allowed:
            grants.append((clock.now(), n))
    slack = rate * 1e-9 + 1e-6
    for i, (start, _) in enumerate(grants):
        total = 0
        for end, n in grants[i:]:
            total += n
            assert total <= rate * (end - start) + burst + slack
