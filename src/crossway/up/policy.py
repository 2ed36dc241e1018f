"""When a replica that exited is started again: pure, clock-free decisions.

Rule 1: a replica being stopped on purpose (Ctrl-C, scale down, the old side
of a rolling restart) is never restarted.
Rule 2: `restart: never` never restarts; `on-failure` restarts after a
non-zero exit or a signal; `always` restarts after any exit.
Rule 3: the delay before a restart doubles with each consecutive failure,
from `initial` (1 s) up to `cap` (30 s).
Rule 4: a replica that had been healthy for `reset_after` (60 s) before it
exited starts the count over: its next delay is `initial` again.

The caller passes times (seconds on any monotonic clock), so tests replay a
schedule without sleeping.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Literal

State = Literal["starting", "healthy", "unhealthy", "restarting", "stopped", "crashed"]
RestartMode = Literal["always", "on-failure", "never"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait before restart number `failures` in a row (1 -> initial)."""
        if failures <= 1:
            return self.initial
        return min(self.cap, self.initial * 2.0 ** min(failures - 1, 32))


@dataclass(frozen=True, slots=True)
class Decision:
    restart: bool
    delay: float
    failures: int
    """Consecutive failures counted after this exit (what the next exit builds on)."""


def after_exit(
    *,
    code: int,
    mode: RestartMode,
    stopping: bool,
    failures: int,
    healthy_since: float | None,
    now: float,
    backoff: Backoff = Backoff(),
) -> Decision:
    """Whether and when to restart a replica that exited with `code`
    (negative: killed by that signal) after `failures` consecutive failures."""
    if stopping or mode == "never" or (mode == "on-failure" and code == 0):
        return Decision(False, 0.0, failures)
    if healthy_since is not None and now - healthy_since >= backoff.reset_after:
        failures = 0
    failures += 1
    return Decision(True, backoff.delay(failures), failures)


def describe_exit(code: int) -> str:
    """`exited with code 1`, or `was killed by SIGKILL` for a negative code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"
