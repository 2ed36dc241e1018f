# Sliding-window counter: the two-window weighted approximation.
#
# Theory of operation
# -------------------
# Time is cut into fixed windows of length W aligned on multiples of W. The
# limiter keeps two counts: permits granted in the current window and in the
# previous one. The number granted in the sliding window (now - W, now] is
# estimated by assuming the previous window's grants were spread evenly:
#
#     used = prev * (end - now) / W + curr          # end = end of this window
#
# and a request for n permits is allowed when used + n <= limit. Two counters
# and a window index: O(1) time and memory, where a true moving window (a log
# of timestamps, as the `limits` library keeps) costs O(limit).
#
# The estimate can be wrong when the previous window's grants were bunched up,
# but never by more than one window's worth: in ANY interval of length d the
# limiter grants at most limit + limit * d / W permits (the previous window's
# grants plus the share the estimate admits in this one). So it behaves like a
# token bucket of rate limit / W and burst `limit`, with smoother refusal.
#
# Invariants
# ----------
# 1. 0 <= curr <= limit and 0 <= prev <= limit.
# 2. prev is the count of the window immediately before the current one, or 0
#    when that window saw nothing (or lies further back).

from __future__ import annotations

import math

from crossway.resilience.limiter import (
    ALLOWED,
    ALLOWED_TABLE_SIZE,
    Decision,
    new_decision,
    seconds,
    too_many,
)

# The estimate is a float; a caller who waits exactly `retry_after` must find
# room even if rounding lands a hair above the limit. Counts are integers, so
# this slack can never admit a whole extra permit.
_SLACK = 1e-9


class SlidingWindowCounter:
    """At most about `limit` permits per sliding `window` (pure; see the module header).

    limit: permits per window; window: its length (seconds or "1s", "1m").
    Refuses rather than queues.
    """

    __slots__ = ("_curr", "_end", "_index", "_inv_window", "_prev", "limit", "window")

    def __init__(self, *, limit: int, window: float | str = 1.0) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        self.limit = limit
        self.window = seconds(window)
        if self.window <= 0:
            raise ValueError("window must be positive")
        self._inv_window = 1.0 / self.window
        self._index = -math.inf
        self._end = -math.inf
        self._curr = 0
        self._prev = 0

    @property
    def rate(self) -> float:
        """The long-run rate this limiter allows, permits per second."""
        return self.limit / self.window

    def try_acquire(self, now: float, permits: int = 1) -> Decision:
        """Take `permits` at monotonic time `now` (seconds), or say when to retry.

        Raises ValueError if `permits` < 1 or larger than `limit`.
        """
        if not 0 < permits <= self.limit:
            raise too_many(permits, self.limit)
        if now >= self._end:
            self._roll(now)
        used = self._prev * (self._end - now) * self._inv_window + self._curr
        room = self.limit - used - permits
        if room >= -_SLACK:
            self._curr += permits
            r = int(room) if room > 0 else 0
            return ALLOWED[r] if r < ALLOWED_TABLE_SIZE else new_decision(Decision, (True, 0.0, r))
        left = int(room + permits)  # whole permits free now (limit - used)
        return new_decision(
            Decision, (False, self._retry_after(now, permits), left if left > 0 else 0)
        )

    def _roll(self, now: float) -> None:
        index, offset = divmod(now, self.window)
        if index != self._index:
            self._prev = self._curr if index == self._index + 1 else 0
            self._curr = 0
            self._index = index
        # If rounding ever puts `end` at or before `now`, the next call rolls
        # again with the same index, which changes nothing.
        self._end = now - offset + self.window

    def _retry_after(self, now: float, permits: int) -> float:
        """Seconds until the estimate leaves room for `permits` (no other grants meanwhile)."""
        # Plain comparisons instead of max(): this runs on every refusal.
        room = self.limit - permits - self._curr
        if room >= 0 and self._prev:
            # This window: wait until the previous window's weight has decayed.
            wait = (self._end - now) - room / self._prev * self.window
            return wait if wait > 0.0 else 0.0
        # Next window: the current count becomes the decaying previous one.
        to_end = self._end - now
        wait = to_end if to_end > 0.0 else 0.0
        share = 1.0 - (self.limit - permits) / self._curr if self._curr else 0.0
        return wait + share * self.window if share > 0.0 else wait
