# GCRA: the generic cell rate algorithm (ATM's virtual scheduling form).
#
# Theory of operation
# -------------------
# One number of state: the theoretical arrival time (TAT), the moment the
# limiter would be fully "caught up" if requests kept arriving exactly at the
# rate. Each permit pushes TAT forward by the emission interval T = 1/rate; a
# request is on time when, after pushing, TAT is no further ahead of `now`
# than the tolerance tau = burst * T.
#
#     tat     = max(tat, now)
#     new_tat = tat + permits * T
#     wait    = new_tat - tau - now      # <= 0: allowed at once
#
# With `max_wait > 0` a request whose wait is positive but at most max_wait is
# reserved and told to wait; beyond that it is refused and TAT is untouched.
# This is the same policy as `TokenBucket` (credit = tau - (tat - now)), kept as
# a timestamp instead of a stock: one value to store, which is why the Redis
# limiter uses it. Time is integer nanoseconds, T rounded up.
#
# Invariants
# ----------
# 1. tat - now <= tau + max_wait after every allowed request.
# 2. A refused request leaves TAT unchanged.
# 3. In any interval of length d, at most rate * d + burst permits are granted
#    (plus rate * max_wait for a queueing limiter).

from __future__ import annotations

from crossway.resilience.limiter import (
    ALLOWED,
    ALLOWED_TABLE_SIZE,
    NS_PER_S,
    Decision,
    check_burst,
    default_burst,
    interval_ns,
    new_decision,
    parse_rate,
    seconds,
    too_many,
)

_NEVER = -(1 << 62)


class GCRA:
    """GCRA rate limiter (pure; see the module header).

    rate: permits per second (number or "100/s"); burst: permits available at
    once (default: one second's worth); max_wait: longest a caller may be
    paced instead of refused (default 0: refuse).
    """

    __slots__ = ("_interval", "_max_cost", "_max_wait", "_tat", "_tau", "burst", "max_wait", "rate")

    def __init__(
        self,
        *,
        rate: float | str,
        burst: int | None = None,
        max_wait: float | str = 0.0,
    ) -> None:
        self.rate = parse_rate(rate)
        self.burst = default_burst(self.rate) if burst is None else check_burst(burst)
        self.max_wait = seconds(max_wait)
        self._interval = interval_ns(self.rate)
        self._tau = self.burst * self._interval
        self._max_wait = round(self.max_wait * NS_PER_S)
        self._max_cost = self._tau + self._max_wait
        self._tat = _NEVER

    def try_acquire(self, now: float, permits: int = 1) -> Decision:
        """Take `permits` at monotonic time `now` (seconds), or say when to retry.

        Raises ValueError if `permits` < 1 or could never be granted at once.
        """
        cost = permits * self._interval
        if cost > self._max_cost or permits < 1:
            raise too_many(permits, self._max_cost // self._interval)
        t = int(now * 1e9 + 0.5)  # ns; a literal is cheaper than a global
        tat = self._tat
        if tat < t:
            tat = t
        new_tat = tat + cost
        wait = new_tat - self._tau - t
        if wait <= 0:
            self._tat = new_tat
            r = -wait // self._interval
            return ALLOWED[r] if r < ALLOWED_TABLE_SIZE else new_decision(Decision, (True, 0.0, r))
        if wait <= self._max_wait:
            self._tat = new_tat
            return new_decision(Decision, (True, wait / 1e9, 0))
        left = self._tau - tat + t
        left = left // self._interval if left > 0 else 0
        return new_decision(Decision, (False, (wait - self._max_wait) / 1e9, left))

    def available(self, now: float) -> int:
        """Permits that could be taken at `now` without waiting (does not change state)."""
        t = int(now * 1e9 + 0.5)
        return max(0, self._tau - max(0, self._tat - t)) // self._interval
