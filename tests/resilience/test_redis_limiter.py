"""The Redis GCRA limiter against the real Redis on loopback, from many processes."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from crossway.resilience.limiter import RateLimited
from crossway.resilience.redis_limiter import (
    GCRA_SCRIPT,
    GCRA_SHA,
    AsyncRedisGCRA,
    LimiterUnavailable,
    RedisGCRA,
)
from crossway.resilience.resp import RespClient

pytestmark = pytest.mark.redis

PROCESSES = 8
HAMMER_SECONDS = 1.0


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other run uses; every key under it is deleted afterwards."""
    unique = f"crossway-test:{uuid.uuid4().hex}:"
    yield unique
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=unique + "*"))
    if keys:
        client.delete(*keys)
    client.close()


CLIENTS = ["redis-py", "resp"]


def connect(url: str, kind: str) -> redis.Redis[bytes] | RespClient:
    return redis.Redis.from_url(url) if kind == "redis-py" else RespClient.from_url(url)


def hammer(
    url: str, kind: str, prefix: str, rate: float, burst: int, go: Any, results: Any
) -> None:
    """One worker process: its own connection, as many requests as it can for a bounded time."""
    client = connect(url, kind)
    limiter = RedisGCRA(client, rate=rate, burst=burst, prefix=prefix)
    go.wait()
    deadline = time.monotonic() + HAMMER_SECONDS
    granted = calls = 0
    while time.monotonic() < deadline:
        calls += 1
        granted += limiter.try_acquire("shared").allowed
    results.put((granted, calls))
    client.close()


def run_workers(
    url: str, kind: str, prefix: str, rate: float, burst: int, before_start: Any
) -> list[Any]:
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=hammer, args=(url, kind, prefix, rate, burst, go, results))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    before_start()
    go.set()
    outcome = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    return outcome


def server_time_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


@pytest.mark.parametrize("kind", CLIENTS)
def test_exactly_the_burst_across_eight_processes(redis_url: str, prefix: str, kind: str) -> None:
    # One permit per 1000 s: over the test only the burst can be spent, and it
    # must be spent exactly once whatever the interleaving.
    outcome = run_workers(redis_url, kind, prefix, 0.001, 300, before_start=lambda: None)
    granted = sum(g for g, _ in outcome)
    calls = sum(c for _, c in outcome)
    assert calls > 1000, "the workers did not hammer"
    assert granted == 300


@pytest.mark.parametrize("kind", CLIENTS)
def test_exactly_one_interval_of_budget_per_grant_at_a_steady_rate(
    redis_url: str, prefix: str, kind: str
) -> None:
    rate, burst = 400.0, 200
    interval, tau = 2500, 200 * 2500  # microseconds
    client = redis.Redis.from_url(redis_url)
    key = prefix + "shared"
    tat0 = 0

    def preset() -> None:
        # Start the key's clock 0.6 s ahead of Redis time, so admissions begin
        # after 0.1 s and run at the rate with the TAT always ahead of now:
        # then TAT moves exactly one interval per grant, never reset to now.
        nonlocal tat0
        tat0 = server_time_us(client) + 600_000
        client.set(key, str(tat0), px=60_000)

    outcome = run_workers(redis_url, kind, prefix, rate, burst, before_start=preset)
    end = server_time_us(client)
    granted = sum(g for g, _ in outcome)
    tat = int(client.get(key) or 0)
    client.close()
    assert (tat - tat0) == granted * interval  # each grant spent once, none lost
    # And never more than the rate allows since admissions could begin.
    assert granted <= (end - (tat0 - tau)) // interval
    assert granted >= 0.5 * rate * (HAMMER_SECONDS - 0.1)


