# Adaptive concurrency limits: find how many requests may be in flight from
# the latency they see, instead of configuring a number.
#
# Theory of operation
# -------------------
# Little's law: a server that takes `rtt_noload` per request when idle serves
# `limit / rtt` requests per second; past its capacity, extra concurrency only
# queues, and the queue shows up as latency. Each algorithm watches completed
# requests' round-trip times (RTT) and moves the limit down when latency grows
# (queueing) and up when it does not:
#
# * Gradient2 (Netflix concurrency-limits): a long exponential average of RTT is
#   the baseline, a short one the present. gradient = max(0.5, min(1, tolerance
#   * long / short)); new = limit * gradient + queue_size, smoothed. The limit
#   only grows while the caller actually uses at least half of it.
# * Vegas (Netflix, after TCP Vegas): the estimated queue is
#   limit * (1 - rtt_noload / rtt); below alpha it grows, above beta it shrinks,
#   scaled by log10(limit). rtt_noload is the least RTT seen, re-probed now and
#   then so a slower but healthy service is not punished forever.
# * GradientController (Envoy's adaptive concurrency filter): the ideal RTT is
#   measured directly, by pinning the limit to `min_concurrency` for a window of
#   `min_rtt_requests` requests every `min_rtt_interval` (with jitter); every
#   `update_interval` the sampled RTT percentile gives gradient =
#   (min_rtt * (1 + buffer)) / sample_rtt in [0.5, 2], and
#   limit = limit * gradient + sqrt(limit * gradient) (the headroom).
#
# `Windowed` feeds Gradient2 or Vegas one averaged sample per window, as
# Netflix's library does; per-request updates at thousands of requests per
# second move the limit faster than latency can answer, and it oscillates.
# `AdaptiveLimiter` admits while inflight < limit and feeds each completion's RTT
# to the algorithm; `ConcurrencyGuard` is its thin sync/async front.
#
# Invariants
# ----------
# 1. min_limit <= limit <= max_limit for every algorithm, at all times.
# 2. Everything here is pure: time comes in as `now`, randomness (probe jitter,
#    sampling) from an injectable `random.Random`.
# 3. inflight equals tickets issued minus tickets finished; finishing a ticket
#    twice is a no-op.

from __future__ import annotations

import functools
import math
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar

from crossway.core.clock import Clock, SystemClock
from crossway.core.errors import CrosswayError
from crossway.resilience.limiter import seconds

P = ParamSpec("P")
R = TypeVar("R")

_TINY = 1e-9  # RTTs are clamped to this so ratios never divide by zero


class ConcurrencyLimit(Protocol):
    """An algorithm that turns RTT samples into a concurrency limit."""

    @property
    def limit(self) -> int: ...

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool = False) -> None:
        """Record one completed request: its RTT, the inflight count when it started,
        and whether it was dropped (timed out / shed downstream)."""
        ...


def _check_bounds(initial: int, low: int, high: int) -> None:
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= min_limit <= max_limit, got {low}, {high}")
    if not low <= initial <= high:
        raise ValueError(f"initial_limit {initial} is outside [{low}, {high}]")


class _ExpAverage:
    """Exponential moving average; a plain mean over the first `warmup` samples so
    one early outlier does not become the baseline."""

    __slots__ = ("_count", "_factor", "_warmup", "value")

    def __init__(self, window: int, warmup: int) -> None:
        self._factor = 2.0 / (window + 1)
        self._warmup = warmup
        self._count = 0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self._count < self._warmup:
            self._count += 1
            self.value += (sample - self.value) / self._count
        else:
            self.value += (sample - self.value) * self._factor
        return self.value


class Gradient2:
    """Netflix Gradient2: long vs short RTT averages (pure; see the module header)."""

    __slots__ = (
        "_estimate",
        "_long",
        "_short",
        "max_limit",
        "min_limit",
        "queue_size",
        "smoothing",
        "tolerance",
    )

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 20,
        max_limit: int = 200,
        smoothing: float = 0.2,
        queue_size: float = 4,
        tolerance: float = 1.5,
        long_window: int = 600,
        short_window: int = 1,
    ) -> None:
        _check_bounds(initial_limit, min_limit, max_limit)
        self.min_limit, self.max_limit = min_limit, max_limit
        self.smoothing, self.queue_size, self.tolerance = smoothing, queue_size, tolerance
        self._estimate = float(initial_limit)
        self._long = _ExpAverage(long_window, warmup=10)
        self._short = _ExpAverage(short_window, warmup=min(short_window, 10))

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool = False) -> None:
        short = self._short.add(max(rtt, _TINY))
        long = self._long.add(max(rtt, _TINY))
        if long / short > 2:
            # Latency is back to normal after a long overload: pull the baseline
            # down now rather than waiting for the slow average to forget.
            self._long.value *= 0.9
        if inflight < self._estimate / 2:
            return  # the caller does not use the limit: no evidence to grow it
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        target = self._estimate * gradient + self.queue_size
        smoothed = self._estimate * (1 - self.smoothing) + target * self.smoothing
        self._estimate = max(self.min_limit, min(self.max_limit, smoothed))


