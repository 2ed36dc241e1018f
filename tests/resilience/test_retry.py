"""Retries: backoff bounds, conditions, limits, deadlines, budgets, cancellation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.backoff import Backoff, Jitter
from crossway.resilience.budget import ConcurrentRetryBudget, RetryBudget
from crossway.resilience.deadline import DeadlineExceeded, deadline_scope
from crossway.resilience.retry import Retry, RetryEvent, RetryPolicy, retry

# -- backoff -------------------------------------------------------------------------


@given(
    st.floats(min_value=0.0, max_value=5.0),
    st.floats(min_value=0.0, max_value=60.0),
    st.integers(min_value=0, max_value=2000),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_full_jitter_stays_within_zero_and_the_capped_exponential(
    base: float, cap: float, n: int, r: float
) -> None:
    backoff = Backoff(base=base, cap=cap)
    delay = backoff.delay(n, rand=lambda: r)
    try:
        ceiling = min(cap, base * 2.0**n)
    except OverflowError:
        ceiling = 0.0 if base == 0 else cap
    assert 0.0 <= delay <= ceiling
    assert backoff.ceiling(n) == pytest.approx(ceiling)


@given(
    st.sampled_from(list(Jitter)),
    st.integers(min_value=0, max_value=50),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0)),
)
def test_every_jitter_stays_within_the_cap(
    jitter: Jitter, n: int, r: float, previous: float | None
) -> None:
    backoff = Backoff(base=0.1, cap=3.0, jitter=jitter)
    delay = backoff.delay(n, previous=previous, rand=lambda: r)
    assert 0.0 <= delay <= 3.0
    if jitter is not Jitter.DECORRELATED:
        assert delay <= backoff.ceiling(n)
    if jitter is Jitter.EQUAL:
        assert delay >= backoff.ceiling(n) / 2


def test_no_jitter_doubles() -> None:
    backoff = Backoff(base=0.1, cap=1.0, jitter=Jitter.NONE)
    assert [backoff.delay(n) for n in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(multiplier=0.5)


# -- the driver ---------------------------------------------------------------------------


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


class Unlisted(Exception):
    pass


@dataclass
class Script:
    """A callable that plays a list of outcomes: exceptions are raised, values returned."""

    outcomes: list[object]
    calls: int = 0

    def __call__(self) -> object:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def run(self) -> object:
        await asyncio.sleep(0)
        return self()


def driver(clock: VirtualClock, **kwargs: object) -> tuple[Retry, list[float]]:
    """A Retry whose sleeps advance the virtual clock instead of waiting."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    async def async_sleep(seconds: float) -> None:
        sleep(seconds)

    policy_fields = {k: v for k, v in kwargs.items() if k in RetryPolicy.__dataclass_fields__}
    rest = {k: v for k, v in kwargs.items() if k not in policy_fields}
    policy = RetryPolicy(**policy_fields)  # type: ignore[arg-type]
    made = Retry(
        policy, clock=clock, sleep=sleep, async_sleep=async_sleep, rand=lambda: 0.5, **rest
    )  # type: ignore[arg-type]
    return made, slept


def test_retries_until_success() -> None:
    clock = VirtualClock()
    r, slept = driver(clock, max_attempts=5, backoff=Backoff(base=1.0, cap=100.0))
    script = Script([Flaky(), Flaky(), "ok"])
    assert r.call(script) == "ok"
    assert script.calls == 3
    assert slept == [0.5, 1.0]  # rand 0.5 of 1 and of 2


def test_gives_up_after_max_attempts_and_reraises_the_last_exception() -> None:
    clock = VirtualClock()
    r, slept = driver(clock, max_attempts=3)
    last = Flaky("third")
    script = Script([Flaky("first"), Flaky("second"), last])
    with pytest.raises(Flaky) as info:
        r.call(script)
    assert info.value is last
    assert script.calls == 3
    assert len(slept) == 2


def test_non_retryable_exceptions_propagate_at_once() -> None:
    clock = VirtualClock()
    r, _ = driver(clock, retry_on=(Flaky,), abort_on=(Fatal,))
    script = Script([Unlisted()])
    with pytest.raises(Unlisted):
        r.call(script)
    assert script.calls == 1

    class FatalFlaky(Flaky, Fatal):
        pass

    script = Script([FatalFlaky()])
    with pytest.raises(FatalFlaky):
        r.call(script)
    assert script.calls == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), asyncio.CancelledError()])
def test_base_exceptions_are_never_retried_even_if_asked(exc: BaseException) -> None:
    clock = VirtualClock()
    r, _ = driver(clock, retry_on=(BaseException,))
    script = Script([exc, "ok"])
    with pytest.raises(type(exc)):
        r.call(script)
    assert script.calls == 1


def test_result_predicate_and_status_codes() -> None:
    @dataclass
    class Response:
        status: int

    clock = VirtualClock()
    r, _ = driver(clock, retry_on_statuses=frozenset({503}), max_attempts=4)
    script = Script([Response(503), Response(503), Response(200)])
    assert r.call(script) == Response(200)
    r2, _ = driver(clock, retry_if_result=lambda v: v is None, max_attempts=3)
    script = Script([None])
    assert r2.call(script) is None  # gave up: the last result is returned
    assert script.calls == 3


