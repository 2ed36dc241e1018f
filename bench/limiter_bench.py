"""Per-call cost of Crossway's rate limiters beside the `limits` library, in one run.

Every row is one `hit`/`try_acquire` on a single hot key, timed with
time.perf_counter_ns (wall) and time.thread_time_ns (this thread's CPU) over a
calibrated number of iterations (about 40 ms a batch), best of 15 rounds in
which the rows take turns. Crossway's limiters are measured through their
thread-safe front (`SyncLimiter`: a real clock and a lock, which is what
`limits` does internally too), then bare (the pure core with time.monotonic()).

Ratios are `limits` time / Crossway time: above 1 means we are faster. In
memory they are taken on CPU time, which other processes on a shared machine
cannot inflate (the wall column shows both are close on a quiet machine); for
Redis, where the cost is the round trip, on wall time. Two loads: 100/s (almost
every call refused) and 1,000,000/s (almost every call admitted, where a
moving-window log grows with the limit). The Redis rows run against
127.0.0.1:6379 when it is up.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Container
from functools import partial
from typing import NamedTuple

import limits
import redis
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from crossway.resilience.gcra import GCRA
from crossway.resilience.keyed import KeyedLimiter, SyncKeyedLimiter
from crossway.resilience.limiter import RateLimiter as PureLimiter
from crossway.resilience.limiter import SyncLimiter
from crossway.resilience.redis_limiter import RedisGCRA
from crossway.resilience.sliding_counter import SlidingWindowCounter
from crossway.resilience.token_bucket import TokenBucket

REDIS_URL = "redis://127.0.0.1:6379/0"
REPEATS = 15
BATCH_SECONDS = 0.04
TARGET = 3.0

Call = Callable[[], object]


class Timing(NamedTuple):
    wall: float  # ns per call
    cpu: float  # ns per call of this thread's CPU time


def measure(rows: dict[str, Call], batch_seconds: float = BATCH_SECONDS) -> dict[str, Timing]:
    """Best wall and CPU nanoseconds per call of each row over REPEATS rounds.

    Rows take turns within each round, so a burst of load from elsewhere on
    the machine hits all of them alike instead of skewing one row's ratio.
    """
    sizes = {name: _calibrate(call, batch_seconds) for name, call in rows.items()}
    best = dict.fromkeys(rows, Timing(math.inf, math.inf))
    for _ in range(REPEATS):
        for name, call in rows.items():
            wall, cpu = _timed(call, sizes[name])
            n = sizes[name]
            best[name] = Timing(min(best[name].wall, wall / n), min(best[name].cpu, cpu / n))
    return best


def _calibrate(call: Call, batch_seconds: float) -> int:
    """Iterations that take about batch_seconds."""
    n, spent = 1, 0
    while spent < batch_seconds * 1e9 / 10:
        n *= 2
        spent = _timed(call, n)[0]
    return max(1, int(n * batch_seconds * 1e9 / spent))


def _timed(call: Call, n: int) -> tuple[int, int]:
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(n):
        call()
    return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu


def peers(storage: limits.storage.Storage, rate: int) -> dict[str, Call]:
    item = limits.parse(f"{rate}/second")
    key = f"bench-{uuid.uuid4().hex}-"
    strategies: dict[str, type[RateLimiter]] = {
        "moving window": MovingWindowRateLimiter,
        "fixed window": FixedWindowRateLimiter,
        "sliding window counter": SlidingWindowCounterRateLimiter,
    }
    return {
        f"limits {name}": partial(cls(storage).hit, item, key + name.replace(" ", "-"))
        for name, cls in strategies.items()
    }


def ours_in_memory(rate: int) -> dict[str, Call]:
    keyed: KeyedLimiter[str] = KeyedLimiter(lambda _k: TokenBucket(rate=rate))
    rows: dict[str, Call] = {
        "crossway TokenBucket": SyncLimiter(TokenBucket(rate=rate)).try_acquire,
        "crossway GCRA": SyncLimiter(GCRA(rate=rate)).try_acquire,
        "crossway SlidingWindowCounter": SyncLimiter(
            SlidingWindowCounter(limit=rate, window=1.0)
        ).try_acquire,
        "crossway keyed TokenBucket": partial(SyncKeyedLimiter(keyed).try_acquire, "hot"),
    }
    cores: list[tuple[str, PureLimiter]] = [
        ("TokenBucket", TokenBucket(rate=rate)),
        ("GCRA", GCRA(rate=rate)),
        ("SlidingWindowCounter", SlidingWindowCounter(limit=rate, window=1.0)),
    ]
    for name, core in cores:
        rows[f"  bare core: {name}"] = partial(_bare, core.try_acquire)
    return rows


def _bare(try_acquire: Callable[[float], object]) -> object:
    return try_acquire(time.monotonic())


def table(title: str, theirs: dict[str, Timing], ours: dict[str, Timing], by: str) -> list[float]:
    """Print one block; return the headline ratios (fronts vs every peer)."""
    names = list(theirs)
    print(f"\n{title}  [ratios on {by} time]")
    peers_header = "  ".join(f"{'vs ' + n[7:]:>24}" for n in names)
    print(f"  {'implementation':36} {'wall ns':>9} {'cpu ns':>9}  {peers_header}")
    for name, timing in theirs.items():
        print(f"  {name:36} {timing.wall:9.0f} {timing.cpu:9.0f}")
    headline = []
    for name, timing in ours.items():
        ratios = [getattr(theirs[n], by) / getattr(timing, by) for n in names]
        if not name.startswith("  "):
            headline += ratios
        cells = "  ".join(f"{r:23.1f}x" for r in ratios)
        print(f"  {name:36} {timing.wall:9.0f} {timing.cpu:9.0f}  {cells}")
    return headline


def _split(
    times: dict[str, Timing], theirs: Container[str]
) -> tuple[dict[str, Timing], dict[str, Timing]]:
    peer = {n: t for n, t in times.items() if n in theirs}
    return peer, {n: t for n, t in times.items() if n not in theirs}


def memory_rows(rate: int) -> list[float]:
    theirs = peers(MemoryStorage(), rate)
    times = measure({**theirs, **ours_in_memory(rate)})
    return table(f"in memory, {rate:,}/s on one hot key", *_split(times, theirs), by="cpu")


def redis_rows(rate: int = 1000) -> list[float]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        print(f"\nRedis rows skipped: {error}")
        return []
    prefix = f"crossway-bench-{uuid.uuid4().hex}"
    try:
        times = measure(redis_calls(client, prefix + ":timing", rate), batch_seconds=0.15)
        theirs = {n: t for n, t in times.items() if n.startswith("limits")}
        title = f"Redis on loopback, {rate:,}/s on one hot key (one round trip each)"
        headline = table(title, *_split(times, theirs), by="wall")
        key_memory(client, prefix + ":memory", rate)
        return headline
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def redis_calls(client: redis.Redis[bytes], prefix: str, rate: int) -> dict[str, Call]:
    ours = RedisGCRA(client, rate=rate, prefix=prefix + ":crossway-")
    theirs = peers(RedisStorage(REDIS_URL, key_prefix=prefix), rate)
    return {**theirs, "crossway RedisGCRA": partial(ours.try_acquire, "gcra")}


def key_memory(client: redis.Redis[bytes], prefix: str, rate: int) -> None:
    """Server memory each implementation keeps for a key that just took a full
    second's worth of permits (MEMORY USAGE, right after)."""
    print(f"\n  Redis memory for one key after {rate:,} grants (bytes)")
    for name, call in redis_calls(client, prefix, rate).items():
        for _ in range(rate):
            call()
        keys = list(client.scan_iter(match=prefix + "*"))
        size = sum(int(client.memory_usage(key) or 0) for key in keys)
        client.delete(*keys)
        print(f"  {name:36} {size:9,}")


def main() -> None:
    print(f"rate limiter per-call cost, best of {REPEATS}; ratio = limits / crossway")
    memory = memory_rows(100) + memory_rows(1_000_000)
    remote = redis_rows()
    summary("in memory", memory)
    if remote:
        summary("on Redis ", remote)


def summary(where: str, ratios: list[float]) -> None:
    verdict = "met" if min(ratios) >= TARGET else "NOT met"
    print(
        f"\n{where}: crossway is {min(ratios):.1f}x-{max(ratios):.1f}x the speed of limits"
        f" (target {TARGET:.0f}x: {verdict})",
        end="",
    )


if __name__ == "__main__":
    main()
