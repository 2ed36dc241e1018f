# How long to wait before retry number n: exponential backoff with jitter.
#
# Theory of operation
# -------------------
# Exponential backoff spaces retries out (base, 2*base, 4*base ... capped);
# jitter spreads the retries of many clients that failed together, so they do
# not come back together. Following "Exponential Backoff And Jitter" (Marc
# Brooker, AWS Architecture Blog, 2015), with ceiling(n) = min(cap, base * m**n):
#
#   FULL          uniform(0, ceiling(n))              (the default, and the
#                                                      blog's recommendation)
#   EQUAL         ceiling(n)/2 + uniform(0, ceiling(n)/2)
#   DECORRELATED  min(cap, uniform(base, 3 * previous))  (previous = last delay,
#                                                         base for the first)
#   NONE          ceiling(n)
#
# n counts retries from 0: the first retry waits within [0, base].
#
# Invariant: FULL, EQUAL and NONE always return a value in [0, ceiling(n)];
# DECORRELATED in [0, cap]. Pure: randomness is an injectable `rand()` in [0, 1).

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass


class Jitter(enum.Enum):
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"
    NONE = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff: `base` seconds growing by `multiplier`, capped at `cap`."""

    base: float = 0.1
    cap: float = 10.0
    multiplier: float = 2.0
    jitter: Jitter = Jitter.FULL

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= 0 and self.multiplier >= 1):
            raise ValueError("base and cap must not be negative, multiplier must be >= 1")

    def ceiling(self, n: int) -> float:
        """min(cap, base * multiplier**n): the longest wait before retry n."""
        if self.base == 0:
            return 0.0
        try:
            return min(self.cap, self.base * self.multiplier**n)
        except OverflowError:  # multiplier**n beyond a float: far past any cap
            return self.cap

    def delay(
        self,
        n: int,
        *,
        previous: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait before retry n (0-based); `previous` feeds DECORRELATED."""
        jitter = self.jitter
        if jitter is Jitter.FULL:
            return rand() * self.ceiling(n)
        if jitter is Jitter.EQUAL:
            half = self.ceiling(n) / 2
            return half + rand() * half
        if jitter is Jitter.DECORRELATED:
            low = self.base
            high = max(low, 3 * (low if previous is None else previous))
            return min(self.cap, low + rand() * (high - low))
        return self.ceiling(n)
