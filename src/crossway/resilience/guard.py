# What every circuit breaker shares: states, transitions and listeners, the
# open-circuit error, operator controls, and the decorators, context managers
# and call() wrappers for sync and async callers.
#
# Theory of operation
# -------------------
# A breaker class derives from `BreakerBase` and implements a small token
# protocol (see breaker.py and consecutive.py):
#
#   _closed_epoch     >= 0 while every call is admitted without asking (CLOSED):
#                     the wrapper reads it without a lock and uses it as token;
#   _try_admit(now)   the token of an admitted call, or -1 (rejected);
#   _settle(token, code, duration, now)
#                     report an outcome: code 0..3 (FAILED=1 | SLOW=2 bits), or
#                     -1 to release a call that must not count;
#   _clean_epoch      equal to the token when a success would change nothing
#                     (untimed breakers skip the report then);
#   _rejection(now)   the exception to raise for a rejected call.
#
# The wrappers never hold a lock while the protected call runs: admission and
# settlement are two short critical sections inside the breaker, so N threads
# run N protected calls at once (pybreaker serialises them behind one lock).
#
# Exceptions are classified by the breaker's FailurePolicy: cancellation,
# KeyboardInterrupt and SystemExit release the permit and always propagate.
#
# Transitions are queued under the breaker's lock (`_announce`) and handed to
# listeners after it is released (`_dispatch`), so a listener may call back into
# the breaker, and a slow listener never blocks other callers' admission.
#
# `with breaker:` / `async with breaker:` keep the token of each open block in a
# context variable (a small stack), so one breaker object is safe to enter from
# many threads and tasks at once; each thread and each task sees its own stack.

from __future__ import annotations

import enum
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from crossway.core.clock import Clock, SystemClock
from crossway.core.errors import CrosswayError
from crossway.resilience.classify import FailurePolicy, Verdict

log = logging.getLogger("crossway.resilience")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_FAILED = 1
_SLOW = 2


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"
    FORCED_OPEN = "forced_open"
    METRICS_ONLY = "metrics_only"


class CircuitOpenError(CrosswayError):
    """A call was rejected because its circuit is open (or its probes are all taken)."""

    code = "circuit_open"
    status = 503


@dataclass(frozen=True, slots=True)
class StateTransition:
    """Handed to listeners after every state change."""

    name: str
    from_state: State
    to_state: State
    at: float
    reason: str


Listener = Callable[[StateTransition], None]

_Entry = tuple["GuardedBreaker", int, float]
_OPEN_BLOCKS: ContextVar[tuple[_Entry, ...]] = ContextVar("crossway_breaker_blocks", default=())


