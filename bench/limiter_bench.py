"""Per-call cost of Crossway's rate limiters beside the `limits` library, in one run.

Every row is one `hit`/`try_acquire` on a single hot key, timed with
time.perf_counter_ns over a calibrated number of iterations (about a fifth of a
second per repeat), best of five repeats. Crossway's limiters are measured
through their thread-safe front (`SyncLimiter`: a real clock and a lock, which
is what `limits` does internally too), then bare (the pure core with
time.monotonic()). Ratios are `limits` time / Crossway time: above 1 means we
are faster. Two loads: 100/s (almost every call refused) and 1,000,000/s
(almost every call admitted, where a moving-window log grows with the limit).
The Redis rows run against 127.0.0.1:6379 when it is up.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from functools import partial

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


def measure(rows: dict[str, Call], batch_seconds: float = BATCH_SECONDS) -> dict[str, float]:
    """Best nanoseconds per call of each row over REPEATS rounds.

    Rows take turns within each round, so a burst of load from elsewhere on
    the machine hits all of them alike instead of skewing one row's ratio.
    """
    sizes = {name: _calibrate(call, batch_seconds) for name, call in rows.items()}
    best = dict.fromkeys(rows, math.inf)
    for _ in range(REPEATS):
        for name, call in rows.items():
            best[name] = min(best[name], _timed(call, sizes[name]) / sizes[name])
    return best


def _calibrate(call: Call, batch_seconds: float) -> int:
    """Iterations that take about batch_seconds."""
    n, spent = 1, 0
    while spent < batch_seconds * 1e9 / 10:
        n *= 2
        spent = _timed(call, n)
    return max(1, int(n * batch_seconds * 1e9 / spent))


def _timed(call: Call, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        call()
    return time.perf_counter_ns() - start


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


def table(title: str, theirs: dict[str, float], ours: dict[str, float]) -> list[float]:
    """Print one block; return the headline ratios (front vs every peer)."""
    names = list(theirs)
    print(f"\n{title}")
    header = f"  {'implementation':38} {'ns/call':>10}  " + "  ".join(
        f"{'vs ' + n[7:]:>24}" for n in names
    )
    print(header)
    for name, ns in theirs.items():
        print(f"  {name:38} {ns:10.0f}")
    headline = []
    for name, ns in ours.items():
        ratios = [theirs[n] / ns for n in names]
        if not name.startswith("  "):
            headline += ratios
        cells = "  ".join(f"{r:23.1f}x" for r in ratios)
        print(f"  {name:38} {ns:10.0f}  {cells}")
    return headline


def memory_rows(rate: int) -> list[float]:
    theirs = peers(MemoryStorage(), rate)
    times = measure({**theirs, **ours_in_memory(rate)})
    return table(f"in memory, {rate:,}/s on one hot key", *_split(times, theirs))


def _split(times: dict[str, float], theirs: dict[str, Call]) -> tuple[dict[str, float], ...]:
    peer = {n: t for n, t in times.items() if n in theirs}
    return peer, {n: t for n, t in times.items() if n not in theirs}


def redis_rows(rate: int = 1000) -> list[float]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        print(f"\nRedis rows skipped: {error}")
        return []
    prefix = f"crossway-bench-{uuid.uuid4().hex}"
    try:
        theirs = peers(RedisStorage(REDIS_URL, key_prefix=prefix), rate)
        ours = RedisGCRA(client, rate=rate, prefix=prefix + ":crossway-")
        rows: dict[str, Call] = {**theirs, "crossway RedisGCRA": partial(ours.try_acquire, "gcra")}
        times = measure(rows, batch_seconds=0.15)
        title = f"Redis on loopback, {rate:,}/s on one hot key (one round trip each)"
        headline = table(title, *_split(times, theirs))
        key_memory(client, prefix)
        return headline
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def key_memory(client: redis.Redis[bytes], prefix: str) -> None:
    """Server memory each implementation keeps for the hot key (MEMORY USAGE)."""
    print("\n  Redis memory for the hot key after the run (bytes)")
    usage: dict[str, int] = {}
    for raw in client.scan_iter(match=prefix + "*"):
        key = raw.decode()
        name = next(n for n in ("moving", "fixed", "sliding", "crossway") if n in key)
        usage[name] = usage.get(name, 0) + int(client.memory_usage(key) or 0)
    for name in ("crossway", "fixed", "sliding", "moving"):
        size = f"{usage[name]:,}" if name in usage else "expired"
        print(f"  {name:38} {size:>10}")


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
