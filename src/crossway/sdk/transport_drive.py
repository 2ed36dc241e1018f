"""The drivers of one call through a `ServiceStack`: deadline, bulkhead,
circuit breaker, the retry loop and each attempt, folded once per stack into
one function for async and one for blocking sends.

Theory of operation
-------------------
    deadline (policy timeout, or the caller's deadline_scope)
      -> bulkhead -> circuit breaker (judges whole calls)
        -> retry loop (budget; backoff with jitter; another instance per try)
          -> attempt (per-try timeout): prepare, send on the shared inner
             transport, record the outcome.

The first try runs inline; only a failed one enters the retry loop. The
budget earns a deposit from every call and is asked last, so a retry that
would not happen anyway spends nothing. Blocking sends get the same stack;
their deadlines are cooperative (they shrink each attempt's timeouts and stop
retries).

Invariants
----------
- Cancellation is never swallowed: it ends the balancer call, releases the
  breaker permit and bulkhead slot, closes any response held for a retry,
  and propagates.
- A response that is not returned to the caller is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from crossway.resilience import RetryPolicy, deadline_scope
from crossway.sdk.transport_stack import CallState, ServiceStack

# -- async -----------------------------------------------------------------------------


def fold_async(
    stack: ServiceStack, send: Callable[[Any], Awaitable[Any]]
) -> Callable[[Any], Awaitable[Any]]:
    """The call function of `stack` over an async `send`; see the module header."""
    # Bound once: these closures are the per-attempt hot path.
    prepare, answered, failed = stack.prepare, stack.answered, stack.failed
    observe = stack.observe if stack.telemetry is not None else None

    async def attempt(call: CallState) -> Any:
        held = call.response
        if held is not None:
            call.response = None
            await held.aclose()
        endpoint, lb_call = prepare(call)
        try:
            response = await send(call.request)
        except BaseException as exc:
            failed(endpoint, lb_call, exc)
            if observe is not None:
                observe(call, endpoint, 0, exc)
            raise
        answered(endpoint, lb_call, response.status_code)
        if observe is not None:
            observe(call, endpoint, response.status_code, None)
        call.response = response
        return response

    per_try = stack.retries.per_try_timeout if stack.retries is not None else None
    if per_try is not None:
        bare = attempt

        async def attempt(call: CallState) -> Any:
            async with deadline_scope(per_try):
                return await bare(call)

    guarded = _retrying_async(stack, attempt, None if per_try is not None else send)
    if stack.breaker is not None:
        guarded = stack.breaker(guarded)
    if stack.bulkhead is not None:
        guarded = stack.bulkhead(guarded)
    return _entry_async(stack, guarded)


def _retrying_async(
    stack: ServiceStack,
    attempt: Callable[[CallState], Awaitable[Any]],
    send: Callable[[Any], Awaitable[Any]] | None,
) -> Callable[[CallState], Awaitable[Any]]:
    """The retry loop over `attempt`. Given `send` (no per-try timeout,
    whose scope must cover a whole attempt), the first try runs in the
    loop's own frame: one coroutine less to create, and to pass through on
    every wake-up of the exchange."""
    budget = stack.retries.budget if stack.retries is not None else None
    now = stack.now
    prepare, answered, failed = stack.prepare, stack.answered, stack.failed
    observe = stack.observe if stack.telemetry is not None else None

    async def attempts(call: CallState) -> Any:
        policy = call.retry
        start = now()
        if budget is not None:
            budget.deposit(start)  # every call earns its share of retries
        if policy is None:
            return await attempt(call)
        try:
            response = await attempt(call)
        except Exception as exc:
            if not policy.retryable_exception(exc):
                raise
            return await again(call, policy, start, exc)
        if response.status_code in policy.retry_on_statuses:
            return await again(call, policy, start, None)
        return response

    async def attempts_first_inline(call: CallState) -> Any:
        # `attempts` with `attempt` written out for the first try (a fresh
        # call holds no earlier response to close).
        policy = call.retry
        start = now()
        if budget is not None:
            budget.deposit(start)
        try:
            endpoint, lb_call = prepare(call)
            try:
                response = await sent(call.request)
            except BaseException as exc:
                failed(endpoint, lb_call, exc)
                if observe is not None:
                    observe(call, endpoint, 0, exc)
                raise
        except Exception as exc:
            if policy is None or not policy.retryable_exception(exc):
                raise
            return await again(call, policy, start, exc)
        status = response.status_code
        answered(endpoint, lb_call, status)
        if observe is not None:
            observe(call, endpoint, status, None)
        call.response = response
        if policy is not None and status in policy.retry_on_statuses:
            return await again(call, policy, start, None)
        return response

    async def again(
        call: CallState, policy: RetryPolicy, start: float, exc: Exception | None
    ) -> Any:
        # The slow path: every try after the first failed one.
        tries, previous = 1, None
        while (delay := stack.next_delay(policy, tries, start, previous)) is not None:
            await asyncio.sleep(delay)
            tries, previous = tries + 1, delay
            try:
                response = await attempt(call)
            except Exception as failure:
                if not policy.retryable_exception(failure):
                    raise
                exc = failure
                continue
            exc = None
            if response.status_code not in policy.retry_on_statuses:
                return response
        if exc is not None:
            raise exc
        return call.response  # the last answer, given up on

    if send is None:
        return attempts
    sent = send
    return attempts_first_inline


def _entry_async(
    stack: ServiceStack, guarded: Callable[[CallState], Awaitable[Any]]
) -> Callable[[Any], Awaitable[Any]]:
    timeout, begin, end = stack.timeout, stack.begin_call, stack.end_call

    async def call_service(request: Any) -> Any:
        call = begin(request)
        try:
            if timeout is None:
                return await guarded(call)
            async with deadline_scope(timeout):
                return await guarded(call)
        except BaseException:
            held, call.response = call.response, None
            if held is not None:
                await held.aclose()
            raise
        finally:
            end(call)

    return call_service


# -- sync ------------------------------------------------------------------------------


def fold_sync(stack: ServiceStack, send: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """As `fold_async`, for a blocking `send` (deadlines are cooperative:
    they shrink each attempt's timeouts and stop retries)."""
    prepare, answered, failed = stack.prepare, stack.answered, stack.failed
    observe = stack.observe if stack.telemetry is not None else None
    per_try = stack.retries.per_try_timeout if stack.retries is not None else None

    def attempt(call: CallState) -> Any:
        held = call.response
        if held is not None:
            call.response = None
            held.close()
        if per_try is not None:
            with deadline_scope(per_try):
                return sent(call)
        return sent(call)

    def sent(call: CallState) -> Any:
        endpoint, lb_call = prepare(call)
        try:
            response = send(call.request)
        except BaseException as exc:
            failed(endpoint, lb_call, exc)
            if observe is not None:
                observe(call, endpoint, 0, exc)
            raise
        answered(endpoint, lb_call, response.status_code)
        if observe is not None:
            observe(call, endpoint, response.status_code, None)
        call.response = response
        return response

    guarded = _retrying_sync(stack, attempt)
    if stack.breaker is not None:
        guarded = stack.breaker(guarded)
    if stack.bulkhead is not None:
        guarded = stack.bulkhead(guarded)
    timeout, begin, end = stack.timeout, stack.begin_call, stack.end_call

    def call_service(request: Any) -> Any:
        call = begin(request)
        try:
            if timeout is None:
                return guarded(call)
            with deadline_scope(timeout):
                return guarded(call)
        except BaseException:
            held, call.response = call.response, None
            if held is not None:
                held.close()
            raise
        finally:
            end(call)

    return call_service


def _retrying_sync(
    stack: ServiceStack, attempt: Callable[[CallState], Any]
) -> Callable[[CallState], Any]:
    budget = stack.retries.budget if stack.retries is not None else None
    now = stack.now

    def attempts(call: CallState) -> Any:
        policy = call.retry
        start = now()
        if budget is not None:
            budget.deposit(start)
        if policy is None:
            return attempt(call)
        tries, previous = 1, None
        exc: Exception | None = None
        while True:
            try:
                response = attempt(call)
            except Exception as failure:
                if not policy.retryable_exception(failure):
                    raise
                exc = failure
            else:
                exc = None
                if response.status_code not in policy.retry_on_statuses:
                    return response
            delay = stack.next_delay(policy, tries, start, previous)
            if delay is None:
                break
            time.sleep(delay)
            tries, previous = tries + 1, delay
        if exc is not None:
            raise exc
        return call.response

    return attempts
