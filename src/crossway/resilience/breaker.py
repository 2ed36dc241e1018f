# The circuit breaker: stop calling a dependency that is failing or slow, and
# probe it carefully before trusting it again.
#
# Theory of operation
# -------------------
# A pure state machine in resilience4j's shape (names and defaults match its
# CircuitBreakerConfig, in snake_case and seconds):
#
#   CLOSED    every call is admitted; outcomes go into a sliding window
#             (count- or time-based, see window.py). When the window holds at
#             least `minimum_number_of_calls` and the failure rate or the slow
#             call rate reaches its threshold -> OPEN. Optionally also trips
#             after `consecutive_failure_threshold` failures in a row.
#   OPEN      every call is rejected until `wait_duration_in_open_state` has
#             passed; then the next call attempt (or, with automatic
#             transition, the next look at the state) -> HALF_OPEN.
#   HALF_OPEN at most `permitted_number_of_calls_in_half_open_state` probes
#             are admitted; once that many have reported, their failure and
#             slow rates decide: below both thresholds -> CLOSED (fresh window),
#             otherwise -> OPEN. If `max_wait_duration_in_half_open_state` > 0
#             and the probes take longer than that -> OPEN.
#   DISABLED / FORCED_OPEN / METRICS_ONLY are set by an operator and left only
#   by `reset()`: admit all and record nothing / reject all / admit all and
#   record but never trip.
#
# Events in: `allow`/`acquire` (a call wants to start), `on_success`,
# `on_failure`, `release` (an admitted call that never ran or whose outcome must
# not count), and the passage of time, which is only observed through the
# `now` arguments (the default reads the injected clock). Decisions out: a bool
# or a permit. Nothing here sleeps or schedules a timer.
#
# Epochs: every transition increments `_epoch`. A permit remembers the epoch it
# was admitted in, and an outcome from another epoch is dropped: a slow call
# admitted while CLOSED that finishes after the breaker opened and went
# half-open must not be mistaken for a probe.
#
# Invariants
# ----------
# Rule 1: in HALF_OPEN, probes admitted minus probes released never exceed
#         the permitted number; probe results never exceed probes admitted.
# Rule 2: only outcomes of the current epoch change counters.
# Rule 3: every mutation happens under `_lock`, and the lock is never held
#         while a protected call runs or while listeners run. The CLOSED fast
#         path admits without the lock (one attribute read, atomic under the
#         GIL) because admission in CLOSED changes nothing.
#
# States, listeners, operator controls and the decorator / context manager /
# call() wrappers are shared with the consecutive-failure breaker (guard.py).

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crossway.core.clock import Clock
from crossway.core.durations import parse_duration
from crossway.resilience.classify import ExceptionTypes, FailurePolicy
from crossway.resilience.guard import (
    BreakerBase,
    CircuitOpenError,
    Listener,
    State,
    StateTransition,
)
from crossway.resilience.window import FAILED, CountWindow, Snapshot, TimeWindow, Window

_MAX_TIME_BUCKETS = 100
_RELEASE = -1
_CLOSED = State.CLOSED  # a module global: one lookup on the hot path, not two