def _log10(limit: float) -> int:
    return max(1, int(math.log10(max(limit, 1.0))))


class Vegas:
    """Netflix Vegas: estimated queue size against alpha/beta (pure; see the header).

    alpha, beta and threshold multiply log10(limit), as in the original.
    """

    __slots__ = (
        "_estimate",
        "_jitter",
        "_noload",
        "_probes",
        "_rng",
        "alpha",
        "beta",
        "max_limit",
        "min_limit",
        "probe_multiplier",
        "smoothing",
        "threshold",
    )

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        smoothing: float = 1.0,
        alpha: float = 3,
        beta: float = 6,
        threshold: float = 1,
        probe_multiplier: int = 30,
        rng: random.Random | None = None,
    ) -> None:
        _check_bounds(initial_limit, min_limit, max_limit)
        self.min_limit, self.max_limit, self.smoothing = min_limit, max_limit, smoothing
        self.alpha, self.beta, self.threshold = alpha, beta, threshold
        self.probe_multiplier = probe_multiplier
        self._rng = rng or random.Random()
        self._estimate = float(initial_limit)
        self._noload = 0.0
        self._probes = 0
        self._jitter = self._rng.uniform(0.5, 1.0)

    @property
    def limit(self) -> int:
        return int(self._estimate)

    @property
    def rtt_noload(self) -> float:
        return self._noload

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool = False) -> None:
        rtt = max(rtt, _TINY)
        self._probes += 1
        if self._probes >= self._jitter * self.probe_multiplier * self._estimate:
            # Re-probe the baseline: the least RTT may belong to a world that is gone.
            self._probes, self._jitter, self._noload = 0, self._rng.uniform(0.5, 1.0), rtt
            return
        if self._noload == 0 or rtt < self._noload:
            self._noload = rtt
            return
        target = self._target(rtt, inflight, dropped)
        if target is not None:
            target = max(self.min_limit, min(self.max_limit, target))
            self._estimate = (1 - self.smoothing) * self._estimate + self.smoothing * target

    def _target(self, rtt: float, inflight: int, dropped: bool) -> float | None:
        limit, log = self._estimate, _log10(self._estimate)
        if dropped:
            return limit - log
        if inflight * 2 < limit:
            return None  # the caller does not use the limit: no evidence to grow it
        queue = math.ceil(limit * (1 - self._noload / rtt))
        if queue <= self.threshold * log:
            return limit + self.beta * log
        if queue < self.alpha * log:
            return limit + log
        if queue > self.beta * log:
            return limit - log
        return None


