"""Time as a dependency.

Every timer-driven piece of Crossway (leases, breakers, limiters, windows) asks a
`Clock` for the time instead of calling `time.monotonic()` itself, so tests can
run hours of behaviour on a `VirtualClock` in microseconds.

`now()` is monotonic seconds, for measuring intervals; `wall()` is Unix time,
for timestamps shown to people. A virtual clock moves both together.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class VirtualClock:
    """A clock that moves only when told to."""

    __slots__ = ("_epoch", "_now")

    def __init__(self, start: float = 0.0, *, epoch: float = 1_700_000_000.0) -> None:
        self._now = start
        self._epoch = epoch

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._epoch + self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("a clock cannot go backwards")
        self._now = now
