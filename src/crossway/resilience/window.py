# Rolling call statistics: the last N calls, or the last T seconds.
#
# Theory of operation
# -------------------
# A breaker (or a hedging policy, or a dashboard) needs to know, for the recent
# past: how many calls, how many failed, how many were slow, and what the
# latency distribution looked like. Recomputing that from a list of calls costs
# O(window) per question; these windows answer in O(1) and record in O(1).
#
# Every call is reduced to an *outcome code* (bit 0 = failed, bit 1 = slow, so
# 0..3) and a *latency bin*. The window keeps running totals per code and a
# running latency histogram, and subtracts what falls out of the window:
#
# - CountWindow(size): a ring of the last `size` calls (resilience4j's
#   COUNT_BASED window). Recording overwrites the oldest slot and subtracts its
#   code and bin from the totals: O(1), no allocation.
# - TimeWindow(length, buckets): a ring of `buckets` partial aggregations, each
#   covering `length / buckets` seconds (Sentinel's LeapArray, resilience4j's
#   TIME_BASED window). A call at time t lands in epoch floor(t / width); the
#   window at time `now` holds the epochs (E - buckets, E] with E the epoch of
#   `now`. Moving forward evicts at most `buckets` stale buckets, and each
#   bucket's histogram is a sparse dict, so eviction costs at most what was
#   recorded into it: O(1) amortised per record.
#
# Latency bins are log-linear (HdrHistogram's idea at 2 significant bits):
# integer microseconds below 8 map to themselves, above that each power of two
# is split into 4 equal sub-bins, so a bin's width is at most 25 % of its lower
# edge. 156 bins reach 2**40 µs (about 12 days); longer calls share the last bin.
# `percentile(q)` returns the upper edge of the bin that holds the sample of
# rank ceil(q * n): a conservative answer ("p99 is below 10 ms") whose error is
# bounded by the bin width, and which a naive sort-based reference reproduces
# exactly (the tests do that).
#
# The histogram is optional (`latency=False`): a breaker decides on counts
# alone, and the histogram is half the cost of a record.
#
# Invariants
# ----------
# - totals == the sum over the calls currently inside the window, always;
# - 0 <= failures, slow_calls <= calls <= capacity (size, or unbounded in time);
# - a TimeWindow never goes backwards: a `now` earlier than the newest epoch
#   seen is treated as that epoch (monotonic clocks only go forward anyway).
#
# Windows are not thread-safe on their own: the breaker that owns one guards it
# with its own short lock.

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

FAILED = 1
SLOW = 2

BINS = 156
_MAX_US = (1 << 40) - 1


def latency_bin(seconds: float) -> int:
    """The histogram bin of a duration in seconds (negative counts as zero)."""
    us = int(seconds * 1_000_000)
    if us < 8:
        return us if us > 0 else 0
    if us > _MAX_US:
        us = _MAX_US
    n = us.bit_length() - 3
    return (n << 2) + (us >> n)


