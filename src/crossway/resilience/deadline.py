# Deadlines that travel with a call, and the grpc-timeout header.
#
# Theory of operation
# -------------------
# A timeout is relative ("2 s from now"); a deadline is absolute ("at t=12.5 on
# this clock"). A request that crosses several hops should carry its deadline,
# not its timeout, so every hop knows how much is left - gRPC's model.
#
# - `Deadline(at, clock)` is an immutable point on a clock's monotonic time line.
# - The current deadline lives in a context variable, so it follows the call
#   through function calls, `await`s and tasks spawned from it (each asyncio
#   task and each thread has its own context).
# - `deadline_scope(timeout)` installs the *earlier* of the current deadline
#   and `now + timeout` for the duration of a block: a deadline can only
#   shrink as the call goes deeper, never grow.
# - Across a process boundary the remaining time is sent as a header in
#   gRPC's grpc-timeout syntax (`format_grpc_timeout` / `parse_grpc_timeout`)
#   and turned back into a deadline on the receiver's clock.
#
# Enforcement: a sync block cannot be interrupted from outside, so a sync scope
# is cooperative (callers read `remaining_time()` to size socket timeouts, or
# call `Deadline.check()`). An async scope (`async with deadline_scope(...)`)
# also cancels its body when the deadline passes and raises DeadlineExceeded.
#
# Invariants
# ----------
# - inside nested scopes, the effective deadline is non-increasing;
# - leaving a scope restores exactly the deadline that was current before it;
# - a formatted grpc-timeout never promises more than 1 unit beyond the real
#   remaining time and never less (values are rounded up), and always fits the
#   8-digit limit of the gRPC spec.

from __future__ import annotations

import asyncio
import re
from contextvars import ContextVar, Token
from types import TracebackType

from crossway.core.clock import Clock, SystemClock
from crossway.core.errors import CrosswayError

_SYSTEM = SystemClock()
_CURRENT: ContextVar[Deadline | None] = ContextVar("crossway_deadline", default=None)

# grpc-timeout units, finest first, in nanoseconds.
_UNITS_NS = (
    ("n", 1),
    ("u", 1_000),
    ("m", 1_000_000),
    ("S", 10**9),
    ("M", 60 * 10**9),
    ("H", 3600 * 10**9),
)
_UNIT_SECONDS = {unit: ns / 1e9 for unit, ns in _UNITS_NS}
_GRPC_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_MAX_VALUE = 99_999_999


class DeadlineExceeded(CrosswayError, TimeoutError):
    """The call's deadline passed before it completed."""

    code = "deadline_exceeded"
    status = 504


class Deadline:
    """An absolute point in time on a monotonic clock; immutable."""

    __slots__ = ("at", "clock")

    def __init__(self, at: float, clock: Clock | None = None) -> None:
        self.at = at
        self.clock: Clock = clock or _SYSTEM

    @classmethod
    def after(cls, timeout: float, *, clock: Clock | None = None) -> Deadline:
        """The deadline `timeout` seconds from the clock's now."""
        if not timeout >= 0:
            raise ValueError(f"timeout must not be negative, got {timeout!r}")
        c = clock or _SYSTEM
        return cls(c.now() + timeout, c)

    def remaining(self, now: float | None = None) -> float:
        """Seconds left, never negative."""
        t = self.clock.now() if now is None else now
        return max(0.0, self.at - t)

    def expired(self, now: float | None = None) -> bool:
        t = self.clock.now() if now is None else now
        return t >= self.at

    def check(self, now: float | None = None) -> None:
        """Raise DeadlineExceeded if the deadline has passed (a cooperative checkpoint)."""
        if self.expired(now):
            raise DeadlineExceeded("deadline exceeded")

    def earliest(self, other: Deadline | None) -> Deadline:
        """The earlier of two deadlines (compared by time remaining on each's clock)."""
        if other is None or self.remaining() <= other.remaining():
            return self
        return other

    def to_header(self, now: float | None = None) -> str:
        """The remaining time as a grpc-timeout header value."""
        return format_grpc_timeout(self.remaining(now))

    @classmethod
    def from_header(cls, value: str, *, clock: Clock | None = None) -> Deadline:
        """A deadline from a received grpc-timeout value; ValueError if malformed."""
        return cls.after(parse_grpc_timeout(value), clock=clock)

    def __repr__(self) -> str:
        return f"Deadline(at={self.at!r}, remaining={self.remaining():.6f}s)"


