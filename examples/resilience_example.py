"""A tour of crossway.resilience: breakers, retries, budgets, bulkheads,
deadlines and hedging, each guarding a small fake dependency.

Run it: `.venv/bin/python examples/resilience_example.py` (about a second).
"""

from __future__ import annotations

import asyncio
import random

from crossway.core.clock import VirtualClock
from crossway.resilience.breaker import BreakerConfig, CircuitBreaker, StateTransition
from crossway.resilience.budget import RetryBudget
from crossway.resilience.bulkhead import Bulkhead, BulkheadFullError
from crossway.resilience.consecutive import ConsecutiveBreaker
from crossway.resilience.deadline import (
    Deadline,
    DeadlineExceeded,
    deadline_scope,
    parse_grpc_timeout,
    remaining_time,
)
from crossway.resilience.guard import CircuitOpenError
from crossway.resilience.hedge import HedgePolicy, hedged
from crossway.resilience.retry import RetryEvent, retry


class Unavailable(Exception):
    """What our fake dependency raises when it is down."""


def failure_rate_breaker() -> None:
    print("-- CircuitBreaker: trips at 50 % failures over the last 10 calls")
    clock = VirtualClock()  # virtual time: the 30 s open wait takes no real time
    config = BreakerConfig(
        sliding_window_size=10,
        minimum_number_of_calls=5,
        wait_duration_in_open_state=30.0,
        permitted_number_of_calls_in_half_open_state=2,
    )
    breaker = CircuitBreaker("inventory", config, clock=clock)

    def show(event: StateTransition) -> None:
        change = f"{event.from_state.value} -> {event.to_state.value}"
        print(f"   t={event.at:5.1f}s {change}: {event.reason}")

    breaker.add_listener(show)
    healthy = False

    @breaker
    def stock_level(sku: str) -> int:
        if not healthy:
            raise Unavailable(sku)
        return 7

    for _ in range(6):
        try:
            stock_level("sku-1")
        except Unavailable:
            pass
        except CircuitOpenError as exc:
            print(f"   rejected without calling: retry after {exc.details['retry_after']:.0f}s")
    clock.advance(30)
    healthy = True
    print(f"   probe answers {stock_level('sku-1')}, then {stock_level('sku-1')}")


def consecutive_breaker() -> None:
    print("-- ConsecutiveBreaker: pybreaker's fail_max / reset_timeout, as a decorator")
    breaker = ConsecutiveBreaker("payments", fail_max=3, reset_timeout=60.0)

    @breaker
    def charge(cents: int) -> str:
        raise Unavailable("gateway down")

    outcomes = []
    for _ in range(4):
        try:
            charge(100)
        except Unavailable:
            outcomes.append("failed")
        except CircuitOpenError:
            outcomes.append("rejected")
    print(f"   {outcomes} -> state {breaker.state.value}")


def retries_with_budget_and_deadline() -> None:
    print("-- retry: exponential backoff with full jitter, a budget and a deadline")
    attempts = 0
    budget = RetryBudget(ttl=10.0, min_retries_per_sec=10.0, percent_can_retry=0.2)

    def log(event: RetryEvent) -> None:
        wait = f"waiting {event.delay * 1000:.0f} ms"
        print(f"   attempt {event.attempt} failed ({event.exception!r}); {wait}")

    @retry(max_attempts=4, base=0.01, cap=0.1, retry_on=(Unavailable,), budget=budget, on_retry=log)
    def fetch_profile(user: str) -> dict[str, str]:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise Unavailable("try again")
        return {"user": user, "plan": "pro"}

    with deadline_scope(2.0):  # the whole call, retries included, must end within 2 s
        print(f"   got {fetch_profile('ada')} after {attempts} attempts")
        left = remaining_time()
        print(f"   {left:.2f}s of the deadline left; budget allows {budget.balance()} more")


def deadline_across_a_hop() -> None:
    print("-- Deadline: sent as grpc-timeout, shrinking on the way")
    with deadline_scope(1.5) as deadline:
        header = deadline.to_header()
    received = Deadline.from_header(header)
    print(
        f"   header grpc-timeout: {header} ({parse_grpc_timeout(header)}s); "
        f"receiver has {received.remaining():.2f}s"
    )


async def bulkhead_and_timeouts() -> None:
    print("-- Bulkhead: 2 at a time, 2 more may wait, the rest are turned away")
    bulkhead = Bulkhead("reports", max_concurrent=2, max_queue=2)
    peak = inside = 0

    @bulkhead
    async def render(n: int) -> int:
        nonlocal peak, inside
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        return n

    results = await asyncio.gather(*(render(n) for n in range(6)), return_exceptions=True)
    done = [r for r in results if isinstance(r, int)]
    full = [r for r in results if isinstance(r, BulkheadFullError)]
    print(f"   served {done}, turned away {len(full)}, never more than {peak} at once")

    print("-- deadline_scope in async code cancels work that runs late")
    try:
        async with deadline_scope(0.02):
            await asyncio.sleep(1)
    except DeadlineExceeded as exc:
        print(f"   {exc.code}: {exc.message}")


async def hedging() -> None:
    print("-- hedged: a second attempt after 20 ms; the first answer wins")
    replicas = iter([0.5, 0.005])  # the first replica is having a bad day

    async def query() -> str:
        delay = next(replicas)
        await asyncio.sleep(delay)
        return f"answer from the replica that took {delay * 1000:.0f} ms"

    print(f"   {await hedged(query, HedgePolicy(delay=0.02))}")


def main() -> None:
    random.seed(7)
    failure_rate_breaker()
    consecutive_breaker()
    retries_with_budget_and_deadline()
    deadline_across_a_hop()
    asyncio.run(bulkhead_and_timeouts())
    asyncio.run(hedging())


if __name__ == "__main__":
    main()