class GuardedBreaker:
    """Mixin: `@breaker`, `with breaker:`, `async with breaker:`, `call`, `call_async`."""

    __slots__ = ()

    _closed_epoch: int
    _clean_epoch: int
    _timed: bool
    _slow: float
    _policy: FailurePolicy
    _now: Callable[[], float]

    def _try_admit(self, now: float) -> int:
        raise NotImplementedError

    def _settle(self, token: int, code: int, duration: float, now: float) -> None:
        raise NotImplementedError

    def _rejection(self, now: float) -> Exception:
        raise NotImplementedError

    # -- shared steps ----------------------------------------------------------

    def _admit_or_raise(self, now: float) -> int:
        token = self._try_admit(now)
        if token < 0:
            raise self._rejection(now)
        return token

    def _enter(self) -> tuple[int, float]:
        start = self._now()
        token = self._closed_epoch
        if token < 0:
            token = self._admit_or_raise(start)
        return token, start

    def _exit_exception(self, token: int, start: float, exc: BaseException) -> None:
        end = self._now()
        duration = end - start
        verdict = self._policy.exception(exc)
        if verdict is Verdict.IGNORE:
            self._settle(token, -1, 0.0, end)
            return
        code = _FAILED if verdict is Verdict.FAILURE else 0
        if duration >= self._slow:
            code |= _SLOW
        self._settle(token, code, duration, end)

    def _exit_result(self, token: int, start: float, result: object) -> None:
        end = self._now()
        duration = end - start
        code = _SLOW if duration >= self._slow else 0
        if self._policy.checks_results and self._policy.result_failed(result):
            code |= _FAILED
        self._settle(token, code, duration, end)

    # -- call() -------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` under the breaker.

        Raises CircuitOpenError (without calling fn) when rejected; otherwise
        returns fn's result or re-raises its exception after recording it.
        """
        token, start = self._enter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._exit_exception(token, start, exc)
            raise
        self._exit_result(token, start, result)
        return result

    async def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await `fn(*args, **kwargs)` under the breaker.

        Raises CircuitOpenError when rejected. If the awaiting task is
        cancelled, the permit is released (a half-open probe slot is given
        back) and CancelledError propagates.
        """
        token, start = self._enter()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._exit_exception(token, start, exc)
            raise
        self._exit_result(token, start, result)
        return result

    # -- context managers ---------------------------------------------------------

    def _push(self) -> None:
        token, start = self._enter()
        _OPEN_BLOCKS.set((*_OPEN_BLOCKS.get(), (self, token, start)))

    def _pop(self) -> tuple[int, float]:
        blocks = _OPEN_BLOCKS.get()
        for i in range(len(blocks) - 1, -1, -1):
            if blocks[i][0] is self:
                _OPEN_BLOCKS.set(blocks[:i] + blocks[i + 1 :])
                return blocks[i][1], blocks[i][2]
        raise RuntimeError("breaker block exited in a different context than it was entered")

    def _close_block(self, exc: BaseException | None) -> None:
        token, start = self._pop()
        if exc is None:
            self._exit_result(token, start, None)
        else:
            self._exit_exception(token, start, exc)

    def __enter__(self) -> None:
        """Raises CircuitOpenError when rejected; the block's outcome is recorded on exit."""
        self._push()

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close_block(exc)

    async def __aenter__(self) -> None:
        """As `with`, for async code; a cancelled block releases its permit."""
        self._push()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close_block(exc)

    # -- decorators ---------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate a def or async def function; same semantics as call()/call_async()."""
        if inspect.iscoroutinefunction(fn):
            return cast(F, self._wrap_async(fn))
        if self._timed:
            return cast(F, self._wrap_timed(fn))
        return cast(F, self._wrap_untimed(fn))

    def _wrap_timed(self, fn: Callable[..., T]) -> Callable[..., T]:
        # Locals bound once: this closure is the per-call hot path.
        me, now, settle, slow = self, self._now, self._settle, self._slow
        policy, checks = self._policy, self._policy.checks_results

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> T:
            token = me._closed_epoch
            start = now()
            if token < 0:
                token = me._admit_or_raise(start)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                me._exit_exception(token, start, exc)
                raise
            end = now()
            duration = end - start
            code = _SLOW if duration >= slow else 0
            if checks and policy.result_failed(result):
                code |= _FAILED
            settle(token, code, duration, end)
            return result

        return guarded

    def _wrap_untimed(self, fn: Callable[..., T]) -> Callable[..., T]:
        me, now, settle = self, self._now, self._settle
        policy, checks = self._policy, self._policy.checks_results

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> T:
            token = me._closed_epoch
            if token < 0:
                token = me._admit_or_raise(now())
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                me._exit_exception(token, 0.0, exc)
                raise
            if checks and policy.result_failed(result):
                settle(token, _FAILED, 0.0, now())
            elif token != me._clean_epoch:
                settle(token, 0, 0.0, now())
            return result

        return guarded

    def _wrap_async(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        me, now, settle, slow = self, self._now, self._settle, self._slow
        policy, checks, timed = self._policy, self._policy.checks_results, self._timed

        @functools.wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> T:
            token = me._closed_epoch
            start = now() if timed else 0.0
            if token < 0:
                token = me._admit_or_raise(now())
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                me._exit_exception(token, start, exc)
                raise
            if checks and policy.result_failed(result):
                me._exit_result(token, start, result)
            elif timed:
                end = now()
                duration = end - start
                settle(token, _SLOW if duration >= slow else 0, duration, end)
            elif token != me._clean_epoch:
                settle(token, 0, 0.0, now())
            return result

        return guarded


class BreakerBase(GuardedBreaker):
    """State, clock, lock and listeners shared by the breakers; operator controls."""

    def __init__(self, name: str, clock: Clock | None, policy: FailurePolicy) -> None:
        self.name = name
        self.clock = clock or SystemClock()
        # time.monotonic is what SystemClock.now returns; binding it skips a call layer.
        self._now = time.monotonic if type(self.clock) is SystemClock else self.clock.now
        self._policy = policy
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._pending: list[StateTransition] = []
        self._state = State.CLOSED
        self._since = self._now()
        self._epoch = 0
        self._closed_epoch = 0

    def _to(self, state: State, now: float, reason: str) -> None:
        raise NotImplementedError

    def _open_duration(self) -> float:
        raise NotImplementedError

    @property
    def state(self) -> State:
        """The state as last updated (time-driven transitions apply on the next event)."""
        return self._state

    # -- listeners -----------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(transition)` after every state change (outside the lock)."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [x for x in self._listeners if x is not listener]

    def _announce(self, old: State, new: State, now: float, reason: str) -> None:
        """Queue a transition for the listeners (the lock is held)."""
        self._pending.append(StateTransition(self.name, old, new, now, reason))

    def _dispatch(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
            listeners = self._listeners
        for event in events:
            for listener in listeners:
                try:
                    listener(event)
                except Exception:
                    # A broken listener must not break the calls it observes.
                    log.exception("circuit breaker %s: state listener failed", self.name)

    # -- rejection -------------------------------------------------------------

    def retry_after(self, now: float | None = None) -> float | None:
        """Seconds until an OPEN breaker will admit a probe; 0 if it admits now;
        None when forced open (no time will reopen it)."""
        if self._state is State.FORCED_OPEN:
            return None
        if self._state is not State.OPEN:
            return 0.0
        t = self._now() if now is None else now
        return max(0.0, self._open_duration() - (t - self._since))

    def _rejection(self, now: float) -> CircuitOpenError:
        return CircuitOpenError(
            f"circuit {self.name!r} is {self._state.value}",
            breaker=self.name,
            retry_after=self.retry_after(now),
        )

    # -- operator controls ----------------------------------------------------

    def _force(self, state: State, reason: str, now: float | None) -> None:
        t = self._now() if now is None else now
        with self._lock:
            self._to(state, t, reason)
        self._dispatch()

    def force_open(self, now: float | None = None) -> None:
        """Reject every call until `reset()`."""
        self._force(State.FORCED_OPEN, "forced open", now)

    def disable(self, now: float | None = None) -> None:
        """Admit every call and record nothing until `reset()`."""
        self._force(State.DISABLED, "disabled", now)

    def reset(self, now: float | None = None) -> None:
        """Back to CLOSED with nothing remembered."""
        self._force(State.CLOSED, "reset", now)
