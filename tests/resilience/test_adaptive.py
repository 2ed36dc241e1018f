"""Adaptive concurrency: Gradient2, Vegas and Envoy's gradient controller on virtual time,
the admitting limiter and its sync/async guard."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.core.errors import CrosswayError
from crossway.resilience.adaptive import (
    AdaptiveLimiter,
    ConcurrencyGuard,
    ConcurrencyLimit,
    ConcurrencyLimited,
    Gradient2,
    GradientController,
    Vegas,
    Windowed,
)

SPACING = 0.01  # seconds between completions: ten per Envoy update interval


def feed(algo: ConcurrencyLimit, now: float, rtt: float, count: int) -> tuple[float, list[int]]:
    """`count` completions of a saturated caller (inflight == limit); the limits seen."""
    seen = []
    for _ in range(count):
        now += SPACING
        algo.on_sample(now, rtt, algo.limit)
        seen.append(algo.limit)
    return now, seen


def bounds(algo: ConcurrencyLimit) -> tuple[int, int]:
    if isinstance(algo, GradientController):
        return algo.min_concurrency, algo.max_limit
    assert isinstance(algo, Gradient2 | Vegas)
    return algo.min_limit, algo.max_limit


@st.composite
def algorithms(draw: st.DrawFn) -> ConcurrencyLimit:
    low = draw(st.integers(1, 20))
    high = draw(st.integers(100, 1000))
    kind = draw(st.sampled_from(["gradient2", "vegas", "envoy"]))
    if kind == "gradient2":
        return Gradient2(
            initial_limit=low,
            min_limit=low,
            max_limit=high,
            smoothing=draw(st.floats(0.1, 1.0)),
        )
    if kind == "vegas":
        # Probing (re-learning the baseline) is tested on its own below; here it
        # would blur the reaction to a latency step.
        return Vegas(
            initial_limit=max(low, 10),
            min_limit=low,
            max_limit=high,
            probe_multiplier=10_000,
            rng=random.Random(draw(st.integers())),
        )
    return GradientController(
        min_concurrency=max(1, low // 4),
        max_limit=high,
        update_interval=0.1,
        rng=random.Random(draw(st.integers())),
    )


@settings(max_examples=120, deadline=None)
@given(
    algo=algorithms(),
    base=st.floats(min_value=0.001, max_value=0.05),
    factor=st.floats(min_value=3.0, max_value=10.0),
)
def test_limit_falls_when_latency_rises_and_climbs_when_it_falls(
    algo: ConcurrencyLimit, base: float, factor: float
) -> None:
    low, high = bounds(algo)
    now, seen = feed(algo, 0.0, base, 400)  # healthy: the limit climbs
    assert seen[-1] > seen[0] or seen[-1] == high
    before_slow = algo.limit
    now, slow = feed(algo, now, base * factor, 30)  # queueing: it falls
    assert min(slow) < before_slow or before_slow == low
    assert slow[-1] <= before_slow
    before_fast = algo.limit
    now, fast = feed(algo, now, base, 60)  # healthy again: it climbs back
    assert max(fast) > before_fast or before_fast == high
    assert all(low <= limit <= high for limit in seen + slow + fast)


def test_gradient2_does_not_grow_while_the_caller_leaves_it_unused() -> None:
    algo = Gradient2(initial_limit=50, min_limit=10, max_limit=200)
    for i in range(100):
        algo.on_sample(i * 0.01, 0.01, inflight=5)
    assert algo.limit == 50
    for i in range(100):
        algo.on_sample(1 + i * 0.01, 0.01, inflight=50)
    assert algo.limit > 50


def test_gradient2_tolerates_latency_up_to_the_tolerance() -> None:
    algo = Gradient2(initial_limit=50, min_limit=10, max_limit=200, tolerance=1.5)
    feed(algo, 0.0, 0.010, 20)
    start = algo.limit
    feed(algo, 1.0, 0.014, 20)  # 1.4x the baseline: within tolerance
    assert algo.limit >= start


def test_vegas_drops_shrink_the_limit_and_probes_reset_the_baseline() -> None:
    algo = Vegas(initial_limit=100, max_limit=500, probe_multiplier=1, rng=random.Random(7))
    algo.on_sample(0.0, 0.010, 100)
    assert algo.rtt_noload in (0.0, 0.010)
    before = algo.limit
    algo.on_sample(0.1, 0.020, 100, dropped=True)
    algo.on_sample(0.2, 0.020, 100, dropped=True)
    assert algo.limit < before
    # With probes every 0.5-1 x limit samples, a lasting slowdown becomes the baseline.
    for i in range(400):
        algo.on_sample(1 + i * 0.01, 0.050, algo.limit)
    assert algo.rtt_noload == 0.050


def test_envoy_controller_measures_min_rtt_at_min_concurrency_first() -> None:
    algo = GradientController(
        min_concurrency=3, min_rtt_requests=10, max_limit=100, rng=random.Random(1)
    )
    assert algo.limit == 3
    now, _ = feed(algo, 0.0, 0.020, 9)
    assert algo.limit == 3
    assert algo.min_rtt == 0.0
    now, _ = feed(algo, now, 0.020, 1)
    assert algo.min_rtt == 0.020
    # Healthy intervals: gradient 1.25 plus sqrt headroom, every 100 ms.
    now, seen = feed(algo, now, 0.020, 60)
    assert seen[-1] > 3 * 1.25


def test_envoy_controller_remeasures_periodically_and_when_pinned_at_minimum() -> None:
    algo = GradientController(
        min_concurrency=2,
        min_rtt_requests=5,
        min_rtt_interval=2.0,
        jitter=0.0,
        max_limit=50,
        rng=random.Random(3),
    )
    now, _ = feed(algo, 0.0, 0.010, 5)  # first window ends at 0.05 s
    now, early = feed(algo, now, 0.010, 150)  # until 1.55 s: no new window due
    assert min(early[10:]) > 2  # grown from the first update on
    now, later = feed(algo, now, 0.010, 60)  # past 2.05 s: pinned for 5 requests
    assert later.count(2) == 5
    assert later[-1] > 2
    # Slowness drives the limit to the minimum; five intervals there force a
    # re-measure, which adopts the new latency as the ideal one.
    now, _ = feed(algo, now, 0.100, 300)
    assert algo.min_rtt == 0.100


def test_envoy_controller_keeps_a_bounded_sample() -> None:
    algo = GradientController(min_rtt_requests=1, max_samples=16, update_interval=1000.0)
    feed(algo, 0.0, 0.01, 5000)
    assert len(algo._samples) <= 16


def test_windowed_passes_on_one_averaged_sample_per_window() -> None:
    inner = Recording(limit=7)
    windowed = Windowed(inner, min_window=0.1, max_window=0.1, window_size=3)
    assert windowed.limit == 7
    windowed.on_sample(0.00, 0.010, 4)  # opens the first window
    assert len(inner.samples) == 0  # one sample is not a window
    for i, rtt in enumerate([0.010, 0.020, 0.030, 0.00001]):  # the last is below min_rtt
        windowed.on_sample(0.01 + i * 0.01, rtt, 5 + i)
    windowed.on_sample(0.11, 0.040, 3, dropped=True)  # closes it
    assert inner.samples == [(0.11, pytest.approx(0.025), 7, True)]
    for i in range(2):
        windowed.on_sample(0.15 + i * 0.1, 0.010, 1)  # too few samples: window dropped
    assert len(inner.samples) == 1
    with pytest.raises(ValueError, match="min_window"):
        Windowed(inner, min_window=2, max_window=1)


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="min_limit"):
        Gradient2(min_limit=0)
    with pytest.raises(ValueError, match="initial_limit"):
        Vegas(initial_limit=5000)
    with pytest.raises(ValueError, match="percentile"):
        GradientController(percentile=1.5)


@dataclass
class Recording:
    limit: int = 2
    samples: list[tuple[float, float, int, bool]] = field(default_factory=list)

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool = False) -> None:
        self.samples.append((now, rtt, inflight, dropped))


def test_limiter_admits_while_inflight_is_below_the_limit() -> None:
    algo = Recording(limit=2)
    limiter = AdaptiveLimiter(algo)
    first, second = limiter.try_acquire(1.0), limiter.try_acquire(1.5)
    assert first is not None
    assert second is not None
    assert limiter.try_acquire(1.6) is None
    assert limiter.inflight == 2
    limiter.release(first, 3.0)
    limiter.release(first, 9.0)  # twice: a no-op
    assert algo.samples == [(3.0, 2.0, 1, False)]
    limiter.ignore(second)
    assert limiter.inflight == 0
    assert len(algo.samples) == 1
    assert limiter.limit == 2


def test_guard_records_success_drops_timeouts_and_ignores_other_failures() -> None:
    algo = Recording(limit=1)
    clock = VirtualClock()
    guard = ConcurrencyGuard(AdaptiveLimiter(algo), clock=clock)
    with guard.admit():
        clock.advance(0.2)
        with pytest.raises(ConcurrencyLimited) as full:
            guard.admit()
    assert full.value.status == 503
    assert isinstance(full.value, CrosswayError)
    assert algo.samples == [(0.2, pytest.approx(0.2), 1, False)]
    with pytest.raises(TimeoutError), guard.admit():
        raise TimeoutError
    assert algo.samples[-1][3] is True
    with pytest.raises(KeyError), guard.admit():
        raise KeyError("x")
    assert len(algo.samples) == 2
    assert guard.limiter.inflight == 0

    @guard.wrap
    def work(x: int) -> int:
        return x + 1

    assert work(1) == 2
    assert len(algo.samples) == 3


async def test_guard_serves_coroutines_and_cancellation_frees_the_slot() -> None:
    algo = Recording(limit=1)
    guard = ConcurrencyGuard(AdaptiveLimiter(algo))
    started = asyncio.Event()

    @guard.wrap_async
    async def slow() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    task = asyncio.create_task(slow())
    await started.wait()
    with pytest.raises(ConcurrencyLimited):
        await slow()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.limiter.inflight == 0
    assert algo.samples == []  # cancellation says nothing about latency
    async with guard.admit():
        pass
    assert len(algo.samples) == 1
