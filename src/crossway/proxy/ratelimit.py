# Route rate limits: local (per gateway process) and global (on Redis).
#
# Theory of operation
# -------------------
# A route's `rate_limit` (routes/model.py) becomes one `RouteLimit` when the
# engine first plans the route for a configuration; the engine asks it
# right after the route matched, before any upstream work, and a refusal is
# a 429 `rate_limited` with `Retry-After` (whole seconds, rounded up).
#
# The key of a request is its client address (`client_ip`: the peer of the
# connection, not X-Forwarded-For, which a client can write), the route
# (`route`: one budget), or a header's value (`header:NAME`; requests
# without it share the budget of the empty value).
#
#   local    a KeyedLimiter of GCRA limiters (crossway.resilience): O(1) per
#            request, at most `max_keys` keys, the least recently seen
#            forgotten first. Each gateway process counts for itself.
#   global   AsyncRedisGCRA on the gateway's Redis: one atomic script per
#            request, shared by every gateway on that Redis. The Redis key
#            is `crossway:gateway:rl:<route>:<key>`, so gateways with the
#            same route name share one budget. When Redis cannot be reached
#            (or answers slower than `REDIS_DEADLINE`) the request is let
#            through — a limit must not take the gateway down with its
#            store — and the failure is counted and logged once per outage.
#
# Invariants
# ----------
# - A refused request reserves nothing (the limiters' rule) and reaches no
#   upstream.
# - A route whose limit cannot be built (global without Redis) never gets
#   this far: `routes_needing_redis` names it when the configuration loads.
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable

from crossway.core.clock import Clock
from crossway.proxy.errors import GatewayError
from crossway.proxy.routes.model import RateLimit, Route
from crossway.proxy.stream import Stream
from crossway.resilience import GCRA, AsyncRedisGCRA, KeyedLimiter, LimiterUnavailable
from crossway.resilience.redis_limiter import AsyncScriptingClient

log = logging.getLogger("crossway.proxy.ratelimit")

REDIS_PREFIX = "crossway:gateway:rl:"
REDIS_DEADLINE = 0.25
"""Seconds a global check may take before the request goes through unlimited."""

Failures = Callable[[str], None]
"""Told the route whose global limit could not be asked (Redis down)."""


class RateLimitExceeded(GatewayError):
    code = "rate_limited"
    status = 429


def _refusal(route: str, wait: float) -> RateLimitExceeded:
    after = max(1, math.ceil(wait))
    return RateLimitExceeded(
        f"rate limit of route {route} exceeded; retry after {after}s",
        headers=((b"retry-after", str(after).encode()),),
    )


def _key_reader(spec: RateLimit, route: str) -> Callable[[Stream], str]:
    if spec.key == "client_ip":
        return lambda stream: stream.peer.address
    if spec.key == "route":
        return lambda stream: route
    wanted = spec.key.removeprefix("header:").lower().encode("latin-1")

    def header(stream: Stream) -> str:
        for name, value in stream.head.headers:
            if name == wanted:
                return value.decode("latin-1")
        return ""

    return header


class LocalLimit:
    """A route's limit counted in this process."""

    __slots__ = ("_clock", "_key", "_limiter", "route")

    def __init__(self, route: str, spec: RateLimit, *, clock: Clock) -> None:
        self.route = route
        self._clock = clock
        self._key = _key_reader(spec, route)
        rate, burst = spec.rate, spec.burst
        self._limiter: KeyedLimiter[str] = KeyedLimiter(
            lambda _: GCRA(rate=rate, burst=burst), max_keys=spec.max_keys
        )

    async def admit(self, stream: Stream) -> None:
        """Raise RateLimitExceeded when the request's key is over its rate."""
        decision = self._limiter.try_acquire(self._key(stream), self._clock.now())
        if not decision.allowed:
            raise _refusal(self.route, decision.wait)


class GlobalLimit:
    """A route's limit counted on Redis, shared with other gateways."""

    __slots__ = ("_failed", "_failing", "_key", "_limiter", "route")

    def __init__(
        self, route: str, spec: RateLimit, *, redis: AsyncScriptingClient, failed: Failures
    ) -> None:
        self.route = route
        self._key = _key_reader(spec, route)
        self._limiter = AsyncRedisGCRA(
            redis, rate=spec.rate, burst=spec.burst, prefix=f"{REDIS_PREFIX}{route}:"
        )
        self._failed = failed
        self._failing = False

    async def admit(self, stream: Stream) -> None:
        """Raise RateLimitExceeded when over the shared rate; let the request
        through (counted, logged once per outage) when Redis does not answer."""
        try:
            async with asyncio.timeout(REDIS_DEADLINE):
                decision = await self._limiter.try_acquire(self._key(stream))
        except (LimiterUnavailable, TimeoutError, OSError) as exc:
            self._failed(self.route)
            if not self._failing:
                self._failing = True
                log.warning(
                    "route %s: global rate limit not enforced, Redis unavailable (%s)",
                    self.route,
                    exc,
                )
            return
        if self._failing:
            self._failing = False
            log.warning("route %s: global rate limit enforced again", self.route)
        if not decision.allowed:
            raise _refusal(self.route, decision.wait)


RouteLimit = LocalLimit | GlobalLimit


class RateLimits:
    """Builds each route's limit for the engine (see the module header)."""

    def __init__(
        self,
        *,
        clock: Clock,
        redis: AsyncScriptingClient | None = None,
        failed: Failures | None = None,
    ) -> None:
        self._clock = clock
        self.redis = redis
        self._failed: Failures = failed or (lambda route: None)

    def limit(self, name: str, route: Route) -> RouteLimit | None:
        """The limit of route `name`, None when it has none. A global limit
        without a Redis (a route from the control plane that this gateway
        cannot honour globally) is logged and counted in this process."""
        spec = route.rate_limit
        if spec is None:
            return None
        if spec.scope == "global":
            if self.redis is not None:
                return GlobalLimit(name, spec, redis=self.redis, failed=self._failed)
            log.error(
                "route %s: rate_limit.scope is global but this gateway has no Redis "
                "(--redis-url); counting it per process instead",
                name,
            )
        return LocalLimit(name, spec, clock=self._clock)


def routes_needing_redis(routes: Iterable[tuple[str, Route]]) -> list[str]:
    """Names of the routes whose rate limit is global (they need a Redis)."""
    return sorted(
        name
        for name, route in routes
        if route.rate_limit is not None and route.rate_limit.scope == "global"
    )