def bin_upper_bound(index: int) -> float:
    """The exclusive upper edge of a bin, in seconds."""
    if index < 8:
        return (index + 1) / 1_000_000
    return (((index & 3) + 5) << ((index >> 2) - 1)) / 1_000_000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The totals of a window at one moment; rates are percentages (0..100)."""

    calls: int
    failures: int
    slow_calls: int
    slow_failures: int

    @property
    def successes(self) -> int:
        return self.calls - self.failures

    @property
    def failure_rate(self) -> float:
        return 100.0 * self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        return 100.0 * self.slow_calls / self.calls if self.calls else 0.0


class Window(Protocol):
    """What a breaker needs from a window."""

    @property
    def calls(self) -> int: ...

    def record(self, code: int, duration: float, now: float) -> None: ...

    def counts(self, now: float) -> list[int]: ...

    def snapshot(self, now: float) -> Snapshot: ...

    def percentile(self, q: float, now: float) -> float | None: ...

    def reset(self) -> None: ...


def _percentile(hist: list[int], total: int, q: float) -> float | None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"percentile must be within [0, 1], got {q!r}")
    if total == 0:
        return None
    rank = max(1, -int(-q * total // 1))  # ceil(q * total), at least the first sample
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return bin_upper_bound(index)
    raise AssertionError("histogram totals are inconsistent")  # pragma: no cover


def _need_latency(latency: bool) -> None:
    if not latency:
        raise ValueError("this window does not keep latencies (built with latency=False)")


def _snapshot(counts: list[int]) -> Snapshot:
    return Snapshot(
        calls=sum(counts),
        failures=counts[1] + counts[3],
        slow_calls=counts[2] + counts[3],
        slow_failures=counts[3],
    )


class CountWindow:
    """The last `size` calls. `now` arguments are accepted and ignored."""

    __slots__ = ("_bins", "_codes", "_counts", "_hist", "_pos", "calls", "latency", "size")

    def __init__(self, size: int, *, latency: bool = True) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self.latency = latency
        self._codes = [-1] * size  # -1: slot never written
        self._bins = [0] * size
        self._counts = [0, 0, 0, 0]
        self._hist = [0] * BINS
        self._pos = 0
        self.calls = 0

    def record(self, code: int, duration: float, now: float = 0.0) -> None:
        """Add one call (code = FAILED | SLOW bits), evicting the oldest if full."""
        i = self._pos
        old = self._codes[i]
        counts = self._counts
        hist = self._hist
        if old >= 0:
            counts[old] -= 1
            hist[self._bins[i]] -= 1  # bins stay 0 without latency: harmless
        else:
            self.calls += 1
        self._codes[i] = code
        counts[code] += 1
        if self.latency:
            # latency_bin(), inlined: this is the per-call hot path of every breaker.
            us = int(duration * 1_000_000)
            if us < 8:
                b = us if us > 0 else 0
            else:
                if us > _MAX_US:
                    us = _MAX_US
                n = us.bit_length() - 3
                b = (n << 2) + (us >> n)
            self._bins[i] = b
            hist[b] += 1
        i += 1
        self._pos = 0 if i == self.size else i

    def counts(self, now: float = 0.0) -> list[int]:
        """Live totals per outcome code; read, do not modify."""
        return self._counts

    def snapshot(self, now: float = 0.0) -> Snapshot:
        return _snapshot(self._counts)

    def percentile(self, q: float, now: float = 0.0) -> float | None:
        """Upper edge of the latency bin at quantile q (0..1); None when empty.

        Raises ValueError if this window was built with latency=False."""
        _need_latency(self.latency)
        return _percentile(self._hist, self.calls, q)

    def reset(self) -> None:
        """Forget every call."""
        self._codes = [-1] * self.size
        self._counts = [0, 0, 0, 0]
        self._hist = [0] * BINS
        self._pos = 0
        self.calls = 0


class TimeWindow:
    """The calls of the last `length` seconds, in `buckets` partial aggregations."""

    __slots__ = (
        "_bucket_counts",
        "_bucket_hists",
        "_counts",
        "_head",
        "_hist",
        "_width",
        "buckets",
        "calls",
        "latency",
        "length",
    )

    def __init__(self, length: float, buckets: int = 10, *, latency: bool = True) -> None:
        if length <= 0:
            raise ValueError(f"window length must be positive, got {length}")
        if buckets < 1:
            raise ValueError(f"a window needs at least one bucket, got {buckets}")
        self.length = length
        self.buckets = buckets
        self.latency = latency
        self._width = length / buckets
        self._bucket_counts = [[0, 0, 0, 0] for _ in range(buckets)]
        self._bucket_hists: list[dict[int, int]] = [{} for _ in range(buckets)]
        self._counts = [0, 0, 0, 0]
        self._hist = [0] * BINS
        self._head: int | None = None  # newest epoch seen
        self.calls = 0

    def epoch(self, now: float) -> int:
        """The bucket epoch that time `now` falls into."""
        return int(now // self._width)

    def _evict(self, index: int) -> None:
        bc = self._bucket_counts[index]
        counts = self._counts
        for code in range(4):
            if bc[code]:
                counts[code] -= bc[code]
                self.calls -= bc[code]
                bc[code] = 0
        bh = self._bucket_hists[index]
        if bh:
            hist = self._hist
            for b, n in bh.items():
                hist[b] -= n
            bh.clear()

    def _advance(self, now: float) -> int:
        """Move the head to `now`'s epoch, evicting what slid out; the bucket index."""
        e = int(now // self._width)
        head = self._head
        if head is None:
            self._head = e
        elif e > head:
            for ep in range(max(head + 1, e - self.buckets + 1), e + 1):
                self._evict(ep % self.buckets)
            self._head = e
        else:
            e = head
        return e % self.buckets

    def record(self, code: int, duration: float, now: float) -> None:
        """Add one call at time `now` (code = FAILED | SLOW bits)."""
        i = self._advance(now)
        self._bucket_counts[i][code] += 1
        self._counts[code] += 1
        self.calls += 1
        if self.latency:
            b = latency_bin(duration)
            bh = self._bucket_hists[i]
            bh[b] = bh.get(b, 0) + 1
            self._hist[b] += 1

    def counts(self, now: float) -> list[int]:
        """Live totals per outcome code as of `now`; read, do not modify."""
        self._advance(now)
        return self._counts

    def snapshot(self, now: float) -> Snapshot:
        self._advance(now)
        return _snapshot(self._counts)

    def percentile(self, q: float, now: float) -> float | None:
        """Upper edge of the latency bin at quantile q (0..1); None when empty.

        Raises ValueError if this window was built with latency=False."""
        _need_latency(self.latency)
        self._advance(now)
        return _percentile(self._hist, self.calls, q)

    def reset(self) -> None:
        """Forget every call."""
        for index in range(self.buckets):
            self._evict(index)
        self._head = None
