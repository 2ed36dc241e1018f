"""Fixed-bucket histograms: merging is exact, quantiles land in the right bucket."""

from __future__ import annotations

import bisect
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.telemetry.metrics import LATENCY_BUCKETS
from crossway.telemetry.signals.histogram import (
    BOUNDS,
    BUCKET_COUNT,
    Histogram,
    bucket_index,
    merged,
)

latencies = st.lists(
    st.floats(min_value=0.0, max_value=120.0, allow_nan=False, allow_infinity=False),
    max_size=200,
)


def test_the_bounds_are_the_shared_conventions_and_include_opentelemetrys() -> None:
    assert BOUNDS == LATENCY_BUCKETS
    assert len(BOUNDS) + 1 == BUCKET_COUNT
    assert list(BOUNDS) == sorted(set(BOUNDS))
    otel = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
    assert set(otel) <= set(BOUNDS)


def test_bucket_bounds_are_inclusive() -> None:
    assert bucket_index(0.0) == 0
    assert bucket_index(0.001) == 0
    assert bucket_index(0.0011) == 1
    assert bucket_index(60.0) == len(BOUNDS) - 1
    assert bucket_index(60.5) == len(BOUNDS)  # +Inf


def test_quantiles_interpolate_inside_the_bucket() -> None:
    h = Histogram()
    h.observe(0.07, n=100)  # all in (0.05, 0.075]
    assert h.quantile(0.5) == pytest.approx(0.0625)
    assert h.quantile(1.0) == pytest.approx(0.075)
    assert h.quantile(0.0) == pytest.approx(0.05)
    assert h.count == 100
    assert h.sum == pytest.approx(7.0)
    assert h.mean() == pytest.approx(0.07)


def test_empty_and_overflowing_histograms() -> None:
    assert Histogram().quantile(0.99) is None
    assert Histogram().mean() is None
    h = Histogram.of([500.0, 900.0])
    assert h.quantile(0.99) == BOUNDS[-1]  # past the last bound nothing better is known
    with pytest.raises(ValueError, match="between 0 and 1"):
        h.quantile(1.5)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        Histogram([1, 2, 3])
    with pytest.raises(ValueError, match="negative"):
        Histogram([-1] + [0] * (BUCKET_COUNT - 1))
    with pytest.raises(ValueError, match="decrease"):
        Histogram.from_cumulative([2, 1] + [1] * (BUCKET_COUNT - 2))


@given(latencies, latencies)
def test_merging_equals_observing_everything(a: list[float], b: list[float]) -> None:
    left, right = Histogram.of(a), Histogram.of(b)
    both = merged([left, right])
    assert both == Histogram.of(a + b)
    assert merged([right, left]) == both
    assert both.count == len(a) + len(b)


@given(st.lists(latencies, max_size=5))
def test_merge_is_associative(parts: list[list[float]]) -> None:
    one_by_one = Histogram()
    for part in parts:
        one_by_one.merge(Histogram.of(part))
    assert one_by_one == Histogram.of([x for part in parts for x in part])


@given(latencies)
def test_cumulative_round_trips(values: list[float]) -> None:
    h = Histogram.of(values)
    cumulative = h.cumulative()
    assert cumulative[-1] == len(values)
    assert Histogram.from_cumulative(cumulative, h.sum) == h


@given(latencies.filter(bool), st.floats(min_value=0.0, max_value=1.0))
def test_quantile_estimate_lies_in_the_true_quantiles_bucket(values: list[float], q: float) -> None:
    h = Histogram.of(values)
    estimate = h.quantile(q)
    assert estimate is not None
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(values) // 1)))  # ceil(q·n), at least the first value
    true = ordered[rank - 1]
    index = bisect.bisect_left(BOUNDS, true)
    lower = BOUNDS[index - 1] if index > 0 else 0.0
    upper = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1]
    assert lower - 1e-12 <= estimate <= upper + 1e-12


@given(latencies.filter(bool), st.lists(st.floats(0.0, 1.0), min_size=2, max_size=10))
def test_quantiles_never_decrease_with_q(values: list[float], qs: list[float]) -> None:
    h = Histogram.of(values)
    estimates = [h.quantile(q) for q in sorted(qs)]
    assert all(
        a is not None and b is not None and a <= b + 1e-12 for a, b in itertools.pairwise(estimates)
    )
