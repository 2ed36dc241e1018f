# The shared shape of every rate limiter, and the thin fronts that do the I/O.
#
# Theory of operation
# -------------------
# A rate limiter is a pure object: `try_acquire(now, permits) -> Decision`. It
# never reads a clock, never sleeps and never blocks; `now` is monotonic
# seconds supplied by the caller. The decision says one of three things:
#
#   allowed, wait == 0   go ahead now;
#   allowed, wait > 0    the permits are reserved, go ahead after `wait`
#                        seconds (a queueing limiter paces callers this way);
#   not allowed          nothing was reserved; a request of the same size can
#                        succeed after `wait` seconds (`retry_after`).
#
# `SyncLimiter` and `AsyncLimiter` put a clock, a lock and a sleep around a
# pure limiter. The lock covers only the call into the pure object (a few
# hundred nanoseconds), never a sleep and never the protected call.
#
# Invariants
# ----------
# 1. A pure limiter's state changes only inside `try_acquire`, and only by
#    reserving exactly the permits of an allowed decision.
# 2. A denied decision reserves nothing.
# 3. Decisions are immutable values; the common ones are shared.
# 4. Every `try_acquire` is O(1) in time and memory.
#
# Rates are permits per second; token bucket and GCRA count time in integer
# nanoseconds (`now` rounded to the nearest one, so that a caller who comes
# back exactly `retry_after` later is on time) so that they are exact and
# agree with each other, and round the interval between permits up so they
# never exceed the configured rate.

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.core.errors import CrosswayError

P = ParamSpec("P")
R = TypeVar("R")

NS_PER_S = 1_000_000_000


class Decision(NamedTuple):
    """The answer of a limiter to one request for permits."""

    allowed: bool
    wait: float = 0.0
    """Allowed: seconds to wait before proceeding. Denied: the retry-after."""
    remaining: int = 0
    """Permits that could still be taken right now without waiting."""

    @property
    def retry_after(self) -> float:
        """Seconds until a request of the same size can succeed (0 if allowed)."""
        return 0.0 if self.allowed else self.wait


# tuple.__new__ skips NamedTuple's Python-level constructor: three times faster
# on the hot path, and the result is the same immutable value.
new_decision = tuple.__new__

# Allowed-without-waiting decisions differ only by `remaining`; sharing them
# saves an allocation on the common path.
ALLOWED_TABLE_SIZE = 1024
ALLOWED: tuple[Decision, ...] = tuple(Decision(True, 0.0, r) for r in range(ALLOWED_TABLE_SIZE))


def allowed(remaining: int) -> Decision:
    """An allowed, no-wait decision (shared when `remaining` is small)."""
    if remaining < ALLOWED_TABLE_SIZE:
        return ALLOWED[remaining]
    return new_decision(Decision, (True, 0.0, remaining))


class RateLimiter(Protocol):
    """A pure rate limiter: decisions from the time the caller supplies."""

    def try_acquire(self, now: float, permits: int = 1) -> Decision: ...