class WindowType(enum.Enum):
    COUNT_BASED = "count_based"
    TIME_BASED = "time_based"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """resilience4j's settings, snake_case, durations in seconds (see docs/resilience.md)."""

    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration_threshold: float = 60.0
    permitted_number_of_calls_in_half_open_state: int = 10
    max_wait_duration_in_half_open_state: float = 0.0
    sliding_window_type: WindowType = WindowType.COUNT_BASED
    sliding_window_size: int = 100
    minimum_number_of_calls: int = 100
    wait_duration_in_open_state: float = 60.0
    automatic_transition_from_open_to_half_open_enabled: bool = False
    consecutive_failure_threshold: int = 0
    latency_histogram: bool = False
    record_exceptions: ExceptionTypes = (Exception,)
    ignore_exceptions: ExceptionTypes = ()
    record_failure: Callable[[BaseException], bool] | None = None
    record_result: Callable[[Any], bool] | None = None
    failure_statuses: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 100:
                raise ValueError(f"{name} must be within (0, 100], got {value}")
        for name in (
            "permitted_number_of_calls_in_half_open_state",
            "sliding_window_size",
            "minimum_number_of_calls",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "slow_call_duration_threshold",
            "max_wait_duration_in_half_open_state",
            "wait_duration_in_open_state",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")
        if self.consecutive_failure_threshold < 0:
            raise ValueError("consecutive_failure_threshold must not be negative")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BreakerConfig:
        """Build from configuration text: durations like "60s", window type by name."""
        values = dict(data)
        for name in (
            "slow_call_duration_threshold",
            "max_wait_duration_in_half_open_state",
            "wait_duration_in_open_state",
        ):
            if name in values:
                values[name] = parse_duration(values[name])
        if isinstance(values.get("sliding_window_type"), str):
            values["sliding_window_type"] = WindowType(values["sliding_window_type"].lower())
        if "failure_statuses" in values:
            values["failure_statuses"] = frozenset(values["failure_statuses"])
        return cls(**values)

    def failure_policy(self) -> FailurePolicy:
        return FailurePolicy(
            record_exceptions=self.record_exceptions,
            ignore_exceptions=self.ignore_exceptions,
            record_failure=self.record_failure,
            record_result=self.record_result,
            failure_statuses=self.failure_statuses,
        )

    def new_window(self) -> Window:
        size, latency = self.sliding_window_size, self.latency_histogram
        if self.sliding_window_type is WindowType.COUNT_BASED:
            return CountWindow(size, latency=latency)
        return TimeWindow(float(size), min(size, _MAX_TIME_BUCKETS), latency=latency)

    @property
    def effective_minimum_calls(self) -> int:
        # A count window can never hold more than its size (resilience4j does the same).
        if self.sliding_window_type is WindowType.COUNT_BASED:
            return min(self.minimum_number_of_calls, self.sliding_window_size)
        return self.minimum_number_of_calls


def _over(counts: list[int], calls: int, failure_pct: float, slow_pct: float) -> bool:
    """Whether the failure or slow-call rate of these counts reaches its threshold."""
    return (counts[1] + counts[3]) * 100.0 >= failure_pct * calls or (
        counts[2] + counts[3]
    ) * 100.0 >= slow_pct * calls


class Permit:
    """One admitted call. Report exactly one of success/failure/release; extras are ignored."""

    __slots__ = ("_breaker", "_token", "settled", "started")

    def __init__(self, breaker: CircuitBreaker, token: int, started: float) -> None:
        self._breaker = breaker
        self._token = token
        self.started = started
        self.settled = False

    def _settle(self, code: int, duration: float | None, now: float | None) -> None:
        if self.settled:
            return
        self.settled = True
        b = self._breaker
        t = b._now() if now is None else now
        d = t - self.started if duration is None else duration
        if code >= 0 and d >= b._slow:
            code |= 2
        b._settle(self._token, code, d, t)

    def success(self, duration: float | None = None, now: float | None = None) -> None:
        """The call succeeded; duration defaults to the time since admission."""
        self._settle(0, duration, now)

    def failure(self, duration: float | None = None, now: float | None = None) -> None:
        """The call failed; duration defaults to the time since admission."""
        self._settle(FAILED, duration, now)

    def release(self) -> None:
        """The call did not happen (or must not count): frees a half-open probe slot."""
        self._settle(_RELEASE, 0.0, self.started)


class CircuitBreaker(BreakerBase):
    """Failure-rate and slow-call-rate breaker over a sliding window.

    Thread-safe; never holds its lock while a protected call or listener runs.
    """

    def __init__(
        self,
        name: str = "breaker",
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        cfg = config or BreakerConfig()
        super().__init__(name, clock, cfg.failure_policy())
        self.config = cfg
        self._timed = True
        self._slow = cfg.slow_call_duration_threshold
        self._window = cfg.new_window()
        self._count_based = cfg.sliding_window_type is WindowType.COUNT_BASED
        self._min_calls = cfg.effective_minimum_calls
        self._probes = CountWindow(cfg.permitted_number_of_calls_in_half_open_state, latency=False)
        self._issued = 0
        self._consecutive = 0
        self._clean_epoch = -2  # success is never a no-op here: it is recorded

    # -- transitions (called with the lock held) -----------------------------

    def _to(self, state: State, now: float, reason: str) -> None:
        old = self._state
        self._state = state
        self._since = now
        self._epoch += 1
        admits_freely = state in (State.CLOSED, State.DISABLED, State.METRICS_ONLY)
        self._closed_epoch = self._epoch if admits_freely else -1
        self._consecutive = 0
        if state is State.HALF_OPEN:
            self._issued = 0
            self._probes.reset()
        elif admits_freely:
            self._window.reset()
        self._announce(old, state, now, reason)

    def _tick(self, now: float, automatic: bool) -> None:
        """Apply the transitions that time alone causes."""
        cfg = self.config
        if (
            automatic
            and self._state is State.OPEN
            and now - self._since >= cfg.wait_duration_in_open_state
        ):
            self._to(State.HALF_OPEN, now, "wait duration in open state elapsed")
        max_wait = cfg.max_wait_duration_in_half_open_state
        if self._state is State.HALF_OPEN and max_wait and now - self._since >= max_wait:
            self._to(State.OPEN, now, "half-open probes did not complete in time")

    # -- the token protocol used by Permit and guard.py ----------------------

    def _try_admit(self, now: float) -> int:
        """The epoch token of an admitted call, or -1 when rejected."""
        with self._lock:
            state = self._state
            if self._closed_epoch >= 0:
                return self._epoch
            if state is State.OPEN:
                if now - self._since < self.config.wait_duration_in_open_state:
                    return -1
                self._to(State.HALF_OPEN, now, "wait duration in open state elapsed")
            self._tick(now, automatic=False)
            if self._state is not State.HALF_OPEN:
                token = -1
            elif self._issued < self.config.permitted_number_of_calls_in_half_open_state:
                self._issued += 1
                token = self._epoch
            else:
                token = -1
        if self._pending:
            self._dispatch()
        return token

    def _settle(self, token: int, code: int, duration: float, now: float) -> None:
        """Report the outcome (code 0..3, or -1 for a release) of an admitted call."""
        # acquire/release rather than `with`: measurably cheaper on this hot path.
        lock = self._lock
        lock.acquire()
        try:
            if token == self._closed_epoch and code >= 0 and self._state is _CLOSED:
                window = self._window
                before = window.calls
                window.record(code, duration, now)
                # A fast success that evicts a call from a full count window
                # cannot raise either rate, and they were below threshold a call ago.
                if code or window.calls != before or not self._count_based:
                    self._judge(code, now)
                else:
                    self._consecutive = 0
            elif token == self._epoch:
                if self._state is State.HALF_OPEN:
                    self._record_probe(code, duration, now)
                elif self._state is State.METRICS_ONLY and code >= 0:
                    self._window.record(code, duration, now)
        finally:
            lock.release()
        if self._pending:
            self._dispatch()

    def _judge(self, code: int, now: float) -> None:
        """After a CLOSED outcome is recorded: trip if a threshold is reached."""
        if code & FAILED:
            self._consecutive += 1
            limit = self.config.consecutive_failure_threshold
            if limit and self._consecutive >= limit:
                self._to(State.OPEN, now, f"{self._consecutive} consecutive failures")
                return
        else:
            self._consecutive = 0
        window = self._window
        calls = window.calls
        if calls < self._min_calls:
            return
        cfg = self.config
        counts = window.counts(now)
        if _over(counts, calls, cfg.failure_rate_threshold, cfg.slow_call_rate_threshold):
            self._to(State.OPEN, now, "failure or slow call rate over threshold")

    def _record_probe(self, code: int, duration: float, now: float) -> None:
        probes = self._probes
        if code < 0:
            if self._issued > probes.calls:
                self._issued -= 1
            return
        if probes.calls >= self._issued:
            return  # not the answer to any outstanding probe
        probes.record(code, duration, now)
        if probes.calls < probes.size:
            return
        cfg = self.config
        if _over(
            probes.counts(), probes.calls, cfg.failure_rate_threshold, cfg.slow_call_rate_threshold
        ):
            self._to(State.OPEN, now, "half-open probes failed")
        else:
            self._to(State.CLOSED, now, "half-open probes succeeded")

    # -- public, pure API -----------------------------------------------------

    def current_state(self, now: float | None = None) -> State:
        """The state at `now`, applying time-driven transitions first.

        With `automatic_transition_from_open_to_half_open_enabled` an elapsed
        OPEN wait turns into HALF_OPEN here; a driver may call this on a timer.
        """
        t = self._now() if now is None else now
        automatic = self.config.automatic_transition_from_open_to_half_open_enabled
        with self._lock:
            self._tick(t, automatic)
            state = self._state
        if self._pending:
            self._dispatch()
        return state

    def allow(self, now: float | None = None) -> bool:
        """Whether a call may start now; an admitted call must report its outcome
        with `on_success`/`on_failure`, or `release` if it never ran."""
        return self._try_admit(self._now() if now is None else now) >= 0

    def acquire(self, now: float | None = None) -> Permit | None:
        """A permit for one call, or None when rejected. The permit ties the
        outcome to the state it was admitted in (outcomes from an older state
        are dropped), and `permit.release()` frees an abandoned probe slot."""
        t = self._now() if now is None else now
        token = self._try_admit(t)
        return Permit(self, token, t) if token >= 0 else None

    def on_success(self, duration: float, now: float | None = None) -> None:
        """A call admitted by `allow` in the current state succeeded after `duration` s."""
        code = 2 if duration >= self._slow else 0
        self._settle(self._epoch, code, duration, self._now() if now is None else now)

    def on_failure(self, duration: float, now: float | None = None) -> None:
        """A call admitted by `allow` in the current state failed after `duration` s."""
        code = 3 if duration >= self._slow else FAILED
        self._settle(self._epoch, code, duration, self._now() if now is None else now)

    def release(self, now: float | None = None) -> None:
        """A call admitted by `allow` did not happen: give its half-open slot back."""
        self._settle(self._epoch, _RELEASE, 0.0, self._now() if now is None else now)

    def _open_duration(self) -> float:
        return self.config.wait_duration_in_open_state

    def metrics_only(self, now: float | None = None) -> None:
        """Admit every call, keep recording, never trip, until `reset()`."""
        self._force(State.METRICS_ONLY, "metrics only", now)

    def snapshot(self, now: float | None = None) -> Snapshot:
        """Totals of the sliding window (of the probes, when half-open)."""
        t = self._now() if now is None else now
        with self._lock:
            if self._state is State.HALF_OPEN:
                return self._probes.snapshot(t)
            return self._window.snapshot(t)

    def latency_percentile(self, q: float, now: float | None = None) -> float:
        """Upper bound of the q-quantile (0..1) of recorded latencies; NaN if none.

        Needs `latency_histogram=True` in the config (ValueError otherwise)."""
        t = self._now() if now is None else now
        with self._lock:
            value = self._window.percentile(q, t)
        return math.nan if value is None else value


__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "Listener",
    "Permit",
    "State",
    "StateTransition",
    "WindowType",
]
