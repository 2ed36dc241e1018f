"""Rate limits and adaptive concurrency, end to end, in about a second.

Run:  .venv/bin/python examples/rate_limit_example.py

1. A token bucket refuses a burst beyond its size and says when to retry.
2. A queueing GCRA paces asyncio callers to the rate instead of refusing.
3. A warm-up limiter starts a cold service at a third of its rate.
4. A per-client limiter keeps one noisy client from starving the others.
5. The same budget shared by every process through Redis (if it is running).
6. An adaptive limit finds a simulated server's capacity from its latency.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time

import redis

from crossway.core import VirtualClock
from crossway.resilience.adaptive import (
    AdaptiveLimiter,
    ConcurrencyLimit,
    Gradient2,
    GradientController,
    Ticket,
    Vegas,
    Windowed,
)
from crossway.resilience.gcra import GCRA
from crossway.resilience.keyed import KeyedLimiter, SyncKeyedLimiter
from crossway.resilience.limiter import AsyncLimiter, RateLimited, SyncLimiter
from crossway.resilience.redis_limiter import LimiterUnavailable, RedisGCRA
from crossway.resilience.token_bucket import TokenBucket
from crossway.resilience.warmup import WarmUp


def token_bucket() -> None:
    print("1. token bucket, 5/s with a burst of 3")
    limiter = SyncLimiter(TokenBucket(rate="5/s", burst=3))
    for i in range(5):
        try:
            decision = limiter.acquire()
            print(f"   request {i}: allowed, {decision.remaining} left")
        except RateLimited as refused:
            print(f"   request {i}: 429, retry after {refused.retry_after * 1000:.0f} ms")


async def paced_callers() -> None:
    print("2. GCRA at 20/s that queues callers for up to 200 ms")
    limiter = AsyncLimiter(GCRA(rate=20, burst=1, max_wait="200ms"))
    start = time.monotonic()

    async def call(i: int) -> None:
        try:
            await limiter.acquire()
            print(f"   caller {i} went at +{(time.monotonic() - start) * 1000:4.0f} ms")
        except RateLimited as refused:
            print(f"   caller {i} refused (would wait {refused.retry_after * 1000:.0f} ms more)")

    await asyncio.gather(*(call(i) for i in range(6)))


def warm_up() -> None:
    print("3. warm-up to 100/s over 4 s (virtual time, a caller that never stops)")
    limiter, clock = WarmUp(rate=100, warmup="4s"), VirtualClock()
    per_second = [0] * 6
    while clock.now() < 6:
        decision = limiter.try_acquire(clock.now())
        if decision.allowed:
            per_second[int(clock.now())] += 1
        else:
            clock.advance(max(decision.retry_after, 1e-6))
    print(f"   permits granted in each second: {per_second}")


def per_client() -> None:
    print("4. per-client limit of 2/s (burst 2), at most 1000 clients remembered")
    clock = VirtualClock()
    keyed: KeyedLimiter[str] = KeyedLimiter(lambda _client: TokenBucket(rate=2), max_keys=1000)
    limiter = SyncKeyedLimiter(keyed, clock=clock)
    traffic = ["noisy"] * 6 + ["quiet-1", "quiet-2"]
    verdicts: dict[str, str] = {}
    for client in traffic:
        mark = "+" if limiter.try_acquire(client).allowed else "-"
        verdicts[client] = verdicts.get(client, "") + mark
    for client, marks in verdicts.items():
        print(f"   {client:8} {marks}   (+ allowed, - refused)")


def shared_through_redis() -> None:
    print("5. one budget for every process: GCRA in Redis (10/s, burst 5)")
    client = redis.Redis(socket_connect_timeout=0.5)
    limiter = RedisGCRA(client, rate=10, burst=5, prefix="crossway-example:")
    try:
        granted = [limiter.try_acquire("checkout").allowed for _ in range(8)]
        print(f"   8 requests at once: {sum(granted)} allowed, {8 - sum(granted)} refused")
        client.delete("crossway-example:checkout")
    except LimiterUnavailable as error:
        print(f"   skipped: {error.message}")
    finally:
        client.close()


def serve(algorithm: ConcurrencyLimit, seconds: float = 6.0) -> list[tuple[int, float]]:
    """Offer 8000 requests/s to a server with 50 workers taking 10 ms each (5000/s
    at most; the rest queue). Returns (limit, mean latency) for each second."""
    limiter = AdaptiveLimiter(algorithm)
    workers = [0.0] * 50  # when each worker is next free (a heap)
    running: list[tuple[float, int, Ticket]] = []  # (finish time, tie-break, ticket)
    trace, latencies = [], []
    for i in range(int(seconds * 8000)):
        now = i / 8000
        while running and running[0][0] <= now:
            finish, _, done = heapq.heappop(running)
            limiter.release(done, finish)
            latencies.append(finish - done.start)
        ticket = limiter.try_acquire(now)
        if ticket is not None:
            finish = max(now, heapq.heappop(workers)) + 0.010
            heapq.heappush(workers, finish)
            heapq.heappush(running, (finish, i, ticket))
        if i % 8000 == 7999:
            trace.append((limiter.limit, sum(latencies) / max(1, len(latencies))))
            latencies.clear()
    return trace


def windowed(algorithm: ConcurrencyLimit) -> Windowed:
    return Windowed(algorithm, min_window="50ms", max_window="50ms")


def adaptive() -> None:
    print("6. adaptive limits before a server that does 50 requests at a time in 10 ms")
    print("   (8000 requests/s offered, 5000/s possible; limit and mean latency each second)")
    # Netflix's algorithms see one averaged sample per 50 ms window; per-request
    # samples would move the limit faster than latency can answer.
    algorithms: list[tuple[str, ConcurrencyLimit]] = [
        ("Gradient2", windowed(Gradient2(initial_limit=20, min_limit=5))),
        ("Vegas", windowed(Vegas(initial_limit=20, rng=random.Random(1)))),
        ("Envoy gradient", GradientController(max_limit=400, rng=random.Random(1))),
    ]
    for name, algorithm in algorithms:
        shown = ", ".join(f"{limit} ({lat * 1000:.0f} ms)" for limit, lat in serve(algorithm))
        print(f"   {name:14} {shown}")


def main() -> None:
    token_bucket()
    asyncio.run(paced_callers())
    warm_up()
    per_client()
    shared_through_redis()
    adaptive()


if __name__ == "__main__":
    main()
