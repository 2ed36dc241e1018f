"""A bounded in-memory trace store with tail sampling.

Theory of operation
- Spans are grouped by trace id as they arrive. A trace is *pending* while
  spans keep coming; once nothing has arrived for `quiet_period` seconds it is
  *complete* and the tail sampler decides its fate, now that the whole trace
  can be seen:
  * IMPORTANT — a span has an `error` tag, or the root's duration is slow:
    at least `slow_threshold` when that is set, else above the
    `slow_quantile` of the durations of recently completed traces (once
    `slow_min_samples` are known): always kept;
  * ORDINARY — kept with probability `keep_fraction`, decided by the trace id
    itself (its low 32 bits), so every replica of the control plane keeps the
    same traces;
  * otherwise dropped at once.
  A span that arrives after its trace completed joins it (and an error
  promotes an ordinary trace to important); a span of a trace that was
  dropped or evicted is discarded (a short list of such ids is remembered),
  so a fragment never reappears as if it were a whole trace.
- Space is bounded by a span count and an estimate of bytes (model.py). When
  either is exceeded, whole traces are evicted, oldest first in this order:
  important traces while they hold more than `important_share` of the span
  budget; ordinary traces; important traces; pending traces. So errors and
  slow traces outlive ordinary ones, but never crowd out everything new.
- Indexes for the query API (service names, span names and remote services
  per service) are reference counts over the stored spans, so they shrink
  with eviction and never list a name that no stored span carries.
- Completion is lazy: `add` and `sweep` complete whatever has been quiet long
  enough, so no timer is needed and a `VirtualClock` drives everything.

Invariants (checked by the tests after every operation):
- `span_count <= max_spans` and `byte_count <= max_bytes` after `add`/`sweep`;
- every stored trace is in exactly one of pending / ordinary / important;
- the indexes count exactly the stored spans.

Pure: takes a `Clock`, never sleeps, never does I/O; not thread-safe (the
server calls it from its event loop only).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from crossway.core.clock import Clock
from crossway.telemetry.traces.model import Span, estimated_bytes

_TRACE_OVERHEAD = 400  # the StoredTrace, its list and its slots in four dicts


@dataclass(frozen=True, kw_only=True, slots=True)
class TracePolicy:
    max_spans: int = 200_000
    max_bytes: int = 256 * 1024 * 1024
    max_spans_per_trace: int = 10_000
    quiet_period: float = 10.0
    """Seconds without a new span after which a trace is complete."""
    slow_threshold: float | None = None
    """Seconds; None: the `slow_quantile` of recently completed traces."""
    slow_quantile: float = 0.99
    slow_window: int = 1000
    slow_min_samples: int = 100
    keep_fraction: float = 1.0
    """Share of ordinary (no error, not slow) traces kept when they complete."""
    important_share: float = 0.5
    """Share of `max_spans` beyond which important traces are evicted first."""
    tombstones: int = 10_000

    def __post_init__(self) -> None:
        if self.max_spans < 1 or self.max_bytes < 1 or self.max_spans_per_trace < 1:
            raise ValueError("max_spans, max_bytes and max_spans_per_trace must be positive")
        if self.quiet_period < 0 or (self.slow_threshold is not None and self.slow_threshold < 0):
            raise ValueError("quiet_period and slow_threshold must not be negative")
        for name in ("slow_quantile", "keep_fraction", "important_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")


class Verdict(enum.Enum):
    PENDING = "pending"
    ORDINARY = "ordinary"
    IMPORTANT = "important"


class StoredTrace:
    """One trace's spans and bookkeeping (read-only outside the store)."""

    __slots__ = ("bytes", "error", "last_seen", "root", "spans", "timestamp", "trace_id", "verdict")

    def __init__(self, trace_id: str, now: float) -> None:
        self.trace_id = trace_id
        self.spans: list[Span] = []
        self.bytes = _TRACE_OVERHEAD
        self.last_seen = now
        self.verdict = Verdict.PENDING
        self.error = False
        self.root: Span | None = None
        self.timestamp = 0
        """Microseconds: the root span's start, else the earliest start seen."""

    def add(self, span: Span, size: int) -> None:
        self.spans.append(span)
        self.bytes += size
        self.error = self.error or span.is_error
        if span.parent_id is None and span.timestamp and self.root is None:
            self.root = span
            self.timestamp = span.timestamp
        elif span.timestamp and self.root is None:
            self.timestamp = min(self.timestamp or span.timestamp, span.timestamp)

    @property
    def duration(self) -> int:
        """Microseconds: the root's duration, else the spans' overall extent."""
        if self.root is not None and self.root.duration:
            return self.root.duration
        starts = [s.timestamp for s in self.spans if s.timestamp]
        ends = [s.end for s in self.spans if s.end]
        return max(ends) - min(starts) if starts and ends else 0