class RateLimited(CrosswayError):
    """A request was refused by a rate limiter; retry after `retry_after` seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str = "rate limit exceeded", *, retry_after: float) -> None:
        super().__init__(message, retry_after=round(retry_after, 6))
        self.retry_after = retry_after


# -- parameters ---------------------------------------------------------------


def parse_rate(rate: float | str) -> float:
    """Permits per second from a number or from text like "100/s", "5/m", "10/500ms".

    Raises ValueError for anything that is not a positive finite rate.
    """
    try:
        value = _rate_from_text(rate) if isinstance(rate, str) else float(rate)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"not a rate: {rate!r} (use e.g. 100, '100/s', '5/m')")
    return value


def _rate_from_text(text: str) -> float:
    count, sep, per = text.strip().partition("/")
    per = per.strip()
    if not sep:
        return float(count)
    if not per:
        return math.nan
    # "100/s" means one second: give a bare unit its implicit 1.
    period = parse_duration(per if per[:1].isdigit() or per[:1] == "." else "1" + per)
    return float(count) / period if period > 0 else math.nan


def interval_ns(rate: float) -> int:
    """Nanoseconds between permits, rounded up so the rate is never exceeded."""
    return max(1, math.ceil(NS_PER_S / rate))


def default_burst(rate: float) -> int:
    """One second's worth of permits (Guava's SmoothBursty default), at least 1."""
    return max(1, math.ceil(rate))


def check_burst(burst: int) -> int:
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(f"burst must be a positive integer, not {burst!r}")
    return burst


def seconds(value: float | str) -> float:
    """A duration parameter in seconds ("500ms", "2s" or a number)."""
    return parse_duration(value)


def too_many(permits: int, most: int) -> ValueError:
    if permits < 1:
        return ValueError(f"permits must be at least 1, not {permits}")
    return ValueError(f"{permits} permits can never be granted at once (at most {most})")


# -- blocking and async fronts --------------------------------------------------


def clock_reader(clock: Clock | None) -> Callable[[], float]:
    """The fastest way to read `clock`: time.monotonic itself for the system clock,
    which saves a Python call on every decision."""
    if clock is None or type(clock) is SystemClock:
        return time.monotonic
    return clock.now


class SyncLimiter:
    """A pure limiter behind a lock, with a clock and a real sleep.

    Use it as `limiter.acquire()`, `with limiter:` or `@limiter`.
    """

    __slots__ = ("_core", "_decide", "_enter", "_exit", "_now", "_sleep")

    def __init__(
        self,
        core: RateLimiter,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._core = core
        self._decide = core.try_acquire
        self._now = clock_reader(clock)
        self._sleep = sleep
        # Bound acquire/release: cheaper than `with` on the hot path (no __exit__ call).
        lock = threading.Lock()
        self._enter, self._exit = lock.acquire, lock.release

    @property
    def core(self) -> RateLimiter:
        return self._core

    def try_acquire(self, permits: int = 1) -> Decision:
        """Decide now; never waits. The caller honours a positive `wait` itself."""
        self._enter()
        try:
            return self._decide(self._now(), permits)
        finally:
            self._exit()

    def acquire(self, permits: int = 1) -> Decision:
        """Take permits, sleeping out a queueing limiter's wait.

        Raises RateLimited (nothing reserved) when the limiter refuses. If the
        sleep is interrupted (KeyboardInterrupt), the reserved permits stay spent.
        """
        decision = self.try_acquire(permits)
        if not decision.allowed:
            raise RateLimited(retry_after=decision.wait)
        if decision.wait > 0:
            self._sleep(decision.wait)
        return decision

    def __enter__(self) -> Decision:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate `fn` so each call first acquires one permit (or raises RateLimited)."""

        @functools.wraps(fn)
        def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            self.acquire()
            return fn(*args, **kwargs)

        return limited


class AsyncLimiter:
    """A pure limiter for asyncio callers: `await limiter.acquire()`, `async with`, `@limiter`.

    The lock is a threading lock held only around the pure call, so the same
    core can serve threads and the event loop at once without blocking either.
    """

    __slots__ = ("_core", "_decide", "_enter", "_exit", "_now", "_sleep")

    def __init__(
        self,
        core: RateLimiter,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._core = core
        self._decide = core.try_acquire
        self._now = clock_reader(clock)
        self._sleep = sleep
        # Bound acquire/release: cheaper than `with` on the hot path (no __exit__ call).
        lock = threading.Lock()
        self._enter, self._exit = lock.acquire, lock.release

    @property
    def core(self) -> RateLimiter:
        return self._core

    def try_acquire(self, permits: int = 1) -> Decision:
        """Decide now; never waits."""
        self._enter()
        try:
            return self._decide(self._now(), permits)
        finally:
            self._exit()

    async def acquire(self, permits: int = 1) -> Decision:
        """Take permits, awaiting a queueing limiter's wait.

        Raises RateLimited (nothing reserved) when the limiter refuses. If the
        task is cancelled while it waits, CancelledError propagates and the
        reserved permits stay spent: the limiter errs towards admitting less.
        """
        decision = self.try_acquire(permits)
        if not decision.allowed:
            raise RateLimited(retry_after=decision.wait)
        if decision.wait > 0:
            await self._sleep(decision.wait)
        return decision

    async def __aenter__(self) -> Decision:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate a coroutine function so each call first acquires one permit."""

        @functools.wraps(fn)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            await self.acquire()
            return await fn(*args, **kwargs)

        return limited
