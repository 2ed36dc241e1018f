# Retries: try again after a failure, a bounded number of times, waiting a
# jittered exponential backoff between attempts.
#
# Theory of operation
# -------------------
# `RetryPolicy` is the pure part: given how many attempts were made, how long
# the call has taken, how much of the deadline is left and the previous delay,
# `next_delay` answers "wait this long, then try again" or "give up". It never
# sleeps. `Retry` is the thin driver for sync and async callers: it runs the
# attempts, asks the policy, asks the optional budget (budget.py) for each
# retry, and sleeps with an injectable sleep function.
#
# What is retried: an exception that is an `Exception`, an instance of
# `retry_on` and not of `abort_on`; or a result for which `retry_if_result` is
# true or whose status (classify.status_of) is in `retry_on_statuses`.
#
# Rule 1: asyncio.CancelledError, KeyboardInterrupt, SystemExit and
#         GeneratorExit are never caught, whatever `retry_on` says; they
#         propagate at once from an attempt or from a backoff sleep (tenacity
#         issue #529 is the bug this rule prevents).
# Rule 2: a retry never starts after the current deadline (deadline.py) and
#         never sleeps into it: if the next delay would reach the deadline, the
#         retry gives up instead.
# Rule 3: on giving up, the last exception is re-raised unchanged, or the last
#         result is returned (the caller sees the final 503 itself).
# Rule 4: every retry the budget grants is handed back (on_retry_done) when its
#         attempt ends, however it ends; on_request/on_request_done bracket
#         the whole call.
#
# `attempt_timeout` runs each attempt inside a deadline_scope: the callee sees
# the shrunken deadline; async attempts are also cancelled at it and raise
# DeadlineExceeded (a TimeoutError), which is retried like any Exception
# unless `abort_on` lists it.

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from crossway.core.clock import Clock, SystemClock
from crossway.resilience.backoff import Backoff, Jitter
from crossway.resilience.budget import Budget
from crossway.resilience.classify import ExceptionTypes, status_of
from crossway.resilience.deadline import deadline_scope, remaining_time

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When to retry and how long to wait; pure."""

    max_attempts: int | None = 3
    max_elapsed: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: ExceptionTypes = (Exception,)
    abort_on: ExceptionTypes = ()
    retry_if_result: Callable[[Any], bool] | None = None
    retry_on_statuses: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None for no limit)")
        if self.max_elapsed is not None and not self.max_elapsed >= 0:
            raise ValueError("max_elapsed must not be negative")

    @property
    def checks_results(self) -> bool:
        return self.retry_if_result is not None or bool(self.retry_on_statuses)

    def retryable_exception(self, exc: BaseException) -> bool:
        """Whether an attempt that raised `exc` may be retried (Rule 1 first)."""
        return (
            isinstance(exc, Exception)
            and isinstance(exc, self.retry_on)
            and not isinstance(exc, self.abort_on)
        )

    def retryable_result(self, value: object) -> bool:
        """Whether an attempt that returned `value` should be retried."""
        if self.retry_if_result is not None and self.retry_if_result(value):
            return True
        return bool(self.retry_on_statuses) and status_of(value) in self.retry_on_statuses

    def next_delay(
        self,
        attempts: int,
        *,
        elapsed: float,
        remaining: float | None = None,
        previous: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        `attempts` made so far (>= 1), `elapsed` seconds since the first began,
        `remaining` seconds before the deadline (None: no deadline).
        """
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return None
        delay = self.backoff.delay(attempts - 1, previous=previous, rand=rand)
        if self.max_elapsed is not None and elapsed + delay > self.max_elapsed:
            return None
        if remaining is not None and delay >= remaining:
            return None
        return delay


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Handed to `on_retry` before each backoff sleep."""

    attempt: int  # the attempt that just failed, from 1
    delay: float
    exception: Exception | None
    result: Any


_Outcome = tuple[Exception | None, Any]


class Retry:
    """Runs a callable with retries; usable as a decorator for def and async def.

    Thread-safe and task-safe: it keeps no per-call state on the object.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        budget: Budget | None = None,
        attempt_timeout: float | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.budget = budget
        self.attempt_timeout = attempt_timeout
        self._on_retry = on_retry
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._rand = rand
        self._checks = self.policy.checks_results
        # Without a budget or per-attempt timeout the first attempt runs inline.
        self._plain = budget is None and attempt_timeout is None
        # time.monotonic is what SystemClock.now returns; binding it skips a call layer.
        self._now = time.monotonic if type(self._clock) is SystemClock else self._clock.now

    def _next_delay(self, attempts: int, start: float, previous: float | None) -> float | None:
        now = self._now()
        delay = self.policy.next_delay(
            attempts,
            elapsed=now - start,
            remaining=remaining_time(),
            previous=previous,
            rand=self._rand,
        )
        if delay is None or (self.budget is not None and not self.budget.try_retry(now)):
            return None
        return delay

    def _again(self, outcome: _Outcome) -> bool:
        exc, result = outcome
        return exc is not None or (self._checks and self.policy.retryable_result(result))

    def _notify(self, attempt: int, delay: float, outcome: _Outcome) -> None:
        if self._on_retry is not None:
            self._on_retry(RetryEvent(attempt, delay, outcome[0], outcome[1]))

    @staticmethod
    def _unwrap(outcome: _Outcome) -> Any:
        if outcome[0] is not None:
            raise outcome[0]
        return outcome[1]

    # -- sync -----------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call `fn(*args, **kwargs)`, retrying per the policy.

        Returns the first result not to be retried, or the last result when
        giving up; re-raises the last exception when giving up; a
        non-retryable exception (and any BaseException) propagates at once.
        """
        if not self._plain:
            return cast(T, self._call_budgeted(fn, args, kwargs))
        # The first attempt inline: on success this is all a retry costs.
        start = self._now()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not self.policy.retryable_exception(exc):
                raise
            return cast(T, self._retry_sync(fn, args, kwargs, start, (exc, None)))
        if self._checks and self.policy.retryable_result(result):
            return cast(T, self._retry_sync(fn, args, kwargs, start, (None, result)))
        return result

    def _call_budgeted(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        budget = self.budget
        if budget is not None:
            budget.on_request()
        try:
            start = self._now()
            return self._retry_sync(fn, args, kwargs, start, self._once_sync(fn, args, kwargs))
        finally:
            if budget is not None:
                budget.on_request_done()

    def _once_sync(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> _Outcome:
        try:
            if self.attempt_timeout is None:
                return None, fn(*args, **kwargs)
            with deadline_scope(self.attempt_timeout, clock=self._clock):
                return None, fn(*args, **kwargs)
        except Exception as exc:
            if not self.policy.retryable_exception(exc):
                raise
            return exc, None

    def _retry_sync(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, start: float, outcome: _Outcome
    ) -> Any:
        """Retry after the first attempt's `outcome` until done or out of tries."""
        attempts, previous = 1, None
        while self._again(outcome):
            delay = self._next_delay(attempts, start, previous)
            if delay is None:
                break
            try:
                self._notify(attempts, delay, outcome)
                self._sleep(delay)
                outcome = self._once_sync(fn, args, kwargs)
            finally:
                if self.budget is not None:
                    self.budget.on_retry_done()
            attempts, previous = attempts + 1, delay
        return self._unwrap(outcome)

    # -- async ------------------------------------------------------------------------

    async def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await `fn(*args, **kwargs)`, retrying per the policy (as `call`).

        Cancellation of the awaiting task propagates at once, from an attempt
        or from a backoff sleep, and is never retried.
        """
        if not self._plain:
            return cast(T, await self._call_budgeted_async(fn, args, kwargs))
        start = self._now()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self.policy.retryable_exception(exc):
                raise
            return cast(T, await self._retry_async(fn, args, kwargs, start, (exc, None)))
        if self._checks and self.policy.retryable_result(result):
            return cast(T, await self._retry_async(fn, args, kwargs, start, (None, result)))
        return result

    async def _call_budgeted_async(
        self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        budget = self.budget
        if budget is not None:
            budget.on_request()
        try:
            start = self._now()
            outcome = await self._once_async(fn, args, kwargs)
            return await self._retry_async(fn, args, kwargs, start, outcome)
        finally:
            if budget is not None:
                budget.on_request_done()

    async def _once_async(
        self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> _Outcome:
        try:
            if self.attempt_timeout is None:
                return None, await fn(*args, **kwargs)
            async with deadline_scope(self.attempt_timeout, clock=self._clock):
                return None, await fn(*args, **kwargs)
        except Exception as exc:
            if not self.policy.retryable_exception(exc):
                raise
            return exc, None

    async def _retry_async(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: Any,
        kwargs: Any,
        start: float,
        outcome: _Outcome,
    ) -> Any:
        attempts, previous = 1, None
        while self._again(outcome):
            delay = self._next_delay(attempts, start, previous)
            if delay is None:
                break
            try:
                self._notify(attempts, delay, outcome)
                await self._async_sleep(delay)
                outcome = await self._once_async(fn, args, kwargs)
            finally:
                if self.budget is not None:
                    self.budget.on_retry_done()
            attempts, previous = attempts + 1, delay
        return self._unwrap(outcome)

    # -- decorator ----------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate a def or async def function with these retries."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def retried_async(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(fn, *args, **kwargs)

            return cast(F, retried_async)

        @functools.wraps(fn)
        def retried(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return cast(F, retried)


def retry(
    *,
    max_attempts: int | None = 3,
    max_elapsed: float | None = None,
    base: float = 0.1,
    cap: float = 10.0,
    jitter: Jitter = Jitter.FULL,
    retry_on: ExceptionTypes = (Exception,),
    abort_on: ExceptionTypes = (),
    retry_if_result: Callable[[Any], bool] | None = None,
    retry_on_statuses: frozenset[int] | set[int] | tuple[int, ...] = (),
    budget: Budget | None = None,
    attempt_timeout: float | None = None,
    on_retry: Callable[[RetryEvent], None] | None = None,
    clock: Clock | None = None,
) -> Retry:
    """A `Retry` from flat options: `@retry(max_attempts=5, retry_on=(OSError,))`."""
    policy = RetryPolicy(
        max_attempts=max_attempts,
        max_elapsed=max_elapsed,
        backoff=Backoff(base=base, cap=cap, jitter=jitter),
        retry_on=retry_on,
        abort_on=abort_on,
        retry_if_result=retry_if_result,
        retry_on_statuses=frozenset(retry_on_statuses),
    )
    return Retry(
        policy, budget=budget, attempt_timeout=attempt_timeout, on_retry=on_retry, clock=clock
    )
