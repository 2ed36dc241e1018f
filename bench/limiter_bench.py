"""Per-call cost of Crossway's rate limiters beside the `limits` library, in one run.

Every row is one `hit`/`try_acquire` on a single hot key, timed with
time.perf_counter_ns (wall) and time.thread_time_ns (this thread's CPU) over a
calibrated number of iterations (about 40 ms a batch), best of 15 rounds in
which the rows take turns. Each row is called as a caller writes it, with its
arguments (`limiter.hit(item, key)`, `front.try_acquire(key)`) from a loop made
for its number of arguments: a functools.partial in between would add its own
argument shuffling to every row. Crossway's limiters are measured through their
thread-safe front (`SyncLimiter`: a real clock and a lock, which is what
`limits` does internally too), then bare (the pure core with time.monotonic()).

Ratios are `limits` time / Crossway time: above 1 means we are faster. In
memory they are taken on CPU time, which other processes on a shared machine
cannot inflate (the wall column shows both are close on a quiet machine). Two
loads: 100/s (almost every call refused) and 1,000,000/s (almost every call
admitted, where a moving-window log grows with the limit).

The Redis rows run against 127.0.0.1:6379 when it is up; every call is one
round trip for every implementation. The headline ratio is taken on the
calling thread's CPU time per call, which is what a limiter costs its caller
(the wall time adds the Redis server's work and the kernel's loopback, which
are the same for everyone); wall-time ratios are printed beside it. redis-py,
under `limits` and under RedisGCRA on a `redis.Redis`, parses replies with
hiredis when it is installed, as our RespClient does: the bench says which.

Then the same on asyncio, as a gateway or an async service calls it: 64
tasks on one event loop (uvloop) share one client and each take 100
decisions in a row; the process's CPU time for all 6,400 decisions, per
decision, best of 5 (the calls of a moment go out together where the client
pipelines them: `AsyncRespClient` does, `limits.aio` on redis.asyncio takes a
pooled connection per call in flight).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Container
from typing import NamedTuple

import limits
import limits.aio.storage
import limits.aio.strategies
import redis
import redis.asyncio
import uvloop
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
from crossway.resilience.redis_limiter import AsyncRedisGCRA, RedisGCRA
from crossway.resilience.resp import AsyncRespClient, RespClient
from crossway.resilience.sliding_counter import SlidingWindowCounter
from crossway.resilience.token_bucket import TokenBucket

REDIS_URL = "redis://127.0.0.1:6379/0"
REPEATS = 15
BATCH_SECONDS = 0.04
TARGET = 3.0


class Call(NamedTuple):
    """A function and the arguments each call passes it."""

    function: Callable[..., object]
    args: tuple[object, ...] = ()


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
    return _LOOPS[len(call.args)](call.function, call.args, n)


# One loop per number of arguments, so that each call is a plain call with its
# arguments in local variables, as in a caller's code.


def _loop0(function: Callable[..., object], _args: tuple[object, ...], n: int) -> tuple[int, int]:
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(n):
        function()
    return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu


def _loop1(function: Callable[..., object], args: tuple[object, ...], n: int) -> tuple[int, int]:
    (a,) = args
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(n):
        function(a)
    return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu


def _loop2(function: Callable[..., object], args: tuple[object, ...], n: int) -> tuple[int, int]:
    a, b = args
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(n):
        function(a, b)
    return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu


_LOOPS = (_loop0, _loop1, _loop2)


def peers(storage: limits.storage.Storage, rate: int) -> dict[str, Call]:
    item = limits.parse(f"{rate}/second")
    key = f"bench-{uuid.uuid4().hex}-"
    strategies: dict[str, type[RateLimiter]] = {
        "moving window": MovingWindowRateLimiter,
        "fixed window": FixedWindowRateLimiter,
        "sliding window counter": SlidingWindowCounterRateLimiter,
    }
    return {
        f"limits {name}": Call(cls(storage).hit, (item, key + name.replace(" ", "-")))
        for name, cls in strategies.items()
    }


def ours_in_memory(rate: int) -> dict[str, Call]:
    keyed: KeyedLimiter[str] = KeyedLimiter(lambda _k: TokenBucket(rate=rate))
    rows: dict[str, Call] = {
        "crossway TokenBucket": Call(SyncLimiter(TokenBucket(rate=rate)).try_acquire),
        "crossway GCRA": Call(SyncLimiter(GCRA(rate=rate)).try_acquire),
        "crossway SlidingWindowCounter": Call(
            SyncLimiter(SlidingWindowCounter(limit=rate, window=1.0)).try_acquire
        ),
        "crossway keyed TokenBucket": Call(SyncKeyedLimiter(keyed).try_acquire, ("hot",)),
    }
    cores: list[tuple[str, PureLimiter]] = [
        ("TokenBucket", TokenBucket(rate=rate)),
        ("GCRA", GCRA(rate=rate)),
        ("SlidingWindowCounter", SlidingWindowCounter(limit=rate, window=1.0)),
    ]
    for name, core in cores:
        rows[f"  bare core: {name}"] = Call(_bare, (core.try_acquire,))
    return rows


def _bare(try_acquire: Callable[[float], object]) -> object:
    return try_acquire(time.monotonic())


def table(
    title: str,
    theirs: dict[str, Timing],
    ours: dict[str, Timing],
    by: str,
    also: str | None = None,
) -> list[float]:
    """Print one block; return the headline ratios (fronts vs every peer) on `by`
    time, printing those on `also` time beside them."""
    names = list(theirs)
    measures = [by] if also is None else [by, also]
    print(f"\n{title}  [ratios on {' | '.join(measures)} time]")
    peers_header = "  ".join(f"{'vs ' + n[7:]:>24}" for n in names)
    print(f"  {'implementation':40} {'wall ns':>9} {'cpu ns':>9}  {peers_header}")
    for name, timing in theirs.items():
        print(f"  {name:40} {timing.wall:9.0f} {timing.cpu:9.0f}")
    headline = []
    for name, timing in ours.items():
        ratios = {m: [getattr(theirs[n], m) / getattr(timing, m) for n in names] for m in measures}
        if not name.startswith("  "):
            headline += ratios[by]
        cells = "  ".join(
            f"{' | '.join(f'{ratios[m][i]:.1f}x' for m in measures):>24}" for i in range(len(names))
        )
        print(f"  {name:40} {timing.wall:9.0f} {timing.cpu:9.0f}  {cells}")
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
    lean = RespClient.from_url(REDIS_URL)
    prefix = f"crossway-bench-{uuid.uuid4().hex}"
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure Python"
    try:
        floor, floor_socket = round_trip_floor()
        rows = {**redis_calls(client, lean, prefix + ":timing", rate), "  floor: bare PING": floor}
        times = measure(rows, batch_seconds=0.15)
        floor_socket.close()
        theirs = {n: t for n, t in times.items() if n.startswith("limits")}
        title = (
            f"Redis on loopback, {rate:,}/s on one hot key (one round trip each;"
            f" redis-py parses with {parser})"
        )
        headline = table(title, *_split(times, theirs), by="cpu", also="wall")
        key_memory(client, lean, prefix + ":memory", rate)
        return headline
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
        lean.close()


def redis_calls(
    client: redis.Redis[bytes], lean: RespClient, prefix: str, rate: int
) -> dict[str, Call]:
    # Prefixes of one length: the memory rows then compare like with like.
    ours = RedisGCRA(lean, rate=rate, prefix=prefix + ":crossway-resp-")
    on_redis_py = RedisGCRA(client, rate=rate, prefix=prefix + ":crossway-rpy-")
    theirs = peers(RedisStorage(REDIS_URL, key_prefix=prefix), rate)
    return {
        **theirs,
        "crossway RedisGCRA (RespClient)": Call(ours.try_acquire, ("gcra",)),
        "  RedisGCRA on a redis.Redis": Call(on_redis_py.try_acquire, ("gcra",)),
    }


def round_trip_floor() -> tuple[Call, socket.socket]:
    """A PING on a bare socket, no client library: the kernel's share of any call."""
    sock = socket.create_connection(("127.0.0.1", 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ping, buffer = b"*1\r\n$4\r\nPING\r\n", bytearray(64)

    def call() -> None:
        sock.sendall(ping)
        sock.recv_into(buffer)  # "+PONG\r\n" comes in one piece on loopback

    return Call(call), sock


def key_memory(client: redis.Redis[bytes], lean: RespClient, prefix: str, rate: int) -> None:
    """Server memory each implementation keeps for a key that just took a full
    second's worth of permits (MEMORY USAGE, right after)."""
    print(f"\n  Redis memory for one key after {rate:,} grants (bytes)")
    for name, call in redis_calls(client, lean, prefix, rate).items():
        for _ in range(rate):
            call.function(*call.args)
        keys = list(client.scan_iter(match=prefix + "*"))
        size = sum(int(client.memory_usage(key) or 0) for key in keys)
        client.delete(*keys)
        print(f"  {name:40} {size:9,}")


TASKS = 64
PER_TASK = 100
ASYNC_REPEATS = 5


def async_redis_rows(rate: int = 1000) -> list[float]:
    """Per-decision CPU of the async limiters under 64 concurrent callers."""
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as error:
        print(f"\nasync Redis rows skipped: {error}")
        return []
    return uvloop.run(_async_rows(rate))


async def _async_rows(rate: int) -> list[float]:
    prefix = f"crossway-bench-{uuid.uuid4().hex}"
    lean = AsyncRespClient.from_url(REDIS_URL)
    pooled = redis.asyncio.Redis.from_url(REDIS_URL, max_connections=TASKS)
    storage = limits.aio.storage.RedisStorage(
        "async+" + REDIS_URL, implementation="redispy", key_prefix=prefix
    )
    item = limits.parse(f"{rate}/second")
    theirs: dict[str, Callable[[], object]] = {
        "limits moving window (aio)": _hit(
            limits.aio.strategies.MovingWindowRateLimiter(storage), item, "moving"
        ),
        "limits fixed window (aio)": _hit(
            limits.aio.strategies.FixedWindowRateLimiter(storage), item, "fixed"
        ),
        "limits sliding window counter (aio)": _hit(
            limits.aio.strategies.SlidingWindowCounterRateLimiter(storage), item, "sliding"
        ),
    }
    ours_lean = AsyncRedisGCRA(lean, rate=rate, prefix=prefix + ":crossway-resp-")
    ours_pooled = AsyncRedisGCRA(pooled, rate=rate, prefix=prefix + ":crossway-rpy-")
    ours: dict[str, Callable[[], object]] = {
        "crossway AsyncRedisGCRA (AsyncResp)": lambda: ours_lean.try_acquire("gcra"),
        "  AsyncRedisGCRA on redis.asyncio": lambda: ours_pooled.try_acquire("gcra"),
    }
    rows = {**theirs, **ours}
    best = {name: math.inf for name in rows}
    wall = {name: math.inf for name in rows}
    try:
        for call in rows.values():  # warm: connections, scripts
            await _concurrently(call, 1)
        for _ in range(ASYNC_REPEATS):
            for name, call in rows.items():
                cpu, elapsed = await _concurrently(call, PER_TASK)
                best[name] = min(best[name], cpu)
                wall[name] = min(wall[name], elapsed)
    finally:
        cleanup = redis.asyncio.Redis.from_url(REDIS_URL)
        keys = [k async for k in cleanup.scan_iter(match=prefix + "*")]
        if keys:
            await cleanup.delete(*keys)
        for client in (cleanup, pooled):
            await client.aclose()  # type: ignore[attr-defined]  # redis-py 5+; the stubs lag
        await lean.aclose()
    times = {n: Timing(wall[n], best[n]) for n in rows}
    title = (
        f"Redis on loopback from asyncio, {TASKS} concurrent callers, {rate:,}/s on one hot key"
        " (process CPU per decision)"
    )
    return table(title, *_split(times, theirs), by="cpu", also="wall")


def _hit(
    strategy: limits.aio.strategies.RateLimiter, item: limits.RateLimitItem, key: str
) -> Callable[[], object]:
    return lambda: strategy.hit(item, key)  # a key per strategy: their keys differ in type


async def _concurrently(call: Callable[[], object], per_task: int) -> tuple[float, float]:
    """(process CPU ns, wall ns) per decision for TASKS tasks of `per_task` calls."""

    async def one() -> None:
        for _ in range(per_task):
            await call()  # type: ignore[misc]

    cpu, started = time.process_time_ns(), time.perf_counter_ns()
    await asyncio.gather(*(one() for _ in range(TASKS)))
    count = TASKS * per_task
    return (time.process_time_ns() - cpu) / count, (time.perf_counter_ns() - started) / count


def main() -> None:
    print(f"rate limiter per-call cost, best of {REPEATS}; ratio = limits / crossway")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    memory = memory_rows(100) + memory_rows(1_000_000)
    remote = redis_rows()
    remote_async = async_redis_rows()
    summary("in memory", memory)
    if remote:
        summary("on Redis (caller CPU)", remote)
    if remote_async:
        summary("on Redis from asyncio, 64 concurrent callers (process CPU)", remote_async)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def summary(where: str, ratios: list[float]) -> None:
    verdict = "met" if min(ratios) >= TARGET else "NOT met"
    print(
        f"\n{where}: crossway is {min(ratios):.1f}x-{max(ratios):.1f}x the speed of limits"
        f" (target {TARGET:.0f}x: {verdict})",
        end="",
    )


if __name__ == "__main__":
    main()
