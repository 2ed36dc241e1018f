# Token bucket: a stock of permits refilled at a constant rate.
#
# Theory of operation
# -------------------
# The bucket holds up to `burst` permits and gains `rate` permits per second.
# A request for n permits is allowed when the bucket holds at least n, and
# takes them. The stock is kept as *credit*: nanoseconds of refill time, where
# one permit is worth `interval = ceil(1e9 / rate)` ns. Integer credit makes the
# arithmetic exact, so this bucket and `GCRA` (the same policy written as a
# theoretical arrival time) make identical decisions on identical arrivals.
#
# Queueing (`max_wait > 0`): instead of refusing, the bucket may go into debt
# down to `-max_wait`; the caller is told to wait until the debt is repaid.
# That is Sentinel's pacing ("leaky bucket") behaviour: admissions leave the
# limiter at the configured rate, and a request that would wait longer than
# `max_wait` is refused without reserving anything.
#
# Invariants
# ----------
# 1. -max_wait <= credit <= burst * interval (in ns).
# 2. Time only refills: a `now` earlier than the last one seen adds nothing.
# 3. In any interval of length T, at most rate * T + burst permits are granted
#    (plus max_wait * rate for a queueing bucket, whose grants are paced).

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

# A "last refill" long before any real clock reading: a new bucket starts full.
_NEVER = -(1 << 62)


class TokenBucket:
    """Token bucket rate limiter (pure; see the module header).

    rate: permits per second (number or "100/s"); burst: permits available at
    once (default: one second's worth); max_wait: longest a caller may be
    paced instead of refused (default 0: refuse).
    """

    __slots__ = (
        "_capacity",
        "_credit",
        "_interval",
        "_last",
        "_max_cost",
        "_max_debt",
        "burst",
        "max_wait",
        "rate",
    )

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
        self._capacity = self.burst * self._interval
        self._max_debt = round(self.max_wait * NS_PER_S)
        self._max_cost = self._capacity + self._max_debt
        self._credit = self._capacity
        self._last = _NEVER

    def try_acquire(self, now: float, permits: int = 1) -> Decision:
        """Take `permits` at monotonic time `now` (seconds), or say when to retry.

        Raises ValueError if `permits` < 1 or could never be granted at once.
        """
        cost = permits * self._interval
        if cost > self._max_cost or permits < 1:
            raise too_many(permits, self._max_cost // self._interval)
        t = int(now * 1e9 + 0.5)  # ns; a literal is cheaper than a global
        credit = self._credit
        if t > self._last:
            credit += t - self._last
            if credit > self._capacity:
                credit = self._capacity
            self._last = t
        left = credit - cost
        if left >= 0:
            self._credit = left
            r = left // self._interval
            return ALLOWED[r] if r < ALLOWED_TABLE_SIZE else new_decision(Decision, (True, 0.0, r))
        if -left <= self._max_debt:
            self._credit = left
            return new_decision(Decision, (True, -left / 1e9, 0))
        self._credit = credit
        retry = (-left - self._max_debt) / 1e9
        return new_decision(Decision, (False, retry, credit // self._interval if credit > 0 else 0))

    def available(self, now: float) -> int:
        """Permits that could be taken at `now` without waiting (does not change state)."""
        t = int(now * 1e9 + 0.5)
        credit = self._credit + max(0, t - self._last)
        return max(0, min(credit, self._capacity)) // self._interval
