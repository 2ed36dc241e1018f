"""Token bucket: exact refill arithmetic, the rate-x-window-plus-burst bound, pacing."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.limiter import Decision
from crossway.resilience.token_bucket import TokenBucket

rates = st.floats(min_value=0.5, max_value=2000.0, allow_nan=False)
bursts = st.integers(min_value=1, max_value=20)


def arrivals(rate: float) -> st.SearchStrategy[list[tuple[float, int]]]:
    """Gaps of up to three intervals (so the bucket is sometimes empty, sometimes
    refilling) and a permit count per arrival."""
    gap = st.floats(min_value=0.0, max_value=3.0 / rate, allow_nan=False)
    return st.lists(st.tuples(gap, st.integers(1, 3)), min_size=1, max_size=80)


def window_violations(grants: list[tuple[float, int]], rate: float, burst: int) -> list[str]:
    """Every window that holds more than rate * length + burst permits.

    The fullest window of a given length always starts and ends at a grant, so
    checking every pair of grants checks every window. The limiter counts whole
    nanoseconds, so each end of a window may be off by half of one.
    """
    slack = rate * 1e-9 + 1e-6
    grants = sorted(grants)
    bad = []
    for i, (start, _) in enumerate(grants):
        total = 0
        for end, n in grants[i:]:
            total += n
            if total > rate * (end - start) + burst + slack:
                bad.append(f"{total} permits in [{start}, {end}]")
    return bad


def drive(limiter: TokenBucket, plan: list[tuple[float, int]]) -> list[tuple[float, int, Decision]]:
    """Feed the plan on a virtual clock: (time, permits, decision) per arrival."""
    clock = VirtualClock()
    out = []
    for gap, permits in plan:
        clock.advance(gap)
        n = min(permits, limiter.burst)
        out.append((clock.now(), n, limiter.try_acquire(clock.now(), n)))
    return out


def test_new_bucket_is_full_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.try_acquire(0.0).allowed for _ in range(4)] == [True, True, True, False]
    denied = bucket.try_acquire(0.0)
    assert denied == Decision(False, 0.1, 0)
    assert denied.retry_after == 0.1
    assert bucket.try_acquire(0.05).allowed is False
    assert bucket.try_acquire(0.1) == Decision(True, 0.0, 0)
    assert bucket.available(10.0) == 3


def test_remaining_counts_whole_permits_left() -> None:
    bucket = TokenBucket(rate=100, burst=5)
    assert bucket.try_acquire(0.0, 2).remaining == 3
    assert bucket.try_acquire(0.0, 3).remaining == 0
    assert bucket.try_acquire(0.025).remaining == 1  # 2.5 refilled, 1 taken


def test_default_burst_is_one_second_of_permits() -> None:
    assert TokenBucket(rate=50).burst == 50
    assert TokenBucket(rate=0.2).burst == 1
    assert TokenBucket(rate="120/m").rate == 2.0


def test_impossible_requests_raise() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    with pytest.raises(ValueError, match="never be granted"):
        bucket.try_acquire(0.0, 4)
    with pytest.raises(ValueError, match="at least 1"):
        bucket.try_acquire(0.0, 0)
    with pytest.raises(ValueError, match="not a rate"):
        TokenBucket(rate=0)
    with pytest.raises(ValueError, match="positive integer"):
        TokenBucket(rate=10, burst=0)


def test_time_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.try_acquire(10.0).allowed
    assert not bucket.try_acquire(5.0).allowed
    assert not bucket.try_acquire(10.5).allowed
    assert bucket.try_acquire(11.0).allowed


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rate=rates, burst=bursts)
def test_never_more_than_rate_times_window_plus_burst(
    data: st.DataObject, rate: float, burst: int
) -> None:
    plan = data.draw(arrivals(rate))
    grants = [(t, n) for t, n, d in drive(TokenBucket(rate=rate, burst=burst), plan) if d.allowed]
    assert window_violations(grants, rate, burst) == []


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rate=rates, burst=bursts)
def test_coming_back_after_retry_after_succeeds(
    data: st.DataObject, rate: float, burst: int
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst)
    now = 0.0
    for gap, permits in data.draw(arrivals(rate)):
        now += gap
        decision = bucket.try_acquire(now, min(permits, burst))
        if not decision.allowed:
            assert decision.retry_after > 0
            assert bucket.try_acquire(now + decision.retry_after, min(permits, burst)).allowed
            return


def test_queueing_paces_callers_and_refuses_beyond_max_wait() -> None:
    bucket = TokenBucket(rate=10, burst=1, max_wait=0.35)
    waits = [bucket.try_acquire(0.0) for _ in range(6)]
    assert [d.allowed for d in waits] == [True, True, True, True, False, False]
    assert [round(d.wait, 9) for d in waits[:4]] == [0.0, 0.1, 0.2, 0.3]
    assert waits[4].retry_after == pytest.approx(0.05)
    # The refusal reserved nothing: once the debt shrinks, a caller fits again.
    assert bucket.try_acquire(0.05).wait == pytest.approx(0.35)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    rate=rates,
    max_wait=st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
)
def test_queueing_releases_at_the_rate_and_never_waits_past_max_wait(
    data: st.DataObject, rate: float, max_wait: float
) -> None:
    bucket = TokenBucket(rate=rate, burst=1, max_wait=max_wait)
    plan = [(gap, 1) for gap, _ in data.draw(arrivals(rate))]
    releases = []
    for now, _, decision in drive(bucket, plan):
        if decision.allowed:
            assert decision.wait <= max_wait + 1e-9
            releases.append(now + decision.wait)
        else:
            assert decision.retry_after > 0
    # Paced: callers proceed one interval apart (the interval is rounded up to
    # whole nanoseconds, hence the nanosecond of slack).
    for first, second in itertools.pairwise(releases):
        assert second - first >= 1.0 / rate - 2e-9
    assert window_violations([(t, 1) for t in releases], rate, 1) == []


def test_huge_bursts_still_report_remaining() -> None:
    bucket = TokenBucket(rate=1e6, burst=5000)
    assert bucket.try_acquire(0.0).remaining == 4999
    assert math.isclose(bucket.try_acquire(0.0, 4999).remaining, 0)
