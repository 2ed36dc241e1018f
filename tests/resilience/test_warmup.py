"""Warm-up: cold start at rate / cold_factor, the full rate after `warmup`, cooling down."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.warmup import WarmUp


def greedy(limiter: WarmUp, clock: VirtualClock, until: float) -> list[float]:
    """Full demand: a caller that comes back exactly when told. Grant times."""
    grants = []
    while clock.now() < until:
        decision = limiter.try_acquire(clock.now())
        if decision.allowed:
            grants.append(clock.now())
        else:
            # Never stand still, even if rounding makes the wait vanish.
            target = max(clock.now() + decision.retry_after, math.nextafter(clock.now(), math.inf))
            clock.set(target)
    return grants


def test_defaults_and_validation() -> None:
    limiter = WarmUp(rate="100/s", warmup="10s")
    assert limiter.cold_factor == 3.0
    assert limiter.current_rate(0.0) == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="warmup must be positive"):
        WarmUp(rate=10, warmup=0)
    with pytest.raises(ValueError, match="cold_factor"):
        WarmUp(rate=10, warmup=1, cold_factor=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        limiter.try_acquire(0.0, 0)


def test_first_second_runs_at_a_third_and_last_at_the_full_rate() -> None:
    clock = VirtualClock()
    grants = greedy(WarmUp(rate=100, warmup=10), clock, until=14.0)
    per_second = [sum(1 for t in grants if s <= t < s + 1) for s in range(14)]
    assert 33 <= per_second[0] <= 37
    assert all(a <= b + 1 for a, b in itertools.pairwise(per_second))
    assert per_second[-3:] == [100, 100, 100]


rates = st.floats(min_value=1.0, max_value=500.0)
warmups = st.floats(min_value=0.5, max_value=20.0)
cold_factors = st.floats(min_value=1.5, max_value=6.0)


@settings(max_examples=60, deadline=None)
@given(rate=rates, warmup=warmups, cold_factor=cold_factors)
def test_warm_up_starts_slow_and_reaches_the_full_rate(
    rate: float, warmup: float, cold_factor: float
) -> None:
    assume(rate * warmup >= 10)  # enough permits for a visible ramp
    limiter = WarmUp(rate=rate, warmup=warmup, cold_factor=cold_factor)
    clock = VirtualClock()
    grants = greedy(limiter, clock, until=warmup * 1.5 + 10 / rate)
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    stable, cold = 1 / rate, cold_factor / rate
    # Starts slow: the first permit costs nearly the cold interval. It is the
    # mean interval over the top permit of the warm zone, which spans at least
    # 2 * 10 / (1 + 6) ≈ 2.9 permits here, so at least 82% of the way to cold.
    assert gaps[0] >= stable + 0.8 * (cold - stable)
    # The rate only climbs: each gap is no longer than the one before it.
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(gaps))
    # It takes `warmup` of full demand to reach the stable rate, then stays there.
    first_stable = next(i for i, gap in enumerate(gaps) if gap <= stable * (1 + 1e-9))
    assert grants[first_stable] == pytest.approx(warmup, abs=2 * cold)
    assert gaps[-1] == pytest.approx(stable)


@settings(max_examples=60, deadline=None)
@given(rate=rates, warmup=warmups, cold_factor=cold_factors)
def test_idleness_cools_it_down_again(rate: float, warmup: float, cold_factor: float) -> None:
    assume(rate * warmup >= 10)
    limiter = WarmUp(rate=rate, warmup=warmup, cold_factor=cold_factor)
    clock = VirtualClock()
    greedy(limiter, clock, until=warmup * 1.5)
    assert limiter.current_rate(clock.now()) == pytest.approx(rate)
    clock.advance(warmup * 2)
    assert limiter.current_rate(clock.now()) == pytest.approx(rate / cold_factor)


@settings(max_examples=60, deadline=None)
@given(
    rate=rates,
    warmup=warmups,
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.05), min_size=1, max_size=150),
)
def test_never_more_than_rate_times_window_plus_one(
    rate: float, warmup: float, gaps: list[float]
) -> None:
    limiter = WarmUp(rate=rate, warmup=warmup)
    clock = VirtualClock()
    grants = []
    for gap in gaps:
        clock.advance(gap)
        if limiter.try_acquire(clock.now()).allowed:
            grants.append(clock.now())
    for i, start in enumerate(grants):
        for count, end in enumerate(grants[i:], start=1):
            assert count <= rate * (end - start) + 1 + 1e-6


def test_queueing_paces_cold_callers_and_refuses_beyond_max_wait() -> None:
    limiter = WarmUp(rate=10, warmup=4, max_wait=2.0)
    decisions = [limiter.try_acquire(0.0) for _ in range(12)]
    granted = [d for d in decisions if d.allowed]
    waits = [d.wait for d in granted]
    assert waits[0] == 0.0
    assert all(w <= 2.0 for w in waits)
    # Cold: the first gaps are about cold_factor / rate = 0.3s, not 0.1s.
    assert waits[1] == pytest.approx(0.3, abs=0.02)
    refused = [d for d in decisions if not d.allowed]
    assert refused
    assert all(d.retry_after > 0 for d in refused)