@dataclass(slots=True)
class TraceStats:
    spans_accepted: int = 0
    spans_dropped: int = 0
    """Spans of dropped or evicted traces, and beyond `max_spans_per_trace`."""
    traces_completed: int = 0
    traces_sampled_out: int = 0
    traces_evicted: int = 0
    spans_evicted: int = 0


class TraceStore:
    """See the module header."""

    def __init__(self, *, clock: Clock, policy: TracePolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy if policy is not None else TracePolicy()
        self.stats = TraceStats()
        self._traces: dict[str, StoredTrace] = {}
        # Each ordered oldest first: pending by last span, the others by completion.
        self._pending: OrderedDict[str, StoredTrace] = OrderedDict()
        self._ordinary: OrderedDict[str, StoredTrace] = OrderedDict()
        self._important: OrderedDict[str, StoredTrace] = OrderedDict()
        self._important_spans = 0
        self._spans = 0
        self._bytes = 0
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._index = _Index()
        self._slow = _SlowThreshold(self.policy)

    # Writing.

    def add(self, spans: Iterable[Span]) -> int:
        """Store `spans` (already normalised by a codec); returns how many were kept."""
        now = self.clock.now()
        self._complete_quiet(now)
        kept = 0
        for span in spans:
            kept += self._add_one(span, now)
        self.stats.spans_accepted += kept
        self._enforce_budget()
        return kept

    def sweep(self) -> None:
        """Complete the traces that have been quiet long enough; keep the budget."""
        self._complete_quiet(self.clock.now())
        self._enforce_budget()

    def _add_one(self, span: Span, now: float) -> int:
        trace_id = span.trace_id
        if trace_id in self._tombstones:
            self.stats.spans_dropped += 1
            return 0
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = StoredTrace(trace_id, now)
            self._pending[trace_id] = trace
            self._bytes += _TRACE_OVERHEAD
        elif trace.verdict is Verdict.PENDING:
            trace.last_seen = now
            self._pending.move_to_end(trace_id)
        if len(trace.spans) >= self.policy.max_spans_per_trace:
            self.stats.spans_dropped += 1
            return 0
        size = estimated_bytes(span)
        trace.add(span, size)
        self._spans += 1
        self._bytes += size
        self._index.add(span)
        if trace.verdict is Verdict.IMPORTANT:
            self._important_spans += 1
        elif trace.verdict is Verdict.ORDINARY and trace.error:
            self._promote(trace)
        return 1

    def _promote(self, trace: StoredTrace) -> None:
        del self._ordinary[trace.trace_id]
        trace.verdict = Verdict.IMPORTANT
        self._important[trace.trace_id] = trace
        self._important_spans += len(trace.spans)

    def _complete_quiet(self, now: float) -> None:
        quiet = self.policy.quiet_period
        while self._pending:
            trace = next(iter(self._pending.values()))
            if now - trace.last_seen < quiet:
                return
            del self._pending[trace.trace_id]
            self._decide(trace)

    def _decide(self, trace: StoredTrace) -> None:
        self.stats.traces_completed += 1
        slow = self._slow.observe(trace.duration)
        if trace.error or slow:
            trace.verdict = Verdict.IMPORTANT
            self._important[trace.trace_id] = trace
            self._important_spans += len(trace.spans)
        elif keeps(trace.trace_id, self.policy.keep_fraction):
            trace.verdict = Verdict.ORDINARY
            self._ordinary[trace.trace_id] = trace
        else:
            self.stats.traces_sampled_out += 1
            self._forget(trace)

    def _enforce_budget(self) -> None:
        policy = self.policy
        while self._spans > policy.max_spans or self._bytes > policy.max_bytes:
            victim = self._next_victim()
            self.stats.traces_evicted += 1
            self.stats.spans_evicted += len(victim.spans)
            self._drop_from_class(victim)
            self._forget(victim)

    def _next_victim(self) -> StoredTrace:
        crowded = self._important_spans > self.policy.important_share * self.policy.max_spans
        order = (
            (self._important, self._ordinary, self._pending)
            if crowded
            else (self._ordinary, self._important, self._pending)
        )
        for traces in order:
            if traces:
                return next(iter(traces.values()))
        raise AssertionError("over budget with no trace stored")

    def _drop_from_class(self, trace: StoredTrace) -> None:
        if trace.verdict is Verdict.PENDING:
            del self._pending[trace.trace_id]
        elif trace.verdict is Verdict.ORDINARY:
            del self._ordinary[trace.trace_id]
        else:
            del self._important[trace.trace_id]
            self._important_spans -= len(trace.spans)

    def _forget(self, trace: StoredTrace) -> None:
        """Remove a trace that is in no class any more; remember its id."""
        del self._traces[trace.trace_id]
        self._spans -= len(trace.spans)
        self._bytes -= trace.bytes
        for span in trace.spans:
            self._index.remove(span)
        self._tombstones[trace.trace_id] = None
        if len(self._tombstones) > self.policy.tombstones:
            self._tombstones.popitem(last=False)

    # Reading.

    def get(self, trace_id: str) -> list[Span] | None:
        """The spans of one trace (normalised id), or None when it is not stored."""
        trace = self._traces.get(trace_id)
        return list(trace.spans) if trace is not None else None

    def traces(self) -> Iterator[StoredTrace]:
        """Every stored trace, pending ones included, in no particular order."""
        return iter(list(self._traces.values()))

    def verdict(self, trace_id: str) -> Verdict | None:
        trace = self._traces.get(trace_id)
        return trace.verdict if trace is not None else None

    def services(self) -> list[str]:
        return sorted(self._index.services)

    def span_names(self, service: str) -> list[str]:
        return sorted(self._index.names.get(service, ()))

    def remote_services(self, service: str) -> list[str]:
        return sorted(self._index.remotes.get(service, ()))

    @property
    def span_count(self) -> int:
        return self._spans

    @property
    def byte_count(self) -> int:
        return self._bytes

    @property
    def trace_count(self) -> int:
        return len(self._traces)

    def class_sizes(self) -> dict[Verdict, int]:
        """How many traces are pending, ordinary and important."""
        return {
            Verdict.PENDING: len(self._pending),
            Verdict.ORDINARY: len(self._ordinary),
            Verdict.IMPORTANT: len(self._important),
        }


def keeps(trace_id: str, fraction: float) -> bool:
    """Whether an ordinary trace is kept: the same answer for the same id anywhere."""
    if fraction >= 1:
        return True
    if fraction <= 0:
        return False
    return int(trace_id[-8:], 16) < fraction * 2**32


class _Index:
    """Reference-counted names: services, and per service its span and remote names."""

    __slots__ = ("names", "remotes", "services")

    def __init__(self) -> None:
        self.services: dict[str, int] = {}
        self.names: dict[str, dict[str, int]] = {}
        self.remotes: dict[str, dict[str, int]] = {}

    def add(self, span: Span) -> None:
        service = span.service
        if service is None:
            return
        _increment(self.services, service)
        if span.name:
            _increment(self.names.setdefault(service, {}), span.name)
        remote = span.remote_service
        if remote:
            _increment(self.remotes.setdefault(service, {}), remote)

    def remove(self, span: Span) -> None:
        service = span.service
        if service is None:
            return
        _decrement(self.services, service)
        if span.name:
            _decrement_nested(self.names, service, span.name)
        remote = span.remote_service
        if remote:
            _decrement_nested(self.remotes, service, remote)


def _increment(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def _decrement_nested(nested: dict[str, dict[str, int]], outer: str, key: str) -> None:
    counts = nested[outer]
    _decrement(counts, key)
    if not counts:
        del nested[outer]


class _SlowThreshold:
    """Is a completed trace slow? A fixed threshold, or a quantile of recent ones.

    The quantile is recomputed every `slow_window // 10` completions rather
    than on each, so completing a trace costs O(1) amortised.
    """

    __slots__ = ("_cached", "_fixed", "_min", "_q", "_recent", "_since")

    def __init__(self, policy: TracePolicy) -> None:
        fixed = policy.slow_threshold
        self._fixed = None if fixed is None else round(fixed * 1_000_000)
        self._q = policy.slow_quantile
        self._min = policy.slow_min_samples
        self._recent: deque[int] = deque(maxlen=max(1, policy.slow_window))
        self._cached: int | None = None
        self._since = 0

    def observe(self, duration: int) -> bool:
        """Whether `duration` (µs) is slow; then remember it."""
        if self._fixed is not None:
            slow = duration > 0 and duration >= self._fixed
        else:
            # Strictly above the quantile: when every trace takes the same
            # time, none of them is slow.
            quantile = self._quantile()
            slow = quantile is not None and duration > quantile
        self._recent.append(duration)
        self._since += 1
        return slow

    def _quantile(self) -> int | None:
        if len(self._recent) < self._min:
            return None
        if self._cached is None or self._since >= max(1, len(self._recent) // 10):
            ordered = sorted(self._recent)
            rank = min(len(ordered) - 1, math.ceil(self._q * len(ordered)) - 1)
            self._cached = ordered[max(0, rank)]
            self._since = 0
        return self._cached
