# Warm-up: a rate limiter that starts slow after idleness and climbs to its rate.
#
# Theory of operation (Guava's SmoothWarmingUp, which Sentinel's warm-up follows)
# -------------------------------------------------------------------------------
# A cold service (empty caches, unopened connections, an unwarmed JIT) cannot
# take its full rate at once. The limiter keeps `stored` permits, which grow
# while the service is idle and are spent by requests. The more permits are
# stored, the colder the service, and the *more* each stored permit costs:
#
#   interval(stored) = stable                            stored <= threshold
#                    = stable + (stored - threshold) * slope   above it
#
# rising linearly to `cold = stable * cold_factor` at `max_stored`. Under full
# demand the limiter spends stored permits one interval at a time, so the
# permitted rate climbs from rate / cold_factor to rate as the bucket drains,
# and the drain from max_stored to threshold takes exactly `warmup` seconds
# (the area under the interval line). Below the threshold permits cost the
# stable interval: there is no free burst. Idle time refills the store at
# max_stored / warmup permits per second, so a limiter idle for `warmup` is
# fully cold again.
#
#   stable     = 1 / rate                cold      = stable * cold_factor
#   threshold  = 0.5 * warmup / stable   max_stored = threshold + 2 * warmup / (stable + cold)
#   slope      = (cold - stable) / (max_stored - threshold)
#
# Each grant is paid by the *next* caller (Guava's scheme): `next_free` is the
# earliest time the next request may proceed, and a grant moves it forward by
# the cost of the permits taken. A request is allowed when next_free - now <=
# max_wait and told to wait next_free - now (0 for a refusing limiter, where
# the request must find next_free <= now).
#
# Invariants
# ----------
# 1. 0 <= stored <= max_stored.
# 2. Each granted permit moves next_free by at least `stable`: in any interval
#    of length d, at most rate * d + 1 grants (plus rate * max_wait if queueing).
# 3. A refused request changes nothing but the refill bookkeeping.

from __future__ import annotations

import math

from crossway.resilience.limiter import (
    ALLOWED,
    Decision,
    new_decision,
    parse_rate,
    seconds,
    too_many,
)

_MAX_PERMITS = 1 << 20


class WarmUp:
    """Rate limiter with a linear warm-up from rate / cold_factor (pure; see the header).

    rate: the stable rate (permits per second or "100/s"); warmup: how long full
    demand takes to bring a cold limiter to that rate; cold_factor: how much
    slower the cold rate is (default 3); max_wait: longest a caller may be
    paced instead of refused (default 0: refuse).
    """

    __slots__ = (
        "_cooldown",
        "_max_stored",
        "_max_wait",
        "_next_free",
        "_slope",
        "_stable",
        "_stored",
        "_threshold",
        "cold_factor",
        "rate",
        "warmup",
    )

    def __init__(
        self,
        *,
        rate: float | str,
        warmup: float | str,
        cold_factor: float = 3.0,
        max_wait: float | str = 0.0,
    ) -> None:
        self.rate = parse_rate(rate)
        self.warmup = seconds(warmup)
        if not self.warmup > 0:
            raise ValueError("warmup must be positive (use TokenBucket for no warm-up)")
        if not (cold_factor > 1 and math.isfinite(cold_factor)):
            raise ValueError(f"cold_factor must be greater than 1, not {cold_factor!r}")
        self.cold_factor = float(cold_factor)
        self._max_wait = seconds(max_wait)
        self._stable = 1.0 / self.rate
        cold = self._stable * self.cold_factor
        self._threshold = 0.5 * self.warmup / self._stable
        self._max_stored = self._threshold + 2.0 * self.warmup / (self._stable + cold)
        self._slope = (cold - self._stable) / (self._max_stored - self._threshold)
        self._cooldown = self.warmup / self._max_stored
        self._stored = self._max_stored
        self._next_free = -math.inf

    @property
    def max_wait(self) -> float:
        return self._max_wait

    def try_acquire(self, now: float, permits: int = 1) -> Decision:
        """Take `permits` at monotonic time `now` (seconds), or say when to retry.

        Raises ValueError if `permits` < 1 (or absurdly large).
        """
        if not 0 < permits <= _MAX_PERMITS:
            raise too_many(permits, _MAX_PERMITS)
        self._refill(now)
        wait = self._next_free - now
        if wait > self._max_wait:
            return new_decision(Decision, (False, wait - self._max_wait, 0))
        spend = min(float(permits), self._stored)
        cost = self._stored_cost(spend) + (permits - spend) * self._stable
        self._stored -= spend
        self._next_free += cost
        if wait <= 0:
            # Each grant costs at least `stable`, so nothing is left for this instant.
            return ALLOWED[0]
        return new_decision(Decision, (True, wait, 0))

    def current_rate(self, now: float) -> float:
        """The rate a caller would get at `now` under full demand (does not change state)."""
        stored = self._stored
        if now > self._next_free:
            stored = min(self._max_stored, stored + (now - self._next_free) / self._cooldown)
        return 1.0 / self._interval(stored)

    def _refill(self, now: float) -> None:
        # Idle time (past next_free) turns back into stored, i.e. colder, permits.
        if now > self._next_free:
            gained = (now - self._next_free) / self._cooldown
            self._stored = min(self._max_stored, self._stored + gained)
            self._next_free = now

    def _interval(self, stored: float) -> float:
        above = stored - self._threshold
        return self._stable + above * self._slope if above > 0 else self._stable

    def _stored_cost(self, spend: float) -> float:
        """Seconds that spending `spend` of the stored permits costs: the area under
        the interval line between stored - spend and stored."""
        above = self._stored - self._threshold
        cost = 0.0
        if above > 0:
            take = min(above, spend)
            # Trapezoid: mean of the intervals at both ends times the width.
            cost = take * (self._interval(self._stored) + self._interval(self._stored - take)) / 2
            spend -= take
        return cost + spend * self._stable
