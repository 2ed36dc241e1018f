# A global rate limiter on Redis: GCRA in one atomic Lua script.
#
# Theory of operation
# -------------------
# Every process that limits the same key runs the same script against the same
# Redis key. The key holds one number, the GCRA theoretical arrival time (TAT)
# in integer microseconds of *Redis server* time; the script reads the clock
# with TIME, so the clocks of the calling processes (and their skew) never
# matter. Redis runs a script atomically, so the read-decide-write of one
# request can never interleave with another's: under any concurrency the
# budget is spent exactly once per permit.
#
#   tat     = max(GET key, now)
#   new_tat = tat + permits * T
#   wait    = new_tat - tau - now             # tau = burst * T
#   wait <= max_wait  ->  SET key new_tat PX ceil((new_tat - now) / 1ms); allowed
#   otherwise         ->  refused, key untouched, retry after wait - max_wait
#
# One key and O(1) work per call, whatever the limit (a moving-window log is
# O(limit)). The key expires when it would be back at a full burst anyway, so
# idle keys cost no memory. The script is sent once with SCRIPT LOAD and then
# called by SHA (EVALSHA); when Redis answers NOSCRIPT (restart, failover,
# SCRIPT FLUSH) it is loaded again and the call repeated once.
#
# Any redis-py client works. With the lean clients of resp.py (RespClient,
# AsyncRespClient) the limiter packs the command itself, once per key: the
# script's SHA and the limit's arguments never change, so a call sends bytes
# made in advance and the caller's CPU per decision is little more than the
# round trip's system calls (see resp.py for why redis-py costs more).
#
# Invariants
# ----------
# 1. A refused request never writes.
# 2. Per key, at most rate * d + burst permits are granted in any interval of
#    length d of Redis server time (plus rate * max_wait when queueing).
# 3. Lua numbers are doubles: microsecond timestamps (about 2^51 today) stay
#    exact; rates above 1,000,000 per second cannot be represented.

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisError

from crossway.core.errors import Unavailable
from crossway.resilience.limiter import (
    Decision,
    RateLimited,
    check_burst,
    default_burst,
    new_decision,
    parse_rate,
    seconds,
    too_many,
)
from crossway.resilience.resp import AsyncRespClient, RespClient, bulk

US_PER_S = 1_000_000

GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + cost
local wait = new_tat - tau - now
if wait > max_wait then
  local left = math.floor((tau - (tat - now)) / interval)
  if left < 0 then left = 0 end
  return {0, wait - max_wait, left}
end
local ttl = math.ceil((new_tat - now) / 1000)
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
if wait > 0 then return {1, wait, 0} end
return {1, 0, math.floor(-wait / interval)}
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()


class ScriptingClient(Protocol):
    """What the limiter needs of a Redis client: `redis.Redis` or `RedisCluster`."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: str | int) -> Any: ...

    def script_load(self, script: str) -> Any: ...


class AsyncScriptingClient(Protocol):
    """What the async limiter needs: `redis.asyncio.Redis` or its cluster client."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: str | int) -> Awaitable[Any]: ...

    def script_load(self, script: str) -> Awaitable[Any]: ...


class LimiterUnavailable(Unavailable):
    """The shared limiter's store could not be reached or answered an error."""

    code = "limiter_unavailable"