def test_max_elapsed_stops_before_a_sleep_would_pass_it() -> None:
    clock = VirtualClock()
    r, slept = driver(
        clock,
        max_attempts=None,
        max_elapsed=10.0,
        backoff=Backoff(base=1.0, cap=100.0, jitter=Jitter.NONE),
    )
    script = Script([Flaky()])
    with pytest.raises(Flaky):
        r.call(script)
    assert slept == [1.0, 2.0, 4.0]  # the next (8) would end at 15 > 10
    assert clock.now() <= 10.0


def test_the_deadline_bounds_the_retries() -> None:
    clock = VirtualClock()
    r, slept = driver(
        clock, max_attempts=None, backoff=Backoff(base=1.0, cap=100.0, jitter=Jitter.NONE)
    )
    script = Script([Flaky()])
    with deadline_scope(5.0, clock=clock), pytest.raises(Flaky):
        r.call(script)
    assert slept == [1.0, 2.0]  # a 4 s sleep would reach the deadline at 7


def test_on_retry_sees_each_failed_attempt() -> None:
    clock = VirtualClock()
    events: list[RetryEvent] = []
    r, _ = driver(clock, max_attempts=3, on_retry=events.append)
    err = Flaky()
    assert r.call(Script([err, "done"])) == "done"
    assert [(e.attempt, e.exception) for e in events] == [(1, err)]
    assert events[0].delay == pytest.approx(0.05)


def test_sync_decorator_keeps_the_name() -> None:
    script = Script([Flaky(), 5])

    @retry(max_attempts=2, base=0.0)
    def f() -> object:
        return script()

    assert f() == 5
    assert f.__name__ == "f"


async def test_async_retry_until_success() -> None:
    clock = VirtualClock()
    r, slept = driver(clock, max_attempts=3)
    script = Script([Flaky(), "ok"])
    assert await r.call_async(script.run) == "ok"
    assert len(slept) == 1


async def test_async_decorator_retries() -> None:
    script = Script([Flaky(), Flaky(), "fine"])

    @retry(max_attempts=3, base=0.0)
    async def g() -> object:
        return await script.run()

    assert await g() == "fine"
    assert script.calls == 3


# -- cancellation (tenacity #529) -----------------------------------------------------------


async def test_cancellation_during_an_attempt_propagates_and_is_not_retried() -> None:
    attempts = 0
    entered = asyncio.Event()

    @retry(max_attempts=5, base=0.0, retry_on=(BaseException,))
    async def hang() -> None:
        nonlocal attempts
        attempts += 1
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1
    assert task.cancelled()


async def test_cancellation_during_backoff_propagates() -> None:
    sleeping = asyncio.Event()
    attempts = 0

    async def slow_sleep(seconds: float) -> None:
        sleeping.set()
        await asyncio.sleep(3600)

    async def failing() -> None:
        nonlocal attempts
        attempts += 1
        raise Flaky

    budget = ConcurrentRetryBudget()
    r = Retry(RetryPolicy(max_attempts=5), async_sleep=slow_sleep, budget=budget)
    task = asyncio.create_task(r.call_async(failing))
    await sleeping.wait()
    assert budget.active_retries == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1
    assert (budget.active_requests, budget.active_retries) == (0, 0)  # all handed back


async def test_attempt_timeout_cancels_slow_attempts_and_retries() -> None:
    calls = 0

    async def sometimes_slow() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(3600)
        return "fast"

    r = Retry(RetryPolicy(max_attempts=2, backoff=Backoff(base=0.0)), attempt_timeout=0.01)
    assert await r.call_async(sometimes_slow) == "fast"
    assert calls == 2
    r_abort = Retry(RetryPolicy(max_attempts=3, abort_on=(DeadlineExceeded,)), attempt_timeout=0.01)
    calls = 0
    with pytest.raises(DeadlineExceeded):
        await r_abort.call_async(sometimes_slow)
    assert calls == 1


def test_sync_attempts_see_the_shrunken_deadline() -> None:
    from crossway.resilience.deadline import remaining_time

    seen: list[float | None] = []
    r = Retry(RetryPolicy(max_attempts=1), attempt_timeout=2.0)
    with deadline_scope(60.0):
        r.call(lambda: seen.append(remaining_time()))
    assert seen[0] is not None
    assert seen[0] <= 2.0


# -- budgets in the loop ----------------------------------------------------------------------


def test_an_empty_budget_stops_retries() -> None:
    clock = VirtualClock()
    budget = RetryBudget(min_retries_per_sec=0.0, percent_can_retry=0.5, clock=clock)
    r, _ = driver(clock, max_attempts=10, budget=budget)
    script = Script([Flaky()])
    with pytest.raises(Flaky):
        r.call(script)
    assert script.calls == 1  # one deposit is half a retry: not enough
    with pytest.raises(Flaky):
        r.call(Script([Flaky()]))  # the second deposit makes one retry possible
    assert budget.balance() == 0


def test_concurrent_budget_is_balanced_after_calls() -> None:
    clock = VirtualClock()
    budget = ConcurrentRetryBudget(min_retry_concurrency=1)
    r, _ = driver(clock, max_attempts=3, budget=budget)
    assert r.call(Script([Flaky(), Flaky(), "ok"])) == "ok"
    with pytest.raises(Fatal):
        r.call(Script([Flaky(), Fatal()]))
    assert (budget.active_requests, budget.active_retries) == (0, 0)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="max_elapsed"):
        RetryPolicy(max_elapsed=-1)
    assert RetryPolicy().next_delay(1, elapsed=0.0, remaining=0.0) is None