def _percentile(samples: list[float], quantile: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


class GradientController:
    """Envoy's gradient controller: periodic min-RTT windows (pure; see the header)."""

    __slots__ = (
        "_at_min",
        "_deferred",
        "_limit",
        "_min_rtt",
        "_next_update",
        "_next_window",
        "_rng",
        "_samples",
        "_seen",
        "_window",
        "_window_start",
        "buffer",
        "jitter",
        "max_limit",
        "max_samples",
        "min_concurrency",
        "min_rtt_interval",
        "min_rtt_requests",
        "percentile",
        "update_interval",
    )

    def __init__(
        self,
        *,
        max_limit: int = 1000,
        update_interval: float | str = 0.1,
        percentile: float = 0.5,
        min_rtt_interval: float | str = 60.0,
        min_rtt_requests: int = 50,
        jitter: float = 0.15,
        min_concurrency: int = 3,
        buffer: float = 0.25,
        max_samples: int = 1024,
        rng: random.Random | None = None,
    ) -> None:
        _check_bounds(min_concurrency, min_concurrency, max_limit)
        if not 0 < percentile < 1 or min_rtt_requests < 1 or max_samples < 1:
            raise ValueError("need 0 < percentile < 1, min_rtt_requests >= 1, max_samples >= 1")
        self.max_limit, self.min_concurrency = max_limit, min_concurrency
        self.update_interval = seconds(update_interval)
        self.min_rtt_interval = seconds(min_rtt_interval)
        self.percentile = percentile
        self.min_rtt_requests = min_rtt_requests
        self.max_samples = max_samples
        self.jitter, self.buffer = jitter, buffer
        self._rng = rng or random.Random()
        self._limit = float(min_concurrency)
        self._deferred = float(min_concurrency)
        self._min_rtt = 0.0
        self._samples: list[float] = []
        self._seen = 0
        self._at_min = 0
        self._next_update = self._next_window = math.inf
        # Like Envoy, start by measuring the ideal latency.
        self._window: list[float] | None = []
        self._window_start = -math.inf

    @property
    def limit(self) -> int:
        return self.min_concurrency if self._window is not None else int(self._limit)

    @property
    def min_rtt(self) -> float:
        """The last measured ideal RTT (0 until the first window completes)."""
        return self._min_rtt

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool = False) -> None:
        rtt = max(rtt, _TINY)
        if self._window is not None:
            self._window_sample(now, rtt)
            return
        self._reservoir_add(rtt)
        if now >= self._next_update:
            self._update(now)
        if now >= self._next_window or self._at_min >= 5:
            self._open_window(now)

    def _window_sample(self, now: float, rtt: float) -> None:
        assert self._window is not None
        if now - rtt < self._window_start:
            return  # started under the old, higher limit: not an ideal-conditions sample
        self._window.append(rtt)
        if len(self._window) >= self.min_rtt_requests:
            self._min_rtt = _percentile(self._window, self.percentile)
            self._window = None
            self._limit = self._deferred
            self._samples.clear()
            self._seen = 0
            self._next_update = now + self.update_interval
            spread = 1.0 + self.jitter * self._rng.random()
            self._next_window = now + self.min_rtt_interval * spread

    def _open_window(self, now: float) -> None:
        self._deferred = self._limit
        self._window = []
        self._window_start = now
        self._at_min = 0

    def _reservoir_add(self, rtt: float) -> None:
        # Algorithm R: a uniform sample of the interval in bounded memory.
        self._seen += 1
        if len(self._samples) < self.max_samples:
            self._samples.append(rtt)
        else:
            slot = self._rng.randrange(self._seen)
            if slot < self.max_samples:
                self._samples[slot] = rtt

    def _update(self, now: float) -> None:
        self._next_update = now + self.update_interval
        if not self._samples:
            return
        sample_rtt = _percentile(self._samples, self.percentile)
        self._samples.clear()
        self._seen = 0
        ideal = self._min_rtt * (1.0 + self.buffer)
        scaled = self._limit * max(0.5, min(2.0, ideal / sample_rtt))
        new = int(scaled + math.sqrt(scaled))
        self._limit = float(max(self.min_concurrency, min(self.max_limit, new)))
        self._at_min = self._at_min + 1 if self._limit == self.min_concurrency else 0


class Windowed:
    """Feeds an algorithm one aggregate sample per window (Netflix's WindowedLimit).

    Per-request samples make Gradient2 and Vegas move the limit thousands of
    times a second, faster than latency can answer, so they oscillate. This
    wrapper averages the RTTs of a window (at least `window_size` samples,
    between `min_window` and `max_window` long, about two RTTs when that fits)
    and passes on the average, the highest inflight seen and whether anything
    dropped. Samples under `min_rtt` (cache hits, errors) are ignored.
    """

    __slots__ = (
        "_count",
        "_dropped",
        "_inflight",
        "_min",
        "_next",
        "_sum",
        "algorithm",
        "max_window",
        "min_rtt",
        "min_window",
        "window_size",
    )

    def __init__(
        self,
        algorithm: ConcurrencyLimit,
        *,
        min_window: float | str = 1.0,
        max_window: float | str = 1.0,
        window_size: int = 10,
        min_rtt: float | str = 100e-6,
    ) -> None:
        self.algorithm = algorithm
        self.min_window, self.max_window = seconds(min_window), seconds(max_window)
        if self.min_window > self.max_window or window_size < 1:
            raise ValueError("need min_window <= max_window and window_size >= 1")
        self.window_size, self.min_rtt = window_size, seconds(min_rtt)
        self._next = -math.inf
        self._sum, self._count, self._min = 0.0, 0, math.inf
        self._inflight, self._dropped = 0, False

    @property
    def limit(self) -> int:
        return self.algorithm.limit

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool = False) -> None:
        if rtt < self.min_rtt:
            return
        self._sum += rtt
        self._count += 1
        self._min = min(self._min, rtt)
        self._inflight = max(self._inflight, inflight)
        self._dropped = self._dropped or dropped
        if now > self._next:
            self._close(now)

    def _close(self, now: float) -> None:
        span = min(max(self._min * 2, self.min_window), self.max_window)
        self._next = now + span
        if self._count >= self.window_size:
            average = self._sum / self._count
            self.algorithm.on_sample(now, average, self._inflight, self._dropped)
        self._sum, self._count, self._min = 0.0, 0, math.inf
        self._inflight, self._dropped = 0, False


