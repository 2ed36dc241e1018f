"""The pure part of active health checking: when to probe, what to record,
when to give up on an instance.

Nothing here sleeps, touches a socket or the event loop; every decision takes
the time as an argument (from a `crossway.core.Clock`), so tests run hours of
checking on a `VirtualClock` in microseconds. `HealthChecker` is the thin
asyncio driver around these objects.

Theory of operation
- `Schedule` — one per checked instance. The first probe is due a small random
  delay after the instance appears (at most `min(interval, 1s)`), so a control
  plane that starts with ten thousand instances does not fire ten thousand
  probes in the same millisecond. After each probe the next one is due
  `interval` later, stretched or shrunk by up to ±10% at random: instances
  registered together drift apart instead of probing in lock-step forever.
  The interval is measured from the end of a probe, so a slow probe never
  overlaps the next one of the same instance.
- `StatusMachine` — Consul's flapping guard. A passing result increments a
  success streak and clears the failure streak; a warning or critical result
  does the opposite. A new status is only recorded once its streak reaches the
  threshold (`success_before_passing`, `failures_before_critical`; 1 and 1 by
  default, which records every result). It compares against the *recorded*
  status and output, so it asks for a write only when something would change.
- Deregistration: an instance whose recorded status has been critical without
  interruption for `deregister_after` is due for removal. The streak starts
  when critical is recorded; a restarted control plane recovers it from the
  instance's `status_since`, so a restart never postpones a removal by more
  than the clock skew between control planes.

Invariants
1. `jittered(i)` lies in [0.9·i, 1.1·i]; `first_delay(i)` in [0, min(i, 1s)].
2. `observe` never asks to record passing before `success_before_passing`
   consecutive passing results, nor warning/critical before
   `failures_before_critical` consecutive failing ones.
3. `observe` never changes the recorded status: only `record` does, after the
   driver's write succeeded, so a failed write is simply retried next time.
4. `deregister_due` is true only when the recorded status is critical and has
   been since `deregister_at - deregister_after`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument
from crossway.registry.model import Check, Status

JITTER = 0.1
"""Each interval is stretched or shrunk by up to this fraction."""
FIRST_RUN_SPREAD = 1.0
"""The first probe after an instance appears is spread over at most this many seconds."""


def jittered(interval: float, rng: random.Random, *, fraction: float = JITTER) -> float:
    """`interval` scaled by a uniform factor in [1 - fraction, 1 + fraction]."""
    return interval * (1.0 + rng.uniform(-fraction, fraction))


def first_delay(interval: float, rng: random.Random, *, spread: float = FIRST_RUN_SPREAD) -> float:
    """How long after an instance appears its first probe is due."""
    return rng.uniform(0.0, min(interval, spread))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Consul's `success_before_passing` / `failures_before_critical`."""

    success_before_passing: int = 1
    failures_before_critical: int = 1

    def __post_init__(self) -> None:
        if self.success_before_passing < 1:
            raise InvalidArgument("success_before_passing must be at least 1")
        if self.failures_before_critical < 1:
            raise InvalidArgument("failures_before_critical must be at least 1")


@dataclass(frozen=True, slots=True)
class CheckTiming:
    """A `Check`'s durations in seconds."""

    interval: float
    timeout: float
    deregister_after: float | None = None

    @classmethod
    def of(cls, check: Check) -> CheckTiming:
        """Parse `check`'s durations; they were validated at registration."""
        after = check.deregister_after
        return cls(
            interval=parse_duration(check.interval),
            timeout=parse_duration(check.timeout),
            deregister_after=parse_duration(after) if after is not None else None,
        )


class Schedule:
    """When the next probe of one instance is due."""

    __slots__ = ("_interval", "_rng", "next_due")

    def __init__(self, interval: float, rng: random.Random, *, now: float) -> None:
        self._interval = interval
        self._rng = rng
        self.next_due = now + first_delay(interval, rng)

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def ran(self, now: float) -> None:
        """A probe finished at `now`: the next is due one jittered interval later."""
        self.next_due = now + jittered(self._interval, self._rng)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A write the driver should make: record `status` and `output`."""

    status: Status
    output: str
    transition: bool
    """The status itself changes (not only the output)."""


class StatusMachine:
    """The recorded status of one instance, its result streaks and its critical streak."""

    __slots__ = (
        "_deregister_after",
        "_thresholds",
        "critical_since",
        "failures",
        "output",
        "status",
        "successes",
    )

    def __init__(
        self,
        thresholds: Thresholds,
        *,
        deregister_after: float | None,
        status: Status,
        output: str,
        now: float,
        critical_for: float = 0.0,
    ) -> None:
        self._thresholds = thresholds
        self._deregister_after = deregister_after
        self.successes = 0
        self.failures = 0
        self.status: Status = status
        self.output = output
        self.critical_since: float | None = (
            now - max(0.0, critical_for) if status == "critical" else None
        )

    def observe(self, status: Status, output: str) -> Verdict | None:
        """Count one probe result; the write it calls for, if any (invariants 2, 3)."""
        if status == "passing":
            self.successes, self.failures = self.successes + 1, 0
            reached = self.successes >= self._thresholds.success_before_passing
        else:
            self.successes, self.failures = 0, self.failures + 1
            reached = self.failures >= self._thresholds.failures_before_critical
        if not reached or (status, output) == (self.status, self.output):
            return None
        return Verdict(status, output, transition=status != self.status)

    def record(self, status: Status, output: str, *, now: float, critical_for: float = 0.0) -> None:
        """The store now holds `status`/`output` (our write, or one seen in the catalog).

        `critical_for` is how long the instance had already been critical when
        this machine first learns that it is (from its `status_since`).
        """
        if status != "critical":
            self.critical_since = None
        elif self.critical_since is None:
            self.critical_since = now - max(0.0, critical_for)
        self.status, self.output = status, output

    @property
    def deregister_at(self) -> float | None:
        if self.critical_since is None or self._deregister_after is None:
            return None
        return self.critical_since + self._deregister_after

    def deregister_due(self, now: float) -> bool:
        deadline = self.deregister_at
        return deadline is not None and now >= deadline


def wake_at(schedule: Schedule, machine: StatusMachine) -> float:
    """The next moment the driver has something to do for this instance."""
    deadline = machine.deregister_at
    return min(schedule.next_due, deadline if deadline is not None else math.inf)
