"""Round robin and nginx's smooth weighted round robin.

Theory of operation
-------------------
`RoundRobin` walks the active endpoints in order, ignoring weights. The
starting position is random so that many clients started together do not all
hit the first endpoint in lockstep (Envoy does the same per worker).

`SmoothWeighted` is nginx's smooth weighted round robin: every endpoint carries
a `current` score; each pick adds every endpoint's weight to its score, picks
the highest (the first one on a tie) and subtracts the total weight from the
winner. Over one cycle of `sum(weights)` picks each endpoint is chosen exactly
`weight` times, and the picks of a heavy endpoint are spread out (5,1,1 gives
a a b a c a a, not a a a a a b c).

The sequence is periodic with period `sum(w) / gcd(w)`, so when that period
times the endpoint count is small (the usual case) the whole cycle is computed
once on rebuild and a pick is an index into it: O(1). Otherwise each pick runs
the O(n) scoring step, as nginx does. Both paths give the same sequence.

Invariants
----------
- A rebuild (membership or ejection change) restarts the smooth cycle.
- Neither balancer tracks load; `begin` returns the shared, inert `NO_CALL`.
"""

from __future__ import annotations

import random
from functools import reduce
from math import gcd

from crossway.balance._pool import DEFAULT_PANIC_THRESHOLD, PoolBase
from crossway.balance.endpoint import NO_CALL, Call, Endpoint

# Largest (period x endpoints) for which the cycle is precomputed: about 20 ms
# of work at rebuild, and a 256K-entry list at most.
_SCHEDULE_BUDGET = 1 << 18


class RoundRobin(PoolBase):
    """Each active endpoint in turn; weights are ignored (see `SmoothWeighted`)."""

    __slots__ = ("_next", "_rng")

    def __init__(
        self,
        *,
        healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(healthy_panic_threshold=healthy_panic_threshold)
        self._rng = rng or random.Random()
        self._next = -1

    def _rebuild(self, active: tuple[Endpoint, ...]) -> None:
        n = len(active)
        if n:
            self._next = self._rng.randrange(n) if self._next < 0 else self._next % n

    def pick(self, key: bytes | str | None = None) -> Endpoint | None:
        """The next endpoint in turn, or None with no active endpoints."""
        active = self._active
        if not active:
            return None
        i = self._next
        self._next = i + 1 if i + 1 < len(active) else 0
        return active[i]

    def begin(self, endpoint: Endpoint, now: float | None = None) -> Call:
        return NO_CALL


def smooth_step(current: list[int], weights: list[int], total: int) -> int:
    """One nginx smooth-weighted step over `current` (mutated); the winner's index."""
    best = 0
    best_score = current[0] + weights[0]
    current[0] = best_score
    for i in range(1, len(weights)):
        score = current[i] + weights[i]
        current[i] = score
        if score > best_score:
            best, best_score = i, score
    current[best] -= total
    return best


def smooth_cycle(weights: list[int]) -> list[int]:
    """The full periodic sequence of winners for these weights."""
    g = reduce(gcd, weights)
    reduced = [w // g for w in weights]
    total = sum(reduced)
    current = [0] * len(reduced)
    return [smooth_step(current, reduced, total) for _ in range(total)]


class SmoothWeighted(PoolBase):
    """nginx smooth weighted round robin over `Endpoint.weight`."""

    __slots__ = ("_current", "_cycle", "_pos", "_total", "_weights")

    def __init__(self, *, healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        super().__init__(healthy_panic_threshold=healthy_panic_threshold)
        self._weights: list[int] = []
        self._current: list[int] = []
        self._total = 0
        self._cycle: list[int] = []
        self._pos = 0

    def _rebuild(self, active: tuple[Endpoint, ...]) -> None:
        self._weights = [e.weight for e in active]
        self._total = sum(self._weights)
        self._current = [0] * len(active)
        self._pos = 0
        self._cycle = []
        if active:
            period = self._total // reduce(gcd, self._weights)
            if period * len(active) <= _SCHEDULE_BUDGET:
                self._cycle = smooth_cycle(self._weights)

    def pick(self, key: bytes | str | None = None) -> Endpoint | None:
        """The next endpoint of the smooth cycle, or None with no active endpoints."""
        cycle = self._cycle
        if cycle:
            pos = self._pos
            self._pos = pos + 1 if pos + 1 < len(cycle) else 0
            return self._active[cycle[pos]]
        if not self._active:
            return None
        return self._active[smooth_step(self._current, self._weights, self._total)]

    def begin(self, endpoint: Endpoint, now: float | None = None) -> Call:
        return NO_CALL