class _Params:
    """What both clients send: integer microseconds, computed once."""

    __slots__ = ("burst", "fail_open", "interval", "max_cost", "max_wait", "prefix", "rate", "tau")

    def __init__(
        self,
        rate: float | str,
        burst: int | None,
        max_wait: float | str,
        prefix: str,
        fail_open: bool,
    ) -> None:
        self.rate = parse_rate(rate)
        if self.rate > US_PER_S:
            raise ValueError("the Redis limiter counts microseconds: rate must be <= 1e6/s")
        self.burst = default_burst(self.rate) if burst is None else check_burst(burst)
        self.interval = math.ceil(US_PER_S / self.rate)
        self.tau = self.burst * self.interval
        self.max_wait = round(seconds(max_wait) * US_PER_S)
        self.max_cost = self.tau + self.max_wait
        self.prefix = prefix
        self.fail_open = fail_open

    def args(self, permits: int) -> tuple[int, int, int, int]:
        cost = permits * self.interval
        if cost > self.max_cost or permits < 1:
            raise too_many(permits, self.max_cost // self.interval)
        return (self.interval, self.tau, cost, self.max_wait)

    def decision(self, reply: Any) -> Decision:
        allowed, wait, left = reply
        return new_decision(Decision, (bool(allowed), int(wait) / US_PER_S, int(left)))

    def failed(self, error: RedisError) -> Decision:
        if self.fail_open:
            return Decision(True, 0.0, 0)
        raise LimiterUnavailable(f"rate limiter store unavailable: {error}") from error


# The head of an array of eight: EVALSHA, the SHA, one key, the key, _Params.args.
_EVALSHA_ONE_KEY = b"*8\r\n" + bulk("EVALSHA") + bulk(GCRA_SHA) + bulk(1)


class _PackedCalls:
    """The limiter's EVALSHA as bytes for resp.py's clients: everything but the
    key packed once, and the whole command of the last key kept."""

    __slots__ = ("_last", "_one_permit", "_p")

    def __init__(self, params: _Params) -> None:
        self._p = params
        self._one_permit = self._arguments(1)
        # One tuple, replaced whole: threads sharing the limiter never see one
        # key paired with another key's command.
        self._last: tuple[str | None, bytes] = (None, b"")

    def _arguments(self, permits: int) -> bytes:
        return b"".join(bulk(value) for value in self._p.args(permits))

    def command(self, key: str, permits: int) -> bytes:
        """EVALSHA for `key` (prefix added); ValueError for impossible permits."""
        if permits != 1:
            return _EVALSHA_ONE_KEY + bulk(self._p.prefix + key) + self._arguments(permits)
        last_key, command = self._last
        if key != last_key:
            command = _EVALSHA_ONE_KEY + bulk(self._p.prefix + key) + self._one_permit
            self._last = (key, command)
        return command


def _admit(decision: Decision) -> Decision:
    if not decision.allowed:
        raise RateLimited(retry_after=decision.wait)
    return decision


class RedisGCRA:
    """Global GCRA limiter shared through Redis, for threads (a `redis.Redis` client).

    rate: permits per second per key; burst: permits at once (default one
    second's worth); max_wait: longest a caller is paced instead of refused;
    prefix: prepended to every key; fail_open: when Redis fails, allow (True)
    instead of raising LimiterUnavailable (False, the default).
    """

    __slots__ = ("_client", "_execute", "_p", "_packed", "_sleep")

    def __init__(
        self,
        client: ScriptingClient,
        *,
        rate: float | str,
        burst: int | None = None,
        max_wait: float | str = 0.0,
        prefix: str = "crossway:rl:",
        fail_open: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._p = _Params(rate, burst, max_wait, prefix, fail_open)
        self._packed: _PackedCalls | None = None
        self._execute: Callable[[bytes], Any] | None = None
        if isinstance(client, RespClient):
            self._packed, self._execute = _PackedCalls(self._p), client.execute
        self._sleep = sleep

    @property
    def rate(self) -> float:
        return self._p.rate

    @property
    def burst(self) -> int:
        return self._p.burst

    def try_acquire(self, key: str, permits: int = 1) -> Decision:
        """One atomic round trip to Redis; never sleeps.

        Raises ValueError for impossible permits, LimiterUnavailable when Redis
        fails (unless fail_open). A timeout may leave the permits spent.
        """
        execute = self._execute
        if execute is not None:
            # The lean client's path, inlined: it is most of the Python a call runs.
            assert self._packed is not None
            command = self._packed.command(key, permits)
            try:
                try:
                    allowed, wait, left = execute(command)
                except NoScriptError:
                    self._client.script_load(GCRA_SCRIPT)
                    allowed, wait, left = execute(command)
            except RedisError as error:
                return self._p.failed(error)
            return new_decision(Decision, (allowed == 1, wait / US_PER_S, left))
        argv = self._p.args(permits)
        try:
            return self._p.decision(self._call(self._p.prefix + key, argv))
        except RedisError as error:
            return self._p.failed(error)

    def acquire(self, key: str, permits: int = 1) -> Decision:
        """Take permits for `key`, sleeping out a queueing limiter's wait.

        Raises RateLimited when refused (nothing reserved), LimiterUnavailable
        when Redis fails (unless fail_open).
        """
        decision = _admit(self.try_acquire(key, permits))
        if decision.wait > 0:
            self._sleep(decision.wait)
        return decision

    def _call(self, name: str, argv: tuple[int, ...]) -> Any:
        try:
            return self._client.evalsha(GCRA_SHA, 1, name, *argv)
        except NoScriptError:
            self._client.script_load(GCRA_SCRIPT)
            return self._client.evalsha(GCRA_SHA, 1, name, *argv)


class AsyncRedisGCRA:
    """Global GCRA limiter shared through Redis, for asyncio (a `redis.asyncio.Redis`).

    Same parameters and semantics as RedisGCRA.
    """

    __slots__ = ("_client", "_p", "_packed", "_sleep")

    def __init__(
        self,
        client: AsyncScriptingClient,
        *,
        rate: float | str,
        burst: int | None = None,
        max_wait: float | str = 0.0,
        prefix: str = "crossway:rl:",
        fail_open: bool = False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._p = _Params(rate, burst, max_wait, prefix, fail_open)
        self._packed = _PackedCalls(self._p) if isinstance(client, AsyncRespClient) else None
        self._sleep = sleep

    @property
    def rate(self) -> float:
        return self._p.rate

    @property
    def burst(self) -> int:
        return self._p.burst

    async def try_acquire(self, key: str, permits: int = 1) -> Decision:
        """One atomic round trip to Redis; never sleeps.

        Raises ValueError for impossible permits, LimiterUnavailable when Redis
        fails (unless fail_open). Cancelled mid-call, the script may still have
        run on the server: the permits may be spent.
        """
        packed = self._packed
        if packed is not None:
            command = packed.command(key, permits)
            try:
                return self._p.decision(await self._execute(command))
            except RedisError as error:
                return self._p.failed(error)
        argv = self._p.args(permits)
        try:
            return self._p.decision(await self._call(self._p.prefix + key, argv))
        except RedisError as error:
            return self._p.failed(error)

    async def acquire(self, key: str, permits: int = 1) -> Decision:
        """Take permits for `key`, awaiting a queueing limiter's wait.

        Raises RateLimited when refused, LimiterUnavailable when Redis fails
        (unless fail_open). Cancelled while waiting, the permits stay spent.
        """
        decision = _admit(await self.try_acquire(key, permits))
        if decision.wait > 0:
            await self._sleep(decision.wait)
        return decision

    async def _call(self, name: str, argv: tuple[int, ...]) -> Any:
        try:
            return await self._client.evalsha(GCRA_SHA, 1, name, *argv)
        except NoScriptError:
            await self._client.script_load(GCRA_SCRIPT)
            return await self._client.evalsha(GCRA_SHA, 1, name, *argv)

    async def _execute(self, command: bytes) -> Any:
        client = self._client
        assert isinstance(client, AsyncRespClient)
        try:
            return await client.execute(command)
        except NoScriptError:
            await client.script_load(GCRA_SCRIPT)
            return await client.execute(command)