def current_deadline() -> Deadline | None:
    """The deadline of the running call, if any scope set one."""
    return _CURRENT.get()


def remaining_time(default: float | None = None) -> float | None:
    """Seconds left before the current deadline, or `default` when there is none."""
    deadline = _CURRENT.get()
    return default if deadline is None else deadline.remaining()


def attempt_timeout(per_attempt: float | None = None, *, reserve: float = 0.0) -> float | None:
    """The timeout to give one attempt: the smaller of `per_attempt` and the
    current deadline's remaining time minus `reserve` (time kept back for the
    caller's own work); never negative; None when neither bounds it."""
    left = remaining_time()
    if left is not None:
        left = max(0.0, left - reserve)
        return left if per_attempt is None else min(per_attempt, left)
    return per_attempt


class deadline_scope:  # lower case: it reads like a function, `with deadline_scope(2.0):`
    """Install a (possibly shorter) deadline for a block; single use.

    Entering raises DeadlineExceeded at once if the effective deadline has
    already passed. `with` is cooperative; `async with` also cancels the body
    at the deadline and raises DeadlineExceeded (from TimeoutError) instead of
    CancelledError. A cancellation from outside still propagates unchanged.
    """

    __slots__ = ("_deadline", "_reset", "_timeout")

    def __init__(
        self,
        timeout: float | None = None,
        *,
        deadline: Deadline | None = None,
        clock: Clock | None = None,
    ) -> None:
        if (timeout is None) == (deadline is None):
            raise ValueError("give exactly one of timeout or deadline")
        self._deadline = (
            deadline if deadline is not None else Deadline.after(timeout or 0.0, clock=clock)
        )
        self._reset: Token[Deadline | None] | None = None
        self._timeout: asyncio.Timeout | None = None

    def _enter(self) -> Deadline:
        if self._reset is not None:
            raise RuntimeError("a deadline_scope can be entered only once")
        effective = self._deadline.earliest(_CURRENT.get())
        effective.check()
        self._reset = _CURRENT.set(effective)
        return effective

    def _exit(self) -> None:
        if self._reset is not None:
            _CURRENT.reset(self._reset)

    def __enter__(self) -> Deadline:
        return self._enter()

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit()

    async def __aenter__(self) -> Deadline:
        effective = self._enter()
        self._timeout = asyncio.timeout(effective.remaining())
        await self._timeout.__aenter__()
        return effective

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._timeout is not None
        try:
            await self._timeout.__aexit__(et, exc, tb)
        except TimeoutError as timeout:
            if self._timeout.expired():
                raise DeadlineExceeded("deadline exceeded") from timeout
            raise
        finally:
            self._exit()


def format_grpc_timeout(seconds: float) -> str:
    """`seconds` as a grpc-timeout value ("250m", "3S"), rounded up to the
    finest unit whose value fits in 8 digits; "0n" for no time left."""
    ns = round(seconds * 1e9) if seconds > 0 else 0
    if ns <= 0:
        return "0n"
    for unit, size in _UNITS_NS:
        value = -(-ns // size)
        if value <= _MAX_VALUE:
            return f"{value}{unit}"
    return f"{_MAX_VALUE}H"  # over 11 000 years: the spec cannot say more


def parse_grpc_timeout(value: str) -> float:
    """Seconds in a grpc-timeout value; ValueError for anything malformed."""
    m = _GRPC_TIMEOUT.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"not a grpc-timeout value: {value!r} (e.g. 250m, 3S, 100u)")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
