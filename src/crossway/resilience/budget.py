# Retry budgets: cap retries as a share of traffic, so that retries cannot
# multiply the load on a dependency that is already struggling.
#
# Two published designs, both behind one small protocol (`Budget`) that the
# retry wrapper drives: on_request when a logical call starts, try_retry
# before each retry, on_retry_done after that retry's attempt, on_request_done
# when the logical call is over.
#
# RetryBudget - Finagle's RetryBudget (a token bucket that decays over a TTL)
# ---------------------------------------------------------------------------
# Every request deposits 1 unit; a retry withdraws 1 / percent_can_retry units
# (5 with the default 0.2, i.e. one retry per five requests). On top of the
# deposits there is a fixed reserve of min_retries_per_sec * ttl retries, so a
# service with little traffic can still retry. Deposits and withdrawals expire
# `ttl` seconds after they were made: they are summed over a ring of `slices`
# time slices (Finagle's WindowedAdder), so the budget reflects recent traffic
# only. Units are integers (a deposit is 1000, a withdrawal is
# ceil(1000 / percent)), so rounding can only make the budget stricter.
#
# Invariant (checked by property tests): whenever a retry is granted,
#     retries in window <= percent_can_retry * requests in window
#                          + floor(min_retries_per_sec * ttl)
# where "in window" means made in one of the last `slices` slices: every
# request counted was made within the last `ttl` seconds, and every retry of
# the last ttl - ttl/slices seconds is counted.
#
# ConcurrentRetryBudget - Envoy's retry_budget (circuit-breaker thresholds)
# ------------------------------------------------------------------------
# At most max(min_retry_concurrency, budget_percent % of active requests)
# retries may be outstanding at once. A retry is outstanding from try_retry
# until on_retry_done (through its backoff and its attempt).
#
# Invariant: a retry is admitted only if, after admitting it, outstanding
# retries <= max(min_retry_concurrency, floor(budget_percent / 100 * active)).
#
# Both are pure (a clock, no sleeping) and thread-safe (short locks).

from __future__ import annotations

import math
import threading
from typing import Protocol

from crossway.core.clock import Clock, SystemClock

_DEPOSIT = 1000


class Budget(Protocol):
    """What the retry wrapper needs from a budget."""

    def on_request(self, now: float | None = None) -> None: ...

    def try_retry(self, now: float | None = None) -> bool: ...

    def on_retry_done(self, now: float | None = None) -> None: ...

    def on_request_done(self, now: float | None = None) -> None: ...


class RetryBudget:
    """Finagle's retry budget: retries limited to a share of recent requests."""

    __slots__ = (
        "_clock",
        "_deposit",
        "_epochs",
        "_lock",
        "_reserve",
        "_slices",
        "_sum",
        "_width",
        "_withdrawal",
        "min_retries_per_sec",
        "percent_can_retry",
        "ttl",
    )

    def __init__(
        self,
        *,
        ttl: float = 10.0,
        min_retries_per_sec: float = 10.0,
        percent_can_retry: float = 0.2,
        slices: int = 10,
        clock: Clock | None = None,
    ) -> None:
        if not ttl > 0 or slices < 1:
            raise ValueError("ttl must be positive and slices at least 1")
        if not min_retries_per_sec >= 0 or not percent_can_retry >= 0:
            raise ValueError("min_retries_per_sec and percent_can_retry must not be negative")
        self.ttl = ttl
        self.min_retries_per_sec = min_retries_per_sec
        self.percent_can_retry = percent_can_retry
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        if percent_can_retry > 0:
            self._deposit = _DEPOSIT
            self._withdrawal = math.ceil(_DEPOSIT / percent_can_retry)
        else:
            self._deposit, self._withdrawal = 0, 1  # requests earn nothing
        self._reserve = math.floor(min_retries_per_sec * ttl) * self._withdrawal
        self._width = ttl / slices
        self._slices = [0] * slices  # net units per slice
        self._epochs = [-1] * slices  # which time slice each entry holds
        self._sum = 0

    def _slot(self, now: float | None) -> int:
        """Index of the slice for `now`, clearing it if it held an expired slice."""
        t = self._clock.now() if now is None else now
        epoch = int(t // self._width)
        n = len(self._slices)
        i = epoch % n
        if self._epochs[i] != epoch:
            # First touch of a new slice: every slice older than the window
            # leaves the sum (a clock that went backwards expires nothing).
            for j in range(n):
                if self._epochs[j] <= epoch - n and self._slices[j]:
                    self._sum -= self._slices[j]
                    self._slices[j] = 0
            if self._epochs[i] < epoch:
                self._epochs[i] = epoch
        return i

    def deposit(self, now: float | None = None) -> None:
        """One request was made: earn percent_can_retry of a retry."""
        with self._lock:
            i = self._slot(now)
            self._slices[i] += self._deposit
            self._sum += self._deposit

    def try_withdraw(self, now: float | None = None) -> bool:
        """Take one retry from the budget; False (and nothing taken) when empty."""
        with self._lock:
            i = self._slot(now)
            if self._reserve + self._sum < self._withdrawal:
                return False
            self._slices[i] -= self._withdrawal
            self._sum -= self._withdrawal
            return True

    def balance(self, now: float | None = None) -> int:
        """How many retries the budget would allow right now."""
        with self._lock:
            self._slot(now)
            return (self._reserve + self._sum) // self._withdrawal

    def can_retry(self, now: float | None = None) -> bool:
        """Whether a retry would be allowed now (takes nothing)."""
        return self.balance(now) > 0

    # The Budget protocol.
    def on_request(self, now: float | None = None) -> None:
        self.deposit(now)

    def try_retry(self, now: float | None = None) -> bool:
        return self.try_withdraw(now)

    def on_retry_done(self, now: float | None = None) -> None:
        pass

    def on_request_done(self, now: float | None = None) -> None:
        pass


class ConcurrentRetryBudget:
    """Envoy's retry budget: outstanding retries limited to a share of active requests."""

    __slots__ = (
        "_lock",
        "active_requests",
        "active_retries",
        "budget_percent",
        "min_retry_concurrency",
    )

    def __init__(self, *, budget_percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        if not 0 <= budget_percent <= 100 or min_retry_concurrency < 0:
            raise ValueError("budget_percent must be within [0, 100], min_retry_concurrency >= 0")
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.active_requests = 0
        self.active_retries = 0
        self._lock = threading.Lock()

    def limit(self) -> int:
        """Outstanding retries allowed with the current number of active requests."""
        share = int(self.budget_percent * self.active_requests // 100)
        return max(self.min_retry_concurrency, share)

    def on_request(self, now: float | None = None) -> None:
        with self._lock:
            self.active_requests += 1

    def on_request_done(self, now: float | None = None) -> None:
        with self._lock:
            self.active_requests = max(0, self.active_requests - 1)

    def try_retry(self, now: float | None = None) -> bool:
        """Admit one more outstanding retry if the budget allows it."""
        with self._lock:
            if self.active_retries >= self.limit():
                return False
            self.active_retries += 1
            return True

    def on_retry_done(self, now: float | None = None) -> None:
        with self._lock:
            self.active_retries = max(0, self.active_retries - 1)
