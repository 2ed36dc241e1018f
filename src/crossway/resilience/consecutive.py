# The consecutive-failure breaker: pybreaker's semantics, without its lock.
#
# Theory of operation
# -------------------
#   CLOSED    every call is admitted. A failure increments a counter, a success
#             resets it; at `fail_max` consecutive failures -> OPEN.
#   OPEN      every call is rejected until `reset_timeout` seconds have passed
#             since the trip; the next call attempt then -> HALF_OPEN.
#   HALF_OPEN up to `success_threshold` probes are admitted (1 by default: a
#             single trial call, as in pybreaker). Any probe failure -> OPEN
#             (the timeout starts again); `success_threshold` probe successes
#             -> CLOSED.
#   DISABLED / FORCED_OPEN: operator overrides, left by `reset()`.
#
# No sliding window, no timing: a success in CLOSED with no failures counted
# is a no-op, and the wrappers skip even the call into the breaker then
# (`_clean_epoch`, see guard.py). That makes the success path one attribute
# read before and one after the protected call.
#
# Invariants
# ----------
# Rule 1: in HALF_OPEN, probes admitted minus probes released never exceed
#         `success_threshold`, and probe outcomes never exceed probes admitted.
# Rule 2: an outcome counts only in the epoch (state instance) it was admitted in.
# Rule 3: mutations happen under the lock; the lock is never held while the
#         protected call or a listener runs. Resetting the failure counter on a
#         success takes the lock only when there is something to reset.

from __future__ import annotations

from crossway.core.clock import Clock
from crossway.resilience.classify import FailurePolicy
from crossway.resilience.guard import BreakerBase, State

_RELEASE = -1


class ConsecutiveBreaker(BreakerBase):
    """Trips after `fail_max` failures in a row; probes again after `reset_timeout` s.

    Thread-safe; never holds its lock while a protected call or listener runs.
    """

    def __init__(
        self,
        name: str = "breaker",
        *,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        success_threshold: int = 1,
        policy: FailurePolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        if fail_max < 1 or success_threshold < 1:
            raise ValueError("fail_max and success_threshold must be at least 1")
        if not reset_timeout >= 0:
            raise ValueError("reset_timeout must not be negative")
        super().__init__(name, clock, policy or FailurePolicy())
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.success_threshold = success_threshold
        self._timed = False
        self._slow = float("inf")
        self._failures = 0
        self._issued = 0
        self._successes = 0
        self._clean_epoch = 0

    @property
    def failures(self) -> int:
        """Consecutive failures counted in CLOSED."""
        return self._failures

    def _open_duration(self) -> float:
        return self.reset_timeout

    # -- transitions (lock held) ------------------------------------------------

    def _to(self, state: State, now: float, reason: str) -> None:
        old = self._state
        self._state = state
        self._since = now
        self._epoch += 1
        admits_freely = state is State.CLOSED or state is State.DISABLED
        self._closed_epoch = self._epoch if admits_freely else -1
        self._clean_epoch = self._epoch if admits_freely else -2
        self._failures = 0
        self._issued = 0
        self._successes = 0
        self._announce(old, state, now, reason)

    # -- token protocol (see guard.py) --------------------------------------------

    def _try_admit(self, now: float) -> int:
        with self._lock:
            if self._closed_epoch >= 0:
                return self._epoch
            state = self._state
            if state is State.OPEN and now - self._since >= self.reset_timeout:
                self._to(State.HALF_OPEN, now, "reset timeout elapsed")
                state = State.HALF_OPEN
            if state is State.HALF_OPEN and self._issued < self.success_threshold:
                self._issued += 1
                token = self._epoch
            else:
                token = -1
        if self._pending:
            self._dispatch()
        return token

    def _settle(self, token: int, code: int, duration: float, now: float) -> None:
        with self._lock:
            if token == self._epoch:
                if self._state is State.CLOSED:
                    self._settle_closed(code, now)
                elif self._state is State.HALF_OPEN:
                    self._settle_probe(code, now)
        if self._pending:
            self._dispatch()

    def _settle_closed(self, code: int, now: float) -> None:
        if code < 0:
            return
        if code & 1:
            self._failures += 1
            self._clean_epoch = -2
            if self._failures >= self.fail_max:
                self._to(State.OPEN, now, f"{self._failures} consecutive failures")
        else:
            self._failures = 0
            self._clean_epoch = self._epoch

    def _settle_probe(self, code: int, now: float) -> None:
        if self._successes >= self._issued:
            return  # not the answer to any outstanding probe
        if code < 0:
            self._issued -= 1
        elif code & 1:
            self._to(State.OPEN, now, "half-open probe failed")
        else:
            self._successes += 1
            if self._successes >= self.success_threshold:
                self._to(State.CLOSED, now, "half-open probes succeeded")

    # -- public, pure API -----------------------------------------------------------

    def current_state(self, now: float | None = None) -> State:
        """The state at `now`: an OPEN breaker whose timeout elapsed reports
        HALF_OPEN (and becomes it), as pybreaker does when asked."""
        t = self._now() if now is None else now
        with self._lock:
            if self._state is State.OPEN and t - self._since >= self.reset_timeout:
                self._to(State.HALF_OPEN, t, "reset timeout elapsed")
            state = self._state
        if self._pending:
            self._dispatch()
        return state

    def allow(self, now: float | None = None) -> bool:
        """Whether a call may start now; report it with on_success/on_failure/release."""
        return self._try_admit(self._now() if now is None else now) >= 0

    def on_success(self, now: float | None = None) -> None:
        """A call admitted in the current state succeeded."""
        token = self._epoch
        if token != self._clean_epoch:
            self._settle(token, 0, 0.0, self._now() if now is None else now)

    def on_failure(self, now: float | None = None) -> None:
        """A call admitted in the current state failed."""
        self._settle(self._epoch, 1, 0.0, self._now() if now is None else now)

    def release(self, now: float | None = None) -> None:
        """A call admitted in the current state never ran: give a probe slot back."""
        self._settle(self._epoch, _RELEASE, 0.0, self._now() if now is None else now)
