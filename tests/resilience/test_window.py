"""Sliding windows agree with a naive list-of-calls reference, exactly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.resilience.window import (
    BINS,
    FAILED,
    SLOW,
    CountWindow,
    Snapshot,
    TimeWindow,
    bin_upper_bound,
    latency_bin,
)

codes = st.integers(min_value=0, max_value=3)
durations = st.one_of(
    st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    st.floats(min_value=-1.0, max_value=1e9, allow_nan=False),
)
quantiles = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def naive_snapshot(calls: list[tuple[int, float]]) -> Snapshot:
    return Snapshot(
        calls=len(calls),
        failures=sum(1 for c, _ in calls if c & FAILED),
        slow_calls=sum(1 for c, _ in calls if c & SLOW),
        slow_failures=sum(1 for c, _ in calls if c == 3),
    )


def naive_percentile(calls: list[tuple[int, float]], q: float) -> float | None:
    if not calls:
        return None
    ordered = sorted(d for _, d in calls)
    rank = max(1, math.ceil(q * len(ordered)))
    return bin_upper_bound(latency_bin(ordered[rank - 1]))


# -- latency bins ------------------------------------------------------------------


@given(st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
def test_a_duration_lies_below_its_bin_upper_edge_and_within_25_percent(seconds: float) -> None:
    b = latency_bin(seconds)
    assert 0 <= b < BINS
    upper = bin_upper_bound(b)
    assert seconds < upper or b == BINS - 1
    lower = bin_upper_bound(b - 1) if b else 0.0
    assert lower <= seconds * (1 + 1e-9) or b == BINS - 1
    if b >= 8 and b < BINS - 1:
        assert upper - lower <= 0.25 * lower * (1 + 1e-9)


@given(st.floats(min_value=0.0, max_value=1e6), st.floats(min_value=0.0, max_value=1e6))
def test_bins_are_monotonic(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert latency_bin(lo) <= latency_bin(hi)


def test_bin_edges() -> None:
    assert latency_bin(0.0) == 0
    assert latency_bin(-3.0) == 0
    assert latency_bin(7e-6) == 7
    assert latency_bin(8e-6) == 8
    assert bin_upper_bound(8) == pytest.approx(10e-6)
    assert latency_bin(1e12) == BINS - 1
    uppers = [bin_upper_bound(i) for i in range(BINS)]
    assert uppers == sorted(uppers)


# -- count window ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=12),
    st.lists(st.tuples(codes, durations), max_size=60),
    quantiles,
)
def test_count_window_matches_the_last_n_calls(
    size: int, calls: list[tuple[int, float]], q: float
) -> None:
    window = CountWindow(size)
    for i, (code, duration) in enumerate(calls):
        window.record(code, duration)
        recent = calls[max(0, i + 1 - size) : i + 1]
        assert window.snapshot() == naive_snapshot(recent)
        assert window.calls == len(recent)
    recent = calls[-size:] if calls else []
    assert window.percentile(q) == naive_percentile(recent, q)


def test_count_window_reset_and_rates() -> None:
    window = CountWindow(4)
    for code in (0, FAILED, SLOW, FAILED | SLOW):
        window.record(code, 0.001)
    snap = window.snapshot()
    assert (snap.calls, snap.failures, snap.slow_calls, snap.slow_failures) == (4, 2, 2, 1)
    assert snap.failure_rate == 50.0
    assert snap.slow_call_rate == 50.0
    assert snap.successes == 2
    window.reset()
    assert window.snapshot() == Snapshot(0, 0, 0, 0)
    assert window.snapshot().failure_rate == 0.0
    assert window.percentile(0.5) is None


def test_window_without_latency_refuses_percentiles() -> None:
    window = CountWindow(4, latency=False)
    window.record(0, 0.5)
    assert window.calls == 1
    with pytest.raises(ValueError, match="latenc"):
        window.percentile(0.5)
    with pytest.raises(ValueError, match="latenc"):
        TimeWindow(1.0, latency=False).percentile(0.5, 0.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        CountWindow(0)
    with pytest.raises(ValueError, match="length"):
        TimeWindow(0.0)
    with pytest.raises(ValueError, match="bucket"):
        TimeWindow(1.0, 0)
    with pytest.raises(ValueError, match="percentile"):
        CountWindow(1).percentile(1.5)


# -- time window ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=0.5, max_value=20.0),
    st.integers(min_value=1, max_value=8),
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=4.0), codes, durations),
        max_size=60,
    ),
    quantiles,
)
def test_time_window_matches_the_calls_of_its_epochs(
    length: float,
    buckets: int,
    steps: list[tuple[float, int, float]],
    q: float,
) -> None:
    window = TimeWindow(length, buckets)
    width = length / buckets
    now = 0.0
    seen: list[tuple[float, int, float]] = []

    def in_window(t: float) -> list[tuple[int, float]]:
        newest = int(now // width)
        return [(c, d) for (at, c, d) in seen if int(at // width) > newest - buckets]

    for gap, code, duration in steps:
        now += gap
        window.record(code, duration, now)
        seen.append((now, code, duration))
        assert window.snapshot(now) == naive_snapshot(in_window(now))
    now += length / 2
    assert window.snapshot(now) == naive_snapshot(in_window(now))
    assert window.percentile(q, now) == naive_percentile(in_window(now), q)
    assert window.calls == len(in_window(now))


def test_time_window_forgets_after_its_length() -> None:
    window = TimeWindow(10.0, 10)
    window.record(FAILED, 0.01, 100.0)
    window.record(0, 0.02, 105.0)
    assert window.snapshot(109.9).calls == 2
    assert window.snapshot(110.0).calls == 1  # epoch 100 slid out
    assert window.snapshot(500.0).calls == 0
    assert window.percentile(0.99, 500.0) is None


def test_time_window_treats_an_earlier_now_as_its_newest_epoch() -> None:
    window = TimeWindow(10.0, 10)
    window.record(0, 0.0, 50.0)
    window.record(FAILED, 0.0, 42.0)  # the clock never goes back; counted as "now"
    assert window.snapshot(50.0) == Snapshot(2, 1, 0, 0)
    window.reset()
    assert window.snapshot(50.0).calls == 0
    window.record(0, 0.0, 1.0)
    assert window.snapshot(1.0).calls == 1


def test_percentiles_of_a_known_distribution() -> None:
    window = CountWindow(1000)
    for ms in range(1, 1001):
        window.record(0, ms / 1000)
    p50, p99 = window.percentile(0.5), window.percentile(0.99)
    assert p50 is not None
    assert p99 is not None
    assert 0.5 <= p50 <= 0.5 * 1.25
    assert 0.99 <= p99 <= 0.99 * 1.25