# -- admission -----------------------------------------------------------------


class ConcurrencyLimited(CrosswayError):
    """Refused because as many requests as the current limit are already in flight."""

    code = "concurrency_limited"
    status = 503  # the server is saturated; the client did nothing wrong


class Ticket:
    """One admitted request: when it started and how many were in flight with it."""

    __slots__ = ("done", "inflight", "start")

    def __init__(self, start: float, inflight: int) -> None:
        self.start = start
        self.inflight = inflight
        self.done = False


class AdaptiveLimiter:
    """Admits while inflight < algorithm.limit; completions feed the algorithm (pure)."""

    __slots__ = ("_inflight", "algorithm")

    def __init__(self, algorithm: ConcurrencyLimit) -> None:
        self.algorithm = algorithm
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def limit(self) -> int:
        return self.algorithm.limit

    def try_acquire(self, now: float) -> Ticket | None:
        """A ticket if there is room under the limit, else None (nothing changes)."""
        if self._inflight >= self.algorithm.limit:
            return None
        self._inflight += 1
        return Ticket(now, self._inflight)

    def release(self, ticket: Ticket, now: float, *, dropped: bool = False) -> None:
        """The request finished at `now`: free its slot and record its RTT."""
        if self._finish(ticket):
            self.algorithm.on_sample(now, now - ticket.start, ticket.inflight, dropped)

    def ignore(self, ticket: Ticket) -> None:
        """The request finished in a way that says nothing about latency: free it only."""
        self._finish(ticket)

    def _finish(self, ticket: Ticket) -> bool:
        if ticket.done:
            return False
        ticket.done = True
        self._inflight -= 1
        return True


class Permit:
    """A held slot; leaving the `with` / `async with` block releases it."""

    __slots__ = ("_guard", "ticket")

    def __init__(self, guard: ConcurrencyGuard, ticket: Ticket) -> None:
        self._guard = guard
        self.ticket = ticket

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self._guard.finish(self.ticket, error)

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self._guard.finish(self.ticket, error)


class ConcurrencyGuard:
    """Thread-safe front for an AdaptiveLimiter with a real clock.

    `with guard.admit():` / `async with guard.admit():`, `@guard.wrap`,
    `@guard.wrap_async`. A normal exit records the RTT; an exception in
    `dropped_on` (default TimeoutError) records a drop; any other exception,
    cancellation included, frees the slot without a sample, since a fast
    failure says nothing about the service's latency.
    """

    __slots__ = ("_clock", "_dropped_on", "_lock", "limiter")

    def __init__(
        self,
        limiter: AdaptiveLimiter,
        *,
        clock: Clock | None = None,
        dropped_on: tuple[type[BaseException], ...] = (TimeoutError,),
    ) -> None:
        self.limiter = limiter
        self._clock: Clock = clock or SystemClock()
        self._dropped_on = dropped_on
        self._lock = threading.Lock()

    def admit(self) -> Permit:
        """A permit, or raises ConcurrencyLimited when the limit is reached."""
        with self._lock:
            ticket = self.limiter.try_acquire(self._clock.now())
        if ticket is None:
            raise ConcurrencyLimited("concurrency limit reached", limit=self.limiter.limit)
        return Permit(self, ticket)

    def finish(self, ticket: Ticket, error: BaseException | None = None) -> None:
        """Release `ticket` as the outcome `error` (None for success) says."""
        with self._lock:
            if error is None:
                self.limiter.release(ticket, self._clock.now())
            elif isinstance(error, self._dropped_on):
                self.limiter.release(ticket, self._clock.now(), dropped=True)
            else:
                self.limiter.ignore(ticket)

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function: admit (or raise ConcurrencyLimited), call, release."""

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            with self.admit():
                return fn(*args, **kwargs)

        return guarded

    def wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate a coroutine function the same way."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            async with self.admit():
                return await fn(*args, **kwargs)

        return guarded
