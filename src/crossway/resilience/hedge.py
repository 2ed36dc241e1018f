# Hedged requests: when an answer is late, ask again elsewhere and take
# whichever answer comes first ("The Tail at Scale", Dean & Barroso, 2013).
#
# Theory of operation
# -------------------
# `HedgePolicy` (pure) decides *when* to hedge: after a fixed `delay`, or after
# the `percentile` of recent attempt latencies (a CountWindow histogram) once
# `min_samples` have been seen - hedging at p95 costs about 5 % extra load and
# cuts the tail. An optional budget (budget.py) caps hedges as a share of
# requests, so hedging cannot double the load on a struggling backend.
#
# `hedged(fn, policy)` (asyncio) drives it:
#   1. start attempt 1;
#   2. wait for the first completion or the hedge delay, whichever is first;
#   3. on the delay, start another attempt (up to `max_hedges`) if the budget
#      allows; a failed attempt also triggers the next hedge at once;
#   4. the first *successful* answer wins; every other attempt is cancelled
#      and awaited before `hedged` returns, so no loser outlives the call.
#   If every attempt fails, the last failure is raised.
#
# Invariants
# ----------
# - at most 1 + max_hedges attempts per call;
# - when `hedged` returns or raises, no attempt it started is still running;
# - cancelling the caller cancels every attempt and propagates CancelledError.
#
# Hedging is async only: a thread cannot be cancelled, so a sync "loser"
# would keep running.

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from crossway.core.clock import Clock, SystemClock
from crossway.resilience.budget import Budget
from crossway.resilience.window import CountWindow

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class HedgePolicy:
    """When to send a hedge; pure and thread-safe."""

    def __init__(
        self,
        *,
        delay: float = 0.05,
        percentile: float | None = None,
        min_samples: int = 20,
        window_size: int = 1000,
        max_hedges: int = 1,
        budget: Budget | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not delay >= 0 or max_hedges < 0 or min_samples < 1:
            raise ValueError("delay >= 0, max_hedges >= 0 and min_samples >= 1 are required")
        if percentile is not None and not 0 < percentile < 1:
            raise ValueError("percentile must be within (0, 1), e.g. 0.95")
        self.delay = delay
        self.percentile = percentile
        self.min_samples = min_samples
        self.max_hedges = max_hedges
        self.budget = budget
        self.clock = clock or SystemClock()
        self._latencies = CountWindow(window_size)
        self._lock = threading.Lock()

    def hedge_delay(self) -> float:
        """Seconds to wait for an attempt before hedging it: the latency
        percentile once enough samples exist, else the fixed delay."""
        if self.percentile is None:
            return self.delay
        with self._lock:
            if self._latencies.calls < self.min_samples:
                return self.delay
            value = self._latencies.percentile(self.percentile)
        return self.delay if value is None else value

    def record(self, latency: float) -> None:
        """Feed the latency of a successful attempt."""
        with self._lock:
            self._latencies.record(0, latency)

    def may_hedge(self) -> bool:
        """Ask the budget (if any) for one hedge."""
        return self.budget is None or self.budget.try_retry(self.clock.now())


async def _cancel_all(attempts: set[asyncio.Future[Any]]) -> None:
    """Cancel and await attempts; their results and errors are dropped."""
    for attempt in attempts:
        attempt.cancel()
    if attempts:
        await asyncio.wait(attempts)


def _failure(attempt: asyncio.Future[Any]) -> BaseException | None:
    """The failure of a finished attempt, None if it succeeded."""
    return asyncio.CancelledError() if attempt.cancelled() else attempt.exception()


async def hedged(fn: Callable[[], Awaitable[T]], policy: HedgePolicy) -> T:
    """Await `fn()` with hedging; the first successful answer wins.

    Returns the winner's result; raises the last failure if all attempts
    fail. Losers are cancelled and awaited before this returns. Cancelling
    the caller cancels all attempts and re-raises CancelledError.
    """
    clock, budget = policy.clock, policy.budget
    if budget is not None:
        budget.on_request()
    started: dict[asyncio.Future[Any], float] = {}

    def launch() -> asyncio.Future[Any]:
        attempt = asyncio.ensure_future(fn())
        started[attempt] = clock.now()
        return attempt

    pending = {launch()}
    hedges_left, last_error = policy.max_hedges, None
    try:
        while pending:
            timeout = policy.hedge_delay() if hedges_left else None
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for attempt in done:
                error = _failure(attempt)
                if error is None:
                    policy.record(clock.now() - started[attempt])
                    return cast(T, attempt.result())
                last_error = error
            # Late (timeout) or failed (done): hedge now, if allowed.
            if hedges_left and policy.may_hedge():
                hedges_left -= 1
                pending.add(launch())
            else:
                hedges_left = 0  # out of hedges, or the budget said no: stop asking
        assert last_error is not None
        raise last_error
    finally:
        await _cancel_all({a for a in started if not a.done()})
        if budget is not None:
            for _ in range(len(started) - 1):
                budget.on_retry_done()
            budget.on_request_done()


class Hedge:
    """Decorator form of `hedged` for async functions."""

    def __init__(self, policy: HedgePolicy | None = None) -> None:
        self.policy = policy or HedgePolicy()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        async def hedging(*args: Any, **kwargs: Any) -> Any:
            return await hedged(lambda: fn(*args, **kwargs), self.policy)

        return cast(F, hedging)
