"""Mergeable fixed-bucket latency histograms, with quantile estimates.

Theory of operation
- Every histogram in Crossway uses the same bucket bounds
  (`crossway.telemetry.metrics.LATENCY_BUCKETS`, seconds, inclusive upper
  bounds) plus an implicit +Inf bucket. Because the bounds are shared, merging
  two histograms — from two instances, two pushes, two time slots — is adding
  their counts bucket by bucket: exact, commutative and associative, with no
  loss however many are merged. That is what lets the SDK, gateway and
  sidecars push pre-aggregated histograms instead of one event per request.
- Counts are kept per bucket (not cumulative); `cumulative()` gives the
  Prometheus form.
- `quantile(q)` estimates like Prometheus' `histogram_quantile`: find the
  bucket holding rank `q × count`, then interpolate linearly between its lower
  and upper bound (the first bucket's lower bound is 0). A rank in the +Inf
  bucket answers the highest finite bound: nothing better is known.

Invariants
1. `len(counts) == BUCKET_COUNT` and every count is ≥ 0.
2. `count == sum(counts)`; `sum` is the total of the observed values (seconds).
3. For a fixed histogram, `quantile(q)` never decreases as `q` grows, and the
   estimate lies in the bucket that holds the true quantile.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from crossway.telemetry.metrics import LATENCY_BUCKETS

BOUNDS: tuple[float, ...] = LATENCY_BUCKETS
BUCKET_COUNT = len(BOUNDS) + 1
"""Buckets per histogram: one per bound, then +Inf."""


def bucket_index(seconds: float) -> int:
    """The bucket a value falls in: the first whose bound is ≥ the value."""
    return bisect.bisect_left(BOUNDS, seconds)


class Histogram:
    """Latency counts over the shared bounds; see the module header."""

    __slots__ = ("counts", "sum")

    def __init__(self, counts: Sequence[int] | None = None, total: float = 0.0) -> None:
        if counts is None:
            self.counts = [0] * BUCKET_COUNT
        else:
            if len(counts) != BUCKET_COUNT:
                raise ValueError(f"a histogram has {BUCKET_COUNT} buckets, got {len(counts)}")
            if any(c < 0 for c in counts):
                raise ValueError("bucket counts must not be negative")
            self.counts = list(counts)
        self.sum = total

    @classmethod
    def of(cls, values: Iterable[float]) -> Histogram:
        histogram = cls()
        for value in values:
            histogram.observe(value)
        return histogram

    @classmethod
    def from_cumulative(cls, cumulative: Sequence[int], total: float = 0.0) -> Histogram:
        """From Prometheus-style cumulative counts (non-decreasing; the last is the count)."""
        previous = 0
        counts = []
        for value in cumulative:
            if value < previous:
                raise ValueError("cumulative bucket counts must not decrease")
            counts.append(value - previous)
            previous = value
        return cls(counts, total)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, seconds: float, n: int = 1) -> None:
        """Count `n` requests that took `seconds` (negative values count as 0)."""
        seconds = max(0.0, seconds)
        self.counts[bucket_index(seconds)] += n
        self.sum += seconds * n

    def merge(self, other: Histogram) -> None:
        """Add `other`'s counts into this histogram (in place)."""
        self.add(other.counts, other.sum)

    def add(self, counts: Sequence[int], total: float) -> None:
        mine = self.counts
        for i, c in enumerate(counts):
            mine[i] += c
        self.sum += total

    def copy(self) -> Histogram:
        return Histogram(self.counts, self.sum)

    def cumulative(self) -> list[int]:
        running, out = 0, []
        for c in self.counts:
            running += c
            out.append(running)
        return out

    def mean(self) -> float | None:
        count = self.count
        return self.sum / count if count else None

    def quantile(self, q: float) -> float | None:
        """Estimated `q`-quantile in seconds (0 ≤ q ≤ 1); None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a quantile is between 0 and 1, got {q}")
        count = self.count
        if count == 0:
            return None
        rank = q * count
        running = 0
        for i, c in enumerate(self.counts):
            if c and running + c >= rank:
                return _interpolate(i, (rank - running) / c)
            running += c
        return BOUNDS[-1]  # only reached for q == 0 over leading empty buckets

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.counts == other.counts and abs(self.sum - other.sum) <= 1e-9 * max(
            1.0, abs(self.sum)
        )

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum:g})"


def _interpolate(index: int, fraction: float) -> float:
    if index >= len(BOUNDS):
        return BOUNDS[-1]
    lower = BOUNDS[index - 1] if index > 0 else 0.0
    upper = BOUNDS[index]
    return lower + (upper - lower) * fraction


def merged(histograms: Iterable[Histogram]) -> Histogram:
    """One histogram holding the counts of all of `histograms`."""
    total = Histogram()
    for histogram in histograms:
        total.merge(histogram)
    return total
