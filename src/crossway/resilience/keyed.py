# Per-key rate limiting ("hot parameters", Sentinel's ParamFlow) in bounded memory.
#
# Theory of operation
# -------------------
# Each key (a client address, a user id, an API token, a hot product id) gets
# its own pure limiter, made on first sight by `factory(key)`; the factory may
# give some keys their own limits (Sentinel's per-value exceptions). The
# limiters live in an insertion-ordered dict used as an LRU: a hit moves the
# key to the young end, a new key beyond `max_keys` evicts the oldest. All of
# it is O(1) per call and memory never exceeds max_keys limiters.
#
# The most recent key's limiter is also kept aside: a hot key (the case
# per-key limiting exists for) then skips the dict lookup and the reorder,
# which would be no-ops anyway since that key is already the youngest.
#
# The order is exact on purpose. Two generations of plain dicts (or a CLOCK
# bit) would save the reorder of a hit on another key, but it is one C call of
# about 15 ns in a decision of about 500 ns, and an approximate order could
# evict a key used within the last max_keys distinct keys, resetting its
# budget while it is in use.
#
# Eviction forgets a key's state, so a key that returns gets a fresh limiter
# (a full bucket). That is harmless for keys idle longer than their refill
# time, which the LRU order evicts first; size max_keys above the number of
# keys active within one refill period so active keys are never evicted.
#
# Invariants
# ----------
# 1. len(self) <= max_keys at all times.
# 2. Only `try_acquire` creates or reorders keys; `forget` removes one.

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, ParamSpec, TypeVar

from crossway.core.clock import Clock
from crossway.resilience.limiter import Decision, RateLimited, RateLimiter, clock_reader

K = TypeVar("K", bound=Hashable)
P = ParamSpec("P")
R = TypeVar("R")


_NO_KEY = object()
"""Equal to no key: what `_last_key` holds before the first call."""


class KeyedLimiter(Generic[K]):
    """One limiter per key, at most `max_keys` of them (pure; see the module header)."""

    __slots__ = ("_factory", "_get", "_last", "_last_key", "_limiters", "_touch", "max_keys")

    def __init__(self, factory: Callable[[K], RateLimiter], *, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._factory = factory
        self.max_keys = max_keys
        self._limiters: OrderedDict[K, RateLimiter] = OrderedDict()
        # Bound once: two attribute lookups fewer on every call.
        self._get, self._touch = self._limiters.get, self._limiters.move_to_end
        self._last_key: object = _NO_KEY
        self._last: RateLimiter | None = None

    def try_acquire(self, key: K, now: float, permits: int = 1) -> Decision:
        """Take `permits` for `key` at `now`; the key's limiter decides.

        Raises what the key's limiter raises (ValueError for impossible permits).
        """
        limiter = self._last
        if limiter is None or key != self._last_key:
            limiter = self.limiter_for(key)
        return limiter.try_acquire(now, permits)

    def limiter_for(self, key: K) -> RateLimiter:
        """The key's limiter, made on first sight; marks the key most recently used."""
        limiter = self._get(key)
        if limiter is None:
            limiter = self._add(key)
        else:
            self._touch(key)
        self._last_key, self._last = key, limiter
        return limiter

    def _add(self, key: K) -> RateLimiter:
        limiter = self._limiters[key] = self._factory(key)
        if len(self._limiters) > self.max_keys:
            self._limiters.popitem(last=False)
        return limiter

    def forget(self, key: K) -> None:
        """Drop a key's state (its next request starts with a fresh limiter)."""
        self._limiters.pop(key, None)
        if key == self._last_key:
            self._last_key, self._last = _NO_KEY, None

    def __len__(self) -> int:
        return len(self._limiters)

    def __contains__(self, key: object) -> bool:
        return key in self._limiters


def _admit(decision: Decision) -> Decision:
    if not decision.allowed:
        raise RateLimited(retry_after=decision.wait)
    return decision


class SyncKeyedLimiter(Generic[K]):
    """A KeyedLimiter behind a lock, with a clock and a real sleep, for threads."""

    __slots__ = ("_enter", "_exit", "_keyed", "_now", "_sleep")

    def __init__(
        self,
        core: KeyedLimiter[K],
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._keyed = core
        self._now = clock_reader(clock)
        self._sleep = sleep
        # Bound acquire/release: cheaper than `with` on the hot path (no __exit__ call).
        lock = threading.Lock()
        self._enter, self._exit = lock.acquire, lock.release

    def try_acquire(self, key: K, permits: int = 1) -> Decision:
        """Decide now for `key`; never waits."""
        # KeyedLimiter.try_acquire inlined: one Python call less per decision.
        keyed = self._keyed
        self._enter()
        try:
            limiter = keyed._last
            if limiter is None or key != keyed._last_key:
                limiter = keyed.limiter_for(key)
            return limiter.try_acquire(self._now(), permits)
        finally:
            self._exit()

    def acquire(self, key: K, permits: int = 1) -> Decision:
        """Take permits for `key`, sleeping out a queueing limiter's wait.

        Raises RateLimited (nothing reserved) when refused; an interrupted sleep
        leaves the permits spent.
        """
        decision = _admit(self.try_acquire(key, permits))
        if decision.wait > 0:
            self._sleep(decision.wait)
        return decision

    def limit(self, key: Callable[..., K]) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator: limit each call by `key(*args, **kwargs)` (e.g. the user argument)."""

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(fn)
            def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                self.acquire(key(*args, **kwargs))
                return fn(*args, **kwargs)

            return limited

        return decorate


class AsyncKeyedLimiter(Generic[K]):
    """A KeyedLimiter for asyncio callers; the lock is held only around the pure call."""

    __slots__ = ("_enter", "_exit", "_keyed", "_now", "_sleep")

    def __init__(
        self,
        core: KeyedLimiter[K],
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._keyed = core
        self._now = clock_reader(clock)
        self._sleep = sleep
        # Bound acquire/release: cheaper than `with` on the hot path (no __exit__ call).
        lock = threading.Lock()
        self._enter, self._exit = lock.acquire, lock.release

    def try_acquire(self, key: K, permits: int = 1) -> Decision:
        """Decide now for `key`; never waits."""
        # KeyedLimiter.try_acquire inlined: one Python call less per decision.
        keyed = self._keyed
        self._enter()
        try:
            limiter = keyed._last
            if limiter is None or key != keyed._last_key:
                limiter = keyed.limiter_for(key)
            return limiter.try_acquire(self._now(), permits)
        finally:
            self._exit()

    async def acquire(self, key: K, permits: int = 1) -> Decision:
        """Take permits for `key`, awaiting a queueing limiter's wait.

        Raises RateLimited (nothing reserved) when refused. On cancellation while
        waiting, CancelledError propagates and the permits stay spent.
        """
        decision = _admit(self.try_acquire(key, permits))
        if decision.wait > 0:
            await self._sleep(decision.wait)
        return decision

    def limit(
        self, key: Callable[..., K]
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Decorator for coroutine functions: limit each call by `key(*args, **kwargs)`."""

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            @functools.wraps(fn)
            async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                await self.acquire(key(*args, **kwargs))
                return await fn(*args, **kwargs)

            return limited

        return decorate
