"""Golden signals over time for one key: 10 s slots for an hour, 1 min slots for a day.

Theory of operation
- A `Ring` is a fixed number of time slots of a fixed width. Wall time `t`
  belongs to slot number `floor(t / width)`, stored at position
  `slot % size`; each position remembers which slot number it holds, so a
  position left over from an older lap reads as empty and is reset on the
  next write. Nothing is ever shifted or pruned: memory is fixed per ring.
- A slot holds the latency bucket counts (`BUCKET_COUNT` of them), the number
  of failed requests and the sum of latencies of everything recorded in it.
  Arrays are flat `array` objects (4 bytes per count, 8 per sum), allocated on
  the first write, so a `Series` costs about 216 KB when busy and a few
  hundred bytes before its first record.
- A `Series` writes every record into both tiers: `HOUR` (360 × 10 s) and
  `DAY` (1440 × 1 min). A read for a window up to an hour uses the 10 s tier,
  longer windows the 1 min tier.
- Windows cover *completed* slots only: the slot being filled now is left
  out, so a window of 1 min is the six 10 s slots before the current one and
  a rate is always count / (slots × width), never a partial slot divided by a
  full one. Pushes arrive every 10 s, so a completed slot holds one push per
  source.
- Reading a window adds its slots up. Runs of positions that all hold their
  expected slot (the usual case for a busy key) are summed with one strided
  C-level `sum` per bucket; runs with stale positions fall back to slot by
  slot. A day window of a busy key costs about a millisecond.

Invariants
1. A ring never holds data older than `size × width` seconds before the
   slot being read.
2. Reading never changes a ring; only `add` does.
3. Counts saturate at 2³² − 1 per bucket per slot instead of overflowing.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from crossway.telemetry.signals.histogram import BUCKET_COUNT, Histogram

_MAX_COUNT = 2**32 - 1
_EMPTY = -1
_ZEROS = array("I", [0]) * BUCKET_COUNT


@dataclass(frozen=True, slots=True)
class Tier:
    width: float
    """Seconds per slot."""
    size: int
    """Slots kept."""

    @property
    def span(self) -> float:
        return self.width * self.size


HOUR = Tier(10.0, 360)
DAY = Tier(60.0, 1440)
MAX_WINDOW = DAY.span


@dataclass(slots=True)
class Totals:
    """Everything recorded over some slots: latency histogram and failures."""

    histogram: Histogram
    errors: int = 0
    seconds: float = 0.0
    """The length of time the totals cover (for rates)."""

    @property
    def requests(self) -> int:
        return self.histogram.count

    def merge(self, other: Totals) -> None:
        """Add `other` (same period, another key) into these totals."""
        self.histogram.merge(other.histogram)
        self.errors += other.errors
        self.seconds = max(self.seconds, other.seconds)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def success_rate(self) -> float | None:
        """Share of requests that succeeded; None when there were none."""
        requests = self.requests
        return (requests - self.errors) / requests if requests else None

    def quantile(self, q: float) -> float | None:
        return self.histogram.quantile(q)


@dataclass(frozen=True, slots=True)
class Point:
    """One slot of a time series, for charts."""

    start: float
    """Wall time (Unix seconds) at which the slot starts."""
    totals: Totals


class Ring:
    """Fixed slots of one tier; see the module header."""

    __slots__ = ("_counts", "_errors", "_slots", "_sums", "tier")

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self._slots = array("q")
        self._counts = array("I")
        self._errors = array("I")
        self._sums = array("d")

    def slot_of(self, t: float) -> int:
        return math.floor(t / self.tier.width)

    def add(self, t: float, counts: Sequence[int], errors: int, total: float) -> None:
        """Record into the slot holding wall time `t`."""
        self.add_sparse(t, sparse(counts), errors, total)

    def add_sparse(
        self, t: float, pairs: Sequence[tuple[int, int]], errors: int, total: float
    ) -> None:
        """`add` with the counts given as (bucket, count) pairs, zeros left out:
        a latency distribution fills a handful of the buckets, so this is
        what the aggregator uses (it computes the pairs once for all keys)."""
        if not self._slots:
            self._allocate()
        slot = self.slot_of(t)
        pos = slot % self.tier.size
        if self._slots[pos] != slot:
            self._reset(pos, slot)
        base = pos * BUCKET_COUNT
        mine = self._counts
        for i, c in pairs:
            mine[base + i] = min(_MAX_COUNT, mine[base + i] + c)
        self._errors[pos] = min(_MAX_COUNT, self._errors[pos] + errors)
        self._sums[pos] += total

    def totals(self, first: int, last: int) -> Totals:
        """Everything in slots `first` .. `last - 1`."""
        out = Totals(Histogram(), seconds=(last - first) * self.tier.width)
        if not self._slots:
            return out
        first = max(first, last - self.tier.size)
        for start, stop in self._runs(first, last):
            if self._all_current(start, stop):
                self._add_run_to(out, start, stop)
            else:
                for slot in range(start, stop):
                    self._add_slot_to(out, slot)
        return out

    def _runs(self, first: int, last: int) -> list[tuple[int, int]]:
        """`first` .. `last - 1` cut where the positions wrap around the ring."""
        size = self.tier.size
        runs = []
        while first < last:
            stop = min(last, first + size - first % size)
            runs.append((first, stop))
            first = stop
        return runs

    def _all_current(self, start: int, stop: int) -> bool:
        """Whether every position of the run holds exactly its slot (no stale lap)."""
        pos = start % self.tier.size
        return self._slots[pos : pos + stop - start] == array("q", range(start, stop))

    def _add_run_to(self, out: Totals, start: int, stop: int) -> None:
        """Add a run of current slots with one strided sum per bucket: a day of
        1 min slots costs a few dozen C-level sums instead of 36,000 additions."""
        pos, end = start % self.tier.size, start % self.tier.size + stop - start
        counts = self._counts
        step = BUCKET_COUNT
        run = [sum(counts[pos * step + b : end * step : step]) for b in range(step)]
        out.histogram.add(run, sum(self._sums[pos:end]))
        out.errors += sum(self._errors[pos:end])

    def points(self, first: int, last: int) -> list[Point]:
        """One point per slot in `first` .. `last - 1` (empty slots included)."""
        width = self.tier.width
        out = []
        for slot in range(first, last):
            totals = Totals(Histogram(), seconds=width)
            if slot >= last - self.tier.size:
                self._add_slot_to(totals, slot)
            out.append(Point(slot * width, totals))
        return out

    def _add_slot_to(self, out: Totals, slot: int) -> None:
        if not self._slots:
            return
        pos = slot % self.tier.size
        if self._slots[pos] != slot:
            return
        base = pos * BUCKET_COUNT
        out.histogram.add(self._counts[base : base + BUCKET_COUNT], self._sums[pos])
        out.errors += self._errors[pos]

    def _allocate(self) -> None:
        size = self.tier.size
        self._slots = array("q", [_EMPTY]) * size
        self._counts = array("I", [0]) * (size * BUCKET_COUNT)
        self._errors = array("I", [0]) * size
        self._sums = array("d", [0.0]) * size

    def _reset(self, pos: int, slot: int) -> None:
        self._slots[pos] = slot
        base = pos * BUCKET_COUNT
        self._counts[base : base + BUCKET_COUNT] = _ZEROS
        self._errors[pos] = 0
        self._sums[pos] = 0.0


class Series:
    """Both tiers for one key, and the time of its last record."""

    __slots__ = ("day", "hour", "updated")

    def __init__(self) -> None:
        self.hour = Ring(HOUR)
        self.day = Ring(DAY)
        self.updated = -math.inf
        """Wall time of the last record."""

    def add(self, t: float, counts: Sequence[int], errors: int, total: float) -> None:
        self.add_sparse(t, sparse(counts), errors, total)

    def add_sparse(
        self, t: float, pairs: Sequence[tuple[int, int]], errors: int, total: float
    ) -> None:
        self.hour.add_sparse(t, pairs, errors, total)
        self.day.add_sparse(t, pairs, errors, total)
        self.updated = max(self.updated, t)

    def window(self, now: float, seconds: float) -> Totals:
        """Totals over the completed slots of the last `seconds` before `now`."""
        ring, first, last = self._span(now, seconds)
        return ring.totals(first, last)

    def points(self, now: float, seconds: float) -> list[Point]:
        """The same window, slot by slot."""
        ring, first, last = self._span(now, seconds)
        return ring.points(first, last)

    def _span(self, now: float, seconds: float) -> tuple[Ring, int, int]:
        ring = ring_for(self.hour, self.day, seconds)
        last = ring.slot_of(now)
        return ring, last - slots_in(ring.tier, seconds), last


def sparse(counts: Sequence[int]) -> list[tuple[int, int]]:
    """The non-zero (bucket, count) pairs of dense bucket counts."""
    return [(i, c) for i, c in enumerate(counts) if c]


def ring_for(hour: Ring, day: Ring, seconds: float) -> Ring:
    """The finest tier that covers a window of `seconds`."""
    return hour if seconds <= HOUR.span else day


def slots_in(tier: Tier, seconds: float) -> int:
    """Slots a window of `seconds` covers: rounded up, at least one, at most the tier."""
    if seconds <= 0:
        raise ValueError("a window must be longer than zero")
    return max(1, min(tier.size, math.ceil(seconds / tier.width - 1e-9)))


def resolution(seconds: float) -> float:
    """The slot width a window of `seconds` is read at."""
    return HOUR.width if seconds <= HOUR.span else DAY.width