def test_refusal_has_retry_after_and_keys_expire(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = RedisGCRA(client, rate=10, burst=2, prefix=prefix)
    assert limiter.try_acquire("k").remaining == 1
    assert limiter.acquire("k").remaining == 0
    refused = limiter.try_acquire("k")
    assert not refused.allowed
    assert 0.05 < refused.retry_after <= 0.1
    with pytest.raises(RateLimited):
        limiter.acquire("k")
    assert 0 < client.pttl(prefix + "k") <= 200
    # Another process's view (another client) shares the same budget.
    other = RedisGCRA(redis.Redis.from_url(redis_url), rate=10, burst=2, prefix=prefix)
    assert not other.try_acquire("k").allowed
    assert other.try_acquire("elsewhere").allowed
    assert (limiter.rate, limiter.burst) == (10.0, 2)
    client.close()


def test_queueing_paces_instead_of_refusing(redis_url: str, prefix: str) -> None:
    slept: list[float] = []
    client = redis.Redis.from_url(redis_url)
    limiter = RedisGCRA(
        client, rate=20, burst=1, max_wait="0.2s", prefix=prefix, sleep=slept.append
    )
    decisions = [limiter.try_acquire("q") for _ in range(6)]
    assert [d.allowed for d in decisions][:4] == [True] * 4
    assert not decisions[-1].allowed
    waits = [d.wait for d in decisions if d.allowed]
    assert waits[0] == 0.0
    assert all(0.04 < b - a < 0.06 for a, b in itertools.pairwise(waits))
    limiter.acquire("paced")
    limiter.acquire("paced")
    assert len(slept) == 1
    assert 0.04 < slept[0] <= 0.05
    client.close()


class FlushedOnce:
    """A real client whose script cache looks flushed (as after a Redis restart)
    the first time, without flushing the shared server's scripts."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.loads = 0
        self.flushed = True

    def evalsha(self, sha: str, numkeys: int, *args: str | int) -> Any:
        if self.flushed:
            self.flushed = False
            return self.client.evalsha("0" * 40, 0)  # a real NOSCRIPT from Redis
        return self.client.evalsha(sha, numkeys, *args)

    def script_load(self, script: str) -> Any:
        self.loads += 1
        return self.client.script_load(script)


def test_script_is_reloaded_on_noscript(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(NoScriptError):
        client.evalsha("0" * 40, 0)
    flushed = FlushedOnce(client)
    limiter = RedisGCRA(flushed, rate=5, burst=1, prefix=prefix)
    assert limiter.try_acquire("s").allowed
    assert not limiter.try_acquire("s").allowed
    assert flushed.loads == 1
    assert client.script_exists(GCRA_SHA) == [True]
    assert client.script_load(GCRA_SCRIPT) == GCRA_SHA
    client.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_redis_raises_or_fails_open() -> None:
    client = redis.Redis(port=closed_port(), retry=Retry(NoBackoff(), 0))
    with pytest.raises(LimiterUnavailable) as failed:
        RedisGCRA(client, rate=1).try_acquire("k")
    assert failed.value.status == 503
    assert RedisGCRA(client, rate=1, fail_open=True).try_acquire("k").allowed


def test_invalid_parameters_raise() -> None:
    client = redis.Redis(port=closed_port())
    with pytest.raises(ValueError, match="microseconds"):
        RedisGCRA(client, rate=2e6)
    with pytest.raises(ValueError, match="never be granted"):
        RedisGCRA(client, rate=10, burst=2).try_acquire("k", 3)


async def test_async_client_grants_exactly_the_burst_to_concurrent_tasks(
    redis_url: str, prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    limiter = AsyncRedisGCRA(client, rate=0.001, burst=25, prefix=prefix)
    decisions = await asyncio.gather(*(limiter.try_acquire("a") for _ in range(100)))
    assert sum(d.allowed for d in decisions) == 25
    with pytest.raises(RateLimited):
        await limiter.acquire("a")
    assert (limiter.rate, limiter.burst) == (0.001, 25)
    await client.aclose()


async def test_async_client_awaits_queueing_wait_and_reports_failures(
    redis_url: str, prefix: str
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = redis.asyncio.Redis.from_url(redis_url)
    limiter = AsyncRedisGCRA(client, rate=10, burst=1, max_wait=1, prefix=prefix, sleep=sleep)
    await limiter.acquire("w")
    await limiter.acquire("w")
    assert len(slept) == 1
    assert 0.09 < slept[0] <= 0.1
    await client.aclose()

    dead = redis.asyncio.Redis(port=closed_port(), retry=AsyncRetry(NoBackoff(), 0))
    with pytest.raises(LimiterUnavailable):
        await AsyncRedisGCRA(dead, rate=1).try_acquire("k")
    assert (await AsyncRedisGCRA(dead, rate=1, fail_open=True).try_acquire("k")).allowed
    await dead.aclose()
